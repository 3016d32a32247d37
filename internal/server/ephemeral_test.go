package server_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/subproto"
)

// TestEphemeralTopic: a topic of an ephemeral policy has offsets, an
// epoch, replay (topic and pattern subscriptions), idempotency keys and a
// bounded log like any topic, and nothing of it reaches the store; the
// other topics stay durable.
func TestEphemeralTopic(t *testing.T) {
	ts := startServer(t, withPolicies(t, broker.Policy{Match: "cursor.>", Name: "cursors", Ephemeral: true,
		Retention: broker.Retention{MaxMessages: 5}}))
	c := dial(t, ts)
	for i := 1; i <= 8; i++ {
		if off := c.pub("cursor.a", `{"x":1}`); off != uint64(i) {
			t.Fatalf("publish %d got offset %d", i, off)
		}
	}
	c.pub("orders.a", `1`)
	if _, ok, err := ts.Store.Topic("cursor.a"); ok || err != nil {
		t.Fatalf("the ephemeral topic is in the store: %v %v", ok, err)
	}
	if n := ts.Store.TopicCount(); n != 1 {
		t.Fatalf("the store holds %d topics, want 1 (orders.a)", n)
	}

	// Bounded to the last 5, replayed like a durable log.
	s := dial(t, ts)
	ok := s.sub("cursor.a", map[string]any{"from": "earliest"})
	if ok.num("from") != 4 || ok.num("head") != 8 || ok.str("epoch") == "" {
		t.Fatalf("sub from earliest: %s", ok)
	}
	epoch := ok.str("epoch")
	checkOffsets(t, "replay", s.waitMsgs("cursor.a", 5), 4, 8)
	e := s.mustErr(map[string]any{"op": "sub", "topic": "cursor.b.x", "from": 2}, subproto.CodeOffsetOutOfRange)
	_ = e
	e = dial(t, ts).mustErr(map[string]any{"op": "sub", "topic": "cursor.a", "from": 2, "epoch": epoch}, subproto.CodeOffsetOutOfRange)
	if e.num("earliest") != 4 || e.num("latest") != 8 {
		t.Fatalf("from 2: %s", e)
	}
	dial(t, ts).mustErr(map[string]any{"op": "sub", "topic": "cursor.a", "from": 5, "epoch": "other"}, subproto.CodeEpochMismatch)
	c.pub("cursor.a", `{"x":2}`)
	checkOffsets(t, "live", s.waitMsgs("cursor.a", 6), 4, 9)

	// Idempotency keys, while the record is retained.
	a := c.mustOK(map[string]any{"op": "pub", "topic": "cursor.a", "key": "k1", "data": 1})
	b := c.mustOK(map[string]any{"op": "pub", "topic": "cursor.a", "key": "k1", "data": 1})
	if a.num("offset") != 10 || b.num("offset") != 10 || b.M["dup"] != true {
		t.Fatalf("keyed publishes: %s, %s", a, b)
	}

	// A pattern subscription replays it (since) with its epoch.
	p := dial(t, ts)
	p.sub("cursor.>", map[string]any{"since": 0, "if_gone": "earliest"})
	checkOffsets(t, "pattern", p.waitMsgs("cursor.a", 5), 6, 10)
	for _, ev := range p.snapshot() {
		if ev.Op == "topic" && ev.str("epoch") != epoch {
			t.Fatalf("topic event: %s, want epoch %s", ev, epoch)
		}
	}

	// History over HTTP and the topic list.
	code, m, body := getJSON(t, ts, "/v1/topics/cursor.a/messages?from=6", nil)
	if code != 200 || m["epoch"] != epoch || len(m["messages"].([]any)) != 5 {
		t.Fatalf("history: %d %s", code, body)
	}
	_, m, body = getJSON(t, ts, "/v1/topics", nil)
	var found bool
	for _, x := range m["topics"].([]any) {
		tm := x.(map[string]any)
		if tm["topic"] == "cursor.a" {
			found = tm["policy"] == "cursors" && tm["head"] == 10.0 && tm["earliest"] == 6.0 && tm["epoch"] == epoch
		}
	}
	if !found {
		t.Fatalf("the topic list: %s", body)
	}
	// Durable consumers on an ephemeral topic keep their position (in
	// the store) within the epoch.
	d := dial(t, ts)
	d.sub("cursor.a", map[string]any{"consumer": "w", "from": "earliest"})
	last := d.waitMsgs("cursor.a", 5)[4]
	d.mustOK(map[string]any{"op": "ack", "topic": "cursor.a", "consumer": "w", "offset": last.num("offset")})
	var raw json.RawMessage = last.data()
	if string(raw) != "1" {
		t.Fatalf("last data %s", raw)
	}
}

// TestEphemeralRefusals: ephemeral topics cannot be turned on or off by a
// change of policies while the server runs.
func TestEphemeralRefusals(t *testing.T) {
	ts := startServer(t, withPolicies(t, broker.Policy{Match: "cursor.>", Ephemeral: true}))
	for _, ps := range []*broker.Policies{
		mustPolicies(t, broker.Policy{Match: "cursor.>"}),
		mustPolicies(t, broker.Policy{Match: "cursor.*", Ephemeral: true}),
		mustPolicies(t, broker.Policy{Match: "cursor.>", Ephemeral: true}, broker.Policy{Match: "cursor.x.*"}),
	} {
		if err := ts.Broker.SetPolicies(ps); err == nil {
			t.Errorf("SetPolicies(%+v) accepted", ps.List())
		}
	}
	if err := ts.Broker.SetPolicies(mustPolicies(t, broker.Policy{Match: "cursor.>", Ephemeral: true, Retention: broker.Retention{MaxMessages: 3}})); err != nil {
		t.Fatalf("a new retention: %v", err)
	}
	plain := startServer(t)
	if err := plain.Broker.SetPolicies(mustPolicies(t, broker.Policy{Match: "cursor.>", Ephemeral: true})); err == nil {
		t.Error("a server without ephemeral policies took one")
	}
}

// TestEphemeralTopicsReclaimed: ephemeral topics that hold no record and
// have no subscriber are deleted after the idle time, as durable ones
// are, so a client touching new names cannot use up the ephemeral topics'
// cap for good; a subscribed one stays with its epoch; one deleted comes
// back in a new epoch, and a resume with the old one gets epoch_mismatch.
func TestEphemeralTopicsReclaimed(t *testing.T) {
	const clients, per = 2, 300
	ts := startServer(t, withPolicies(t, broker.Policy{Match: "cursor.>", Ephemeral: true,
		Retention: broker.Retention{MaxAge: 300 * time.Millisecond}}), func(c *serverConfig) {
		c.Broker.TopicIdle = 200 * time.Millisecond
	})
	ephemeralTopics := func() []string {
		list, err := ts.Broker.Store().Topics("", 10000)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, ti := range list {
			out = append(out, ti.Topic)
		}
		return out
	}
	epoch := func(topic string) string {
		t.Helper()
		info, ok, err := ts.Broker.Store().Topic(topic)
		if err != nil || !ok {
			t.Fatalf("Topic(%q) = ok %v, err %v", topic, ok, err)
		}
		return info.Epoch
	}
	keeper := dial(t, ts)
	kept := keeper.sub("cursor.kept", nil)
	c := dial(t, ts)
	c.pub("cursor.aged", `1`)
	old := epoch("cursor.aged")
	touchTopics(t, ts, "cursor.wave", clients, per)
	eventually(t, 30*time.Second, "the touched and aged topics to go", func() bool {
		return slices.Equal(ephemeralTopics(), []string{"cursor.kept"})
	})
	eventually(t, 30*time.Second, "the deleted topics to be counted", func() bool {
		return ts.Broker.Stats().TopicsReclaimed.Load() >= clients*per+1
	})
	if n := ts.Store.TopicCount(); n != 0 {
		t.Fatalf("the store holds %d topics", n)
	}

	dial(t, ts).mustErr(map[string]any{"op": "sub", "topic": "cursor.aged", "from": 2, "epoch": old}, subproto.CodeEpochMismatch)
	if off := c.pub("cursor.aged", `2`); off != 1 {
		t.Fatalf("the deleted topic's first publish: offset %d", off)
	}
	if epoch("cursor.aged") == old {
		t.Fatal("the topic came back in its old epoch")
	}
	if e := epoch("cursor.kept"); e != kept.str("epoch") {
		t.Fatalf("the subscribed topic's epoch changed: %s, then %s", kept.str("epoch"), e)
	}
	c.pub("cursor.kept", `3`)
	keeper.waitFor("the message on the subscribed topic", func(evs []event) bool { return len(msgs(evs, "cursor.kept")) == 1 })
}
