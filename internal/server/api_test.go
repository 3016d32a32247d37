package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
)

func (ts *testServer) post(path, body string, header http.Header) (int, map[string]any) {
	ts.t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.HTTP.URL+path, strings.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := ts.HTTP.Client().Do(req)
	if err != nil {
		ts.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		ts.t.Fatalf("POST %s: %d with a body that is not JSON: %q", path, resp.StatusCode, raw)
	}
	return resp.StatusCode, m
}

func getJSON(t *testing.T, ts *testServer, path string, header http.Header) (int, map[string]any, string) {
	t.Helper()
	code, body := ts.get(path, header)
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("GET %s: %d with a body that is not JSON: %q", path, code, body)
	}
	return code, m, body
}

func TestHTTPPublish(t *testing.T) {
	ts := startServer(t)
	sub := dial(t, ts)
	sub.sub("orders.eu", nil)

	code, m := ts.post("/v1/topics/orders.eu", `{"id": 1,
	  "items": ["a", "b"]}`, nil)
	if code != 200 || m["topic"] != "orders.eu" || m["offset"] != 1.0 || m["dup"] != nil {
		t.Fatalf("publish: %d %v", code, m)
	}
	// The body's line feeds are gone from the stored data: a msg must not
	// hold a raw newline, which would break the framing.
	got := sub.waitMsgs("orders.eu", 1)
	if d := string(got[0].data()); d != `{"id":1,"items":["a","b"]}` {
		t.Fatalf("delivered data %q", d)
	}

	key := http.Header{"Idempotency-Key": {"order-7"}}
	if code, m := ts.post("/v1/topics/orders.eu", `"x"`, key); code != 200 || m["offset"] != 2.0 {
		t.Fatalf("keyed publish: %d %v", code, m)
	}
	if code, m := ts.post("/v1/topics/orders.eu", `"x"`, key); code != 200 || m["offset"] != 2.0 || m["dup"] != true {
		t.Fatalf("repeated key: %d %v", code, m)
	}
	if h := ts.head("orders.eu"); h != 2 {
		t.Fatalf("head %d after a duplicate, want 2", h)
	}

	for _, c := range []struct {
		name, path, body string
		header           http.Header
		status           int
		code             string
	}{
		{"bad topic", "/v1/topics/a..b", `1`, nil, 400, "invalid_topic"},
		{"pattern topic", "/v1/topics/a.*", `1`, nil, 400, "invalid_topic"},
		{"not JSON", "/v1/topics/t", `{oops`, nil, 400, "bad_request"},
		{"two values", "/v1/topics/t", `1 2`, nil, 400, "bad_request"},
		{"empty", "/v1/topics/t", ``, nil, 400, "bad_request"},
		{"invalid UTF-8", "/v1/topics/t", "\"\xff\"", nil, 400, "bad_request"},
		{"too deep", "/v1/topics/t", strings.Repeat("[", 200) + strings.Repeat("]", 200), nil, 400, "bad_request"},
		{"bad key", "/v1/topics/t", `1`, http.Header{"Idempotency-Key": {"has space"}}, 400, "bad_request"},
		{"too large", "/v1/topics/t", `"` + strings.Repeat("x", 2<<20) + `"`, nil, 413, "message_too_large"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, m := ts.post(c.path, c.body, c.header)
			if code != c.status || m["code"] != c.code || m["message"] == "" {
				t.Fatalf("%d %v, want %d %s", code, m, c.status, c.code)
			}
		})
	}
}

func TestHTTPHistory(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	// Odd spacing and escapes must come back byte for byte.
	raws := []string{`{"a": 1,  "b":"<&>"}`, `[1, 2 ,3]`, `"\u00e9t\u00e9"`, `null`, `42`}
	for i, raw := range raws {
		c.send(fmt.Sprintf(`{"op":"pub","id":%d,"topic":"hist","data":%s}`, 100+i, raw))
		if r := c.reply(uint64(100 + i)); r.Op != "ok" {
			t.Fatalf("pub: %s", r)
		}
	}
	code, m, body := getJSON(t, ts, "/v1/topics/hist/messages?from=2&limit=2", nil)
	if code != 200 || m["head"] != 5.0 || m["earliest"] != 1.0 || m["next"] != 4.0 || m["epoch"] != ts.topicInfo("hist").Epoch {
		t.Fatalf("page: %d %s", code, body)
	}
	for _, raw := range raws[1:3] {
		if !strings.Contains(body, `"data":`+raw+`}`) {
			t.Errorf("page does not hold %s byte for byte: %s", raw, body)
		}
	}
	msgs := m["messages"].([]any)
	if len(msgs) != 2 || msgs[0].(map[string]any)["offset"] != 2.0 || msgs[1].(map[string]any)["offset"] != 3.0 {
		t.Fatalf("messages %v", msgs)
	}
	if _, m, _ := getJSON(t, ts, "/v1/topics/hist/messages", nil); len(m["messages"].([]any)) != 5 {
		t.Fatalf("default page: %v", m)
	}
	if _, m, _ := getJSON(t, ts, "/v1/topics/hist/messages?from=latest", nil); len(m["messages"].([]any)) != 0 || m["next"] != 6.0 {
		t.Fatalf("from latest: %v", m)
	}
	for _, c := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/topics/nothing.here/messages", 404, "not_found"},
		{"/v1/topics/hist/messages?from=7", 409, "offset_out_of_range"},
		{"/v1/topics/hist/messages?from=0", 400, "bad_request"},
		{"/v1/topics/hist/messages?limit=-1", 400, "bad_request"},
		{"/v1/topics/hist/messages?epoch=other", 409, "epoch_mismatch"},
		{"/v1/topics/a..b/messages", 400, "invalid_topic"},
	} {
		code, m, body := getJSON(t, ts, c.path, nil)
		if code != c.status || m["code"] != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.path, code, body, c.status, c.code)
		}
	}
}

func TestHTTPTopics(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	for _, topic := range []string{"t.a", "t.b", "t.c"} {
		c.pub(topic, `1`)
	}
	c.sub("t.b", nil)
	dial(t, ts).sub("t.b", nil)
	code, m, body := getJSON(t, ts, "/v1/topics?limit=2", nil)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	list := m["topics"].([]any)
	if len(list) != 2 || m["next"] != "t.b" {
		t.Fatalf("first page: %s", body)
	}
	b := list[1].(map[string]any)
	if b["topic"] != "t.b" || b["subscribers"] != 2.0 || b["head"] != 1.0 || b["earliest"] != 1.0 || b["epoch"] == "" {
		t.Fatalf("t.b: %v", b)
	}
	_, m, body = getJSON(t, ts, "/v1/topics?limit=2&after=t.b", nil)
	if list := m["topics"].([]any); len(list) != 1 || list[0].(map[string]any)["topic"] != "t.c" || m["next"] != nil {
		t.Fatalf("second page: %s", body)
	}
}

// staticAuth is a broker.Authenticator for tests: tokens are grant names.
type staticAuth map[string]*broker.Grant

func (a staticAuth) Verify(tok string) (*broker.Grant, error) {
	g, ok := a[tok]
	if !ok {
		return nil, broker.ErrTokenInvalid
	}
	cp := *g
	cp.Expires = time.Now().Add(time.Hour)
	return &cp, nil
}

func TestHTTPAuth(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.Auth = staticAuth{
			"writer": {Subject: "w", Publish: []string{"a.>"}},
			"reader": {Subject: "r", Subscribe: []string{"a.*"}},
		}
	})
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	if code, m := ts.post("/v1/topics/a.x", `1`, nil); code != 401 || m["code"] != "unauthorized" {
		t.Fatalf("no token: %d %v", code, m)
	}
	if code, m := ts.post("/v1/topics/a.x", `1`, bearer("bogus")); code != 401 || m["code"] != "unauthorized" {
		t.Fatalf("bad token: %d %v", code, m)
	}
	if code, m := ts.post("/v1/topics/b", `1`, bearer("writer")); code != 403 || m["code"] != "forbidden" {
		t.Fatalf("not allowed: %d %v", code, m)
	}
	if code, m := ts.post("/v1/topics/a.x", `1`, bearer("writer")); code != 200 {
		t.Fatalf("allowed: %d %v", code, m)
	}
	if code, m := ts.post("/v1/topics/a.x.y", `1`, bearer("writer")); code != 200 {
		t.Fatalf("allowed: %d %v", code, m)
	}
	if code, _, body := getJSON(t, ts, "/v1/topics/a.x/messages", bearer("writer")); code != 403 {
		t.Fatalf("writer reads: %d %s", code, body)
	}
	if code, _, body := getJSON(t, ts, "/v1/topics/a.x/messages?token=reader", nil); code != 200 {
		t.Fatalf("reader reads with the query token: %d %s", code, body)
	}
	// The topic list holds only what the token may read.
	_, m, body := getJSON(t, ts, "/v1/topics", bearer("reader"))
	if list := m["topics"].([]any); len(list) != 1 || list[0].(map[string]any)["topic"] != "a.x" {
		t.Fatalf("reader's topics: %s", body)
	}
	// Health endpoints need no token.
	if code, _ := ts.get("/healthz", nil); code != 200 {
		t.Fatalf("healthz %d", code)
	}
}

func TestConnectionLimit(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) { c.Server.MaxConnections = 2 })
	a, b := dial(t, ts), dial(t, ts)
	c, _, err := dialErr(t, ts) // upgraded, then closed with 1013
	if err != nil {
		t.Fatal(err)
	}
	code, reason := c.waitClosed(5 * time.Second)
	if code != 1013 {
		t.Fatalf("third connection closed with %d %q, want 1013", code, reason)
	}
	var r struct {
		RetryAfter int `json:"retry_after_ms"`
	}
	if err := json.Unmarshal(reason, &r); err != nil || r.RetryAfter <= 0 {
		t.Fatalf("close reason %q lacks retry_after_ms", reason)
	}
	if _, lim := ts.Edge.Rejected(); lim != 0 {
		t.Fatalf("rate rejections %d", lim)
	}
	if n, _ := ts.Edge.Rejected(); n != 1 {
		t.Fatalf("limit rejections %d, want 1", n)
	}
	// A slot frees when a connection ends.
	a.close()
	eventually(t, 5*time.Second, "a slot to free", func() bool {
		d, _, err := dialErr(t, ts)
		if err != nil {
			return false
		}
		for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
			if d.isClosed() {
				return false
			}
			if evs := d.snapshot(); len(evs) > 0 && evs[0].Op == "welcome" {
				return true
			}
		}
		return false
	})
	b.pub("still.ok", `1`)
}

func TestConnectionRatePerIP(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) { c.Server.ConnRatePerIP = 0.001; c.Server.ConnBurstPerIP = 2 })
	dial(t, ts)
	dial(t, ts)
	_, resp, err := dialErr(t, ts)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third connection in a burst of 2: err %v, resp %v", err, resp)
	}
	if _, n := ts.Edge.Rejected(); n != 1 {
		t.Fatalf("rate rejections %d, want 1", n)
	}
}

func TestHTTPPublishOrigin(t *testing.T) {
	ts := startServer(t)
	if code, m := ts.post("/v1/topics/o.t", `1`, http.Header{"Origin": {"https://evil.example"}}); code != 403 || m["code"] != "forbidden" {
		t.Fatalf("foreign origin: %d %v", code, m)
	}
	if code, m := ts.post("/v1/topics/o.t", `1`, http.Header{"Origin": {"http://" + ts.Host}}); code != 200 {
		t.Fatalf("same origin: %d %v", code, m)
	}
	if code, m := ts.post("/v1/topics/o.t", `1`, nil); code != 200 {
		t.Fatalf("no origin (a backend): %d %v", code, m)
	}
}

// TestHTTPErrorKeepsGreaterThan: an error body quoting a pattern says
// chat.> as it is, not chat.\u003e (the body is JSON, not HTML).
func TestHTTPErrorKeepsGreaterThan(t *testing.T) {
	ts := startServer(t)
	req, err := http.NewRequest(http.MethodPost, ts.HTTP.URL+"/v1/topics/chat.>", strings.NewReader(`1`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ts.HTTP.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || !strings.Contains(string(raw), `chat.>`) || strings.Contains(string(raw), `\u003e`) {
		t.Fatalf("POST /v1/topics/chat.>: %d %s, want 400 quoting chat.> as it is", resp.StatusCode, raw)
	}
}
