package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/subproto"
)

func withPolicies(t testing.TB, list ...broker.Policy) func(*serverConfig) {
	ps, err := broker.NewPolicies(broker.Policy{}, list)
	if err != nil {
		t.Fatal(err)
	}
	return func(c *serverConfig) { c.Broker.Policies = ps }
}

// TestPolicyLimits: a policy's max-message-bytes and publish rate apply
// to its topics only, the rate per connection and to all of the policy's
// topics together; a refusal leaves the connection open; SetPolicies
// changes both while connections stay; the topic list names each topic's
// policy.
func TestPolicyLimits(t *testing.T) {
	ts := startServer(t, withPolicies(t,
		broker.Policy{Match: "small.>", MaxMessageBytes: 10},
		// One token every 100 s: the third publish is refused however
		// slowly the test runs.
		broker.Policy{Match: "slow.>", Name: "slow", PublishRate: 0.01, PublishBurst: 2},
	))
	c := dial(t, ts)
	c.pub("small.a", `"12345678"`) // 10 bytes
	e := c.mustErr(map[string]any{"op": "pub", "topic": "small.a", "data": "123456789"}, subproto.CodeMessageTooLarge)
	if !strings.Contains(e.str("message"), "limit is 10") {
		t.Fatalf("message_too_large: %s", e)
	}
	c.pub("big.a", `"123456789"`) // 11 bytes elsewhere: the global limit
	code, m := ts.post("/v1/topics/small.a", `"123456789"`, nil)
	if code != 413 && m["code"] != string(subproto.CodeMessageTooLarge) {
		t.Fatalf("HTTP publish over the policy's limit: %d %v", code, m)
	}

	c.pub("slow.a", `1`)
	c.pub("slow.b", `2`)
	e = c.mustErr(map[string]any{"op": "pub", "topic": "slow.a", "data": 3}, subproto.CodeRateLimited)
	if e.num("retry_after_ms") < 1000 || !strings.Contains(e.str("message"), "policy slow") {
		t.Fatalf("rate_limited: %s", e)
	}
	c.mustErr(map[string]any{"op": "pub", "topic": "slow.c", "data": 3}, subproto.CodeRateLimited)
	c.pub("big.a", `4`) // other topics still take this connection's publishes
	other := dial(t, ts)
	other.pub("slow.a", `5`) // per connection
	if h := ts.head("slow.a"); h != 2 {
		t.Fatalf("slow.a head %d: a refused publish was stored", h)
	}

	// New policies apply at once to the connections already open.
	ps, err := broker.NewPolicies(broker.Policy{}, []broker.Policy{{Match: "small.>", Name: "small", MaxMessageBytes: 100}})
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.Broker.SetPolicies(ps); err != nil {
		t.Fatal(err)
	}
	c.pub("small.a", `"123456789"`)
	for range 5 {
		c.pub("slow.a", `6`)
	}
	if c.isClosed() {
		t.Fatal("the connection closed")
	}

	_, lm, body := getJSON(t, ts, "/v1/topics", nil)
	want := map[string]string{"small.a": "small", "slow.a": "default", "slow.b": "default", "big.a": "default"}
	got := map[string]string{}
	for _, x := range lm["topics"].([]any) {
		tm := x.(map[string]any)
		got[tm["topic"].(string)], _ = tm["policy"].(string)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("topic list: %s has policy %q, want %q: %s", k, got[k], v, body)
		}
	}
	if err := ts.Broker.SetPolicies(mustPolicies(t, broker.Policy{Match: "slow.*", Name: "slow-again"})); err != nil {
		t.Fatal(err)
	}
	_, lm, body = getJSON(t, ts, "/v1/topics", nil)
	for _, x := range lm["topics"].([]any) {
		tm := x.(map[string]any)
		if tm["topic"] == "slow.a" && tm["policy"] != "slow-again" {
			t.Fatalf("after SetPolicies: %s", body)
		}
	}
}

func mustPolicies(t testing.TB, list ...broker.Policy) *broker.Policies {
	ps, err := broker.NewPolicies(broker.Policy{}, list)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestPolicyPatternReplay: a pattern subscription with since or positions
// replays the topics whose policy allows it and delivers the others live
// only, from the first record appended after its ok.
func TestPolicyPatternReplay(t *testing.T) {
	ts := startServer(t, withPolicies(t, broker.Policy{Match: "p.live.>", NoPatternReplay: true}))
	c := dial(t, ts)
	for range 3 {
		c.pub("p.keep.x", `1`)
		c.pub("p.live.x", `1`)
		c.pub("p.live.y", `1`)
	}
	s := dial(t, ts)
	info := ts.topicInfo("p.live.y")
	s.sub("p.>", map[string]any{"since": 0, "positions": map[string]any{
		"p.live.y": map[string]any{"from": 1, "epoch": info.Epoch},
	}})
	checkOffsets(t, "replayed p.keep.x", s.waitMsgs("p.keep.x", 3), 1, 3)
	c.pub("p.live.x", `2`)
	c.pub("p.live.y", `2`)
	c.pub("p.keep.x", `2`)
	checkOffsets(t, "live p.live.x", s.waitMsgs("p.live.x", 1), 4, 4)
	checkOffsets(t, "live p.live.y", s.waitMsgs("p.live.y", 1), 4, 4)
	checkOffsets(t, "p.keep.x", s.waitMsgs("p.keep.x", 4), 1, 4)
	for _, e := range s.snapshot() {
		if e.Op == "topic" && strings.HasPrefix(e.str("topic"), "p.live.") && e.num("from") != 4 {
			t.Fatalf("topic event of a live-only topic: %s", e)
		}
	}
	var raw json.RawMessage = s.waitMsgs("p.live.x", 1)[0].data()
	if string(raw) != "2" {
		t.Fatalf("p.live.x data %s", raw)
	}
}

// TestPolicyMaxTopics: a policy's max-topics refuses a pub or sub (and an
// HTTP publish) that would create one more of its topics with
// too_many_topics and creates nothing, while its existing topics and other
// policies' go on; a reload raising it takes effect at once; ephemeral
// policies are bounded too, and their idle topics, once deleted, free
// their places.
func TestPolicyMaxTopics(t *testing.T) {
	rooms := broker.Policy{Match: "room.*", MaxTopics: 2}
	cursors := broker.Policy{Match: "cursor.*", Ephemeral: true, MaxTopics: 2}
	ts := startServer(t, withPolicies(t, rooms, cursors), func(c *serverConfig) {
		c.Broker.TopicIdle = 200 * time.Millisecond
	})
	c := dial(t, ts)
	c.pub("room.1", `1`)
	c.sub("room.2", nil)
	c.mustErr(map[string]any{"op": "pub", "topic": "room.3", "data": 1}, subproto.CodeTooManyTopics)
	e := c.mustErr(map[string]any{"op": "sub", "topic": "room.3"}, subproto.CodeTooManyTopics)
	if code, m := ts.post("/v1/topics/room.3", `1`, nil); code != http.StatusInsufficientStorage {
		t.Fatalf("HTTP publish past the policy's max-topics: %d %v", code, m)
	}
	if _, ok, _ := ts.Store.Topic("room.3"); ok {
		t.Fatal("a refused topic was created")
	}
	t.Logf("refusal: %s", e)
	c.pub("room.1", `2`)
	for i := range 5 {
		c.pub(fmt.Sprintf("other.%d", i), `1`)
	}

	rooms.MaxTopics = 3
	if err := ts.Broker.SetPolicies(mustPolicies(t, rooms, cursors)); err != nil {
		t.Fatal(err)
	}
	c.pub("room.3", `1`)
	c.mustErr(map[string]any{"op": "sub", "topic": "room.4"}, subproto.CodeTooManyTopics)

	// Ephemeral: cursor.1 is touched and left, cursor.2 stays subscribed.
	c.sub("cursor.1", nil)
	c.mustOK(map[string]any{"op": "unsub", "topic": "cursor.1"})
	c.sub("cursor.2", nil)
	c.mustErr(map[string]any{"op": "pub", "topic": "cursor.3", "data": 1}, subproto.CodeTooManyTopics)
	if n := ts.Store.TopicCount(); n != 3+5 {
		t.Fatalf("the store holds %d topics, want 8 (no cursor)", n)
	}
	p := dial(t, ts)
	eventually(t, 30*time.Second, "cursor.1 deleted as idle, freeing its place", func() bool {
		ev := p.do(map[string]any{"op": "pub", "topic": "cursor.3", "data": 1})
		return ev.Op == "ok"
	})
	c.mustErr(map[string]any{"op": "sub", "topic": "cursor.4"}, subproto.CodeTooManyTopics)
}

// TestPolicyMaxTopicsReload: policies that put topics in new classes
// count the topics each already holds; removing a bound lifts it.
func TestPolicyMaxTopicsReload(t *testing.T) {
	rooms := broker.Policy{Match: "room.*", MaxTopics: 1}
	ts := startServer(t, withPolicies(t, rooms))
	c := dial(t, ts)
	c.pub("room.1", `1`)
	for i := range 5 {
		c.pub(fmt.Sprintf("other.%d", i), `1`)
	}
	others := broker.Policy{Match: "other.*", MaxTopics: 5}
	if err := ts.Broker.SetPolicies(mustPolicies(t, rooms, others)); err != nil {
		t.Fatal(err)
	}
	c.mustErr(map[string]any{"op": "pub", "topic": "other.new", "data": 1}, subproto.CodeTooManyTopics)
	c.mustErr(map[string]any{"op": "pub", "topic": "room.2", "data": 1}, subproto.CodeTooManyTopics)
	if err := ts.Broker.SetPolicies(mustPolicies(t, broker.Policy{Match: "room.*"}, others)); err != nil {
		t.Fatal(err)
	}
	c.pub("room.2", `1`)
	c.mustErr(map[string]any{"op": "sub", "topic": "other.new"}, subproto.CodeTooManyTopics)
	if err := ts.Broker.SetPolicies(mustPolicies(t)); err != nil {
		t.Fatal(err)
	}
	c.pub("other.new", `1`)
}
