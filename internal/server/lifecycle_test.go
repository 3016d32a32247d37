package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

func TestHeartbeat(t *testing.T) {
	t.Parallel()
	ts := startServer(t, func(sc *serverConfig) {
		sc.Broker.Heartbeat = time.Second
		sc.Server.PongTimeout = time.Second
	})
	alive := dial(t, ts)
	alive.name = "answers pings"
	silent := dial(t, ts, withoutPong())
	silent.name = "ignores pings"
	start := time.Now()

	// The silent client is closed within about heartbeat + pong timeout.
	code, reason := silent.waitClosed(4 * time.Second)
	took := time.Since(start)
	t.Logf("silent client closed after %v with %d %q", took.Round(time.Millisecond), code, reason)
	if took < time.Second {
		t.Errorf("silent client closed after %v, before any ping was due", took)
	}
	silent.mu.Lock()
	pings := silent.pings
	silent.mu.Unlock()
	if pings == 0 {
		t.Errorf("the silent client got no ping before it was closed")
	}

	// The other one is pinged every second and stays.
	for time.Since(start) < 3500*time.Millisecond {
		if alive.isClosed() {
			code, reason := alive.waitClosed(0)
			t.Fatalf("a client that answers pings was closed after %v: %d %q", time.Since(start), code, reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
	alive.mu.Lock()
	pings = alive.pings
	alive.mu.Unlock()
	if pings < 2 {
		t.Errorf("%d pings in 3.5s with a 1s heartbeat", pings)
	}
	if r := alive.do(map[string]any{"op": "ping"}); r.Op != "pong" {
		t.Fatalf("ping: %s", r)
	}
}

func TestShutdown(t *testing.T) {
	ts := startServer(t, func(sc *serverConfig) { sc.Broker.ShutdownRetryAfter = 2 * time.Second })
	if status, _ := ts.get("/readyz", nil); status != http.StatusOK {
		t.Fatalf("/readyz before shutdown: HTTP %d", status)
	}
	var clients []*client
	for range 5 {
		c := dial(t, ts)
		c.sub("busy", nil)
		clients = append(clients, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Broker.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	retries := map[int]bool{}
	for i, c := range clients {
		code, reason := c.waitClosed(5 * time.Second)
		if code != uint16(subproto.CloseGoingAway) {
			t.Errorf("client %d closed with %d %q, want 1001", i, code, reason)
			continue
		}
		var r struct {
			Reason       string `json:"reason"`
			RetryAfterMs int    `json:"retry_after_ms"`
		}
		if err := json.Unmarshal(reason, &r); err != nil || r.RetryAfterMs < 200 || r.RetryAfterMs > 2000 || r.Reason == "" {
			t.Errorf("client %d close reason %q: want JSON with a reason and retry_after_ms in [200, 2000] (%v)", i, reason, err)
		}
		retries[r.RetryAfterMs] = true
	}
	if len(retries) < 2 {
		t.Errorf("every client got the same retry_after_ms %v: reconnects are not spread", retries)
	}

	// While draining: new connections are refused before the upgrade,
	// readiness fails, liveness holds.
	_, resp, err := dialErr(t, ts)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Errorf("dial while draining: %v, HTTP %d; want 503", err, status)
	}
	if status, _ := ts.get("/readyz", nil); status != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: HTTP %d, want 503", status)
	}
	if status, _ := ts.get("/healthz", nil); status != http.StatusOK {
		t.Errorf("/healthz while draining: HTTP %d, want 200", status)
	}
	eventually(t, 5*time.Second, "every session to end", func() bool { return ts.Broker.Stats().Connections.Load() == 0 })
}

func TestPatternSubscriptions(t *testing.T) {
	ts := startServer(t)
	star := dial(t, ts)
	star.name = "a.*"
	ok := star.sub("a.*", nil)
	if ok.str("topic") != "a.*" || ok.has("epoch") || ok.has("from") {
		t.Errorf("pattern ok %s: want topic a.* and no log fields", ok)
	}
	tail := dial(t, ts)
	tail.name = "a.>"
	tail.sub("a.>", nil)
	both := dial(t, ts)
	both.name = "both"
	both.sub("*.b", nil)
	both.sub("a.b", nil)

	p := dial(t, ts)
	p.pub("a", `0`)
	p.pub("a.b", `1`)
	p.pub("a.b.c", `2`)
	p.pub("a.c", `3`)
	p.pub("b.b", `4`)
	p.pub("x.a.b", `5`)

	type want struct{ topic, sub, data string }
	check := func(c *client, ws []want) {
		t.Helper()
		c.waitFor("msgs", func(evs []event) bool {
			n := 0
			for _, e := range evs {
				if e.Op == "msg" {
					n++
				}
			}
			return n >= len(ws)
		})
		c.do(map[string]any{"op": "ping"}) // anything further would come before the pong
		var got []event
		for _, e := range c.snapshot() {
			if e.Op == "msg" {
				got = append(got, e)
			}
		}
		if len(got) != len(ws) {
			t.Errorf("%s: got %d msgs %v, want %d", c.name, len(got), got, len(ws))
			return
		}
		for i, w := range ws {
			g := got[i]
			if g.str("topic") != w.topic || g.str("sub") != w.sub || string(g.data()) != w.data || g.num("offset") != 1 {
				t.Errorf("%s: msg %d %s, want topic %s sub %q data %s offset 1", c.name, i, g, w.topic, w.sub, w.data)
			}
			if w.sub == "" && g.has("sub") {
				t.Errorf("%s: msg of an exact subscription carries sub: %s", c.name, g)
			}
		}
	}
	check(star, []want{{"a.b", "a.*", "1"}, {"a.c", "a.*", "3"}})
	check(tail, []want{{"a.b", "a.>", "1"}, {"a.b.c", "a.>", "2"}, {"a.c", "a.>", "3"}})
	// One message reaches a connection once per matching subscription.
	evs := msgs(both.snapshot(), "a.b")
	if len(evs) != 2 || evs[0].str("sub") == evs[1].str("sub") {
		t.Errorf("both: a.b msgs %v, want one via *.b and one exact", evs)
	}

	// Patterns take since and positions, not from, last, consumer, epoch.
	for _, extra := range []map[string]any{
		{"from": 1}, {"from": "earliest"}, {"from": "latest"}, {"consumer": "c"}, {"epoch": "e"}, {"last": 3},
	} {
		f := map[string]any{"op": "sub", "topic": "a.*"}
		for k, v := range extra {
			f[k] = v
		}
		star.mustErr(f, subproto.CodeBadRequest)
	}
	// Bad patterns.
	for _, pat := range []string{"a.*b", "a.>.b", "a.**", ">a"} {
		star.mustErr(map[string]any{"op": "sub", "topic": pat}, subproto.CodeInvalidTopic)
	}
	// Unsub of a pattern ends it.
	star.mustOK(map[string]any{"op": "unsub", "topic": "a.*"})
	p.pub("a.d", `6`)
	tail.waitFor("a.d", func(evs []event) bool { return len(msgs(evs, "a.d")) == 1 })
	star.do(map[string]any{"op": "ping"})
	if n := len(msgs(star.snapshot(), "a.d")); n != 0 {
		t.Errorf("msg after the pattern's unsub")
	}
}
