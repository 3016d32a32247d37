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

// Tests of presence (protocol v1.1) on one node; the cluster's are in
// cmd/brokerd.

// session returns the session id of c's welcome.
func (c *client) session() string {
	c.t.Helper()
	evs := c.waitFor("welcome", func(evs []event) bool { return len(evs) > 0 })
	return evs[0].str("session")
}

// presenceEvents returns the join, leave and presence_muted events of
// topic in evs.
func presenceEvents(evs []event, topic string) []event {
	var out []event
	for _, e := range evs {
		if (e.Op == "join" || e.Op == "leave" || e.Op == "presence_muted") && e.str("topic") == topic {
			out = append(out, e)
		}
	}
	return out
}

// member returns the member object of a join or leave.
func member(t testing.TB, e event) map[string]any {
	t.Helper()
	m, ok := e.M["member"].(map[string]any)
	if !ok {
		t.Fatalf("%s has no member object", e)
	}
	return m
}

// waitPresence waits until c has n presence events of topic and returns
// them.
func (c *client) waitPresence(topic string, n int) []event {
	c.t.Helper()
	var out []event
	c.waitFor(fmt.Sprintf("%d presence events of %s", n, topic), func(evs []event) bool {
		out = presenceEvents(evs, topic)
		return len(out) >= n
	})
	return out
}

// listing asks for topic's presence and returns the sessions listed and
// the count.
func (c *client) listing(topic string) (map[string]map[string]any, int) {
	c.t.Helper()
	r := c.mustOK(map[string]any{"op": "presence", "topic": topic})
	if r.str("topic") != topic {
		c.t.Fatalf("presence ok %s: want topic %q", r, topic)
	}
	list, ok := r.M["members"].([]any)
	if !ok || !r.has("count") {
		c.t.Fatalf("presence ok %s: want members and count", r)
	}
	out := make(map[string]map[string]any)
	for _, x := range list {
		m := x.(map[string]any)
		out[m["session"].(string)] = m
	}
	return out, int(r.num("count"))
}

func TestPresenceJoinLeaveList(t *testing.T) {
	ts := startServer(t)
	a, b, watcher := dial(t, ts), dial(t, ts), dial(t, ts)
	aSess, bSess := a.session(), b.session()
	watcher.sub("room.1", nil) // subscribed without presence: no presence events
	a.sub("room.1", map[string]any{"presence": true, "presence_info": json.RawMessage(`{"name":"Ann","tags":["x"]}`)})
	b.sub("room.1", map[string]any{"presence": true})

	// a sees b join; b gets no join for a, who was there already.
	join := a.waitPresence("room.1", 1)[0]
	if join.Op != "join" {
		t.Fatalf("a got %s, want a join", join)
	}
	if m := member(t, join); m["session"] != bSess || m["node"] != "node-test" || m["user"] != nil || m["info"] != nil {
		t.Errorf("b's join member %v: want session %s, node node-test, no user, no info", m, bSess)
	}

	// Both are listed, on the socket and over HTTP, with a's info.
	members, count := b.listing("room.1")
	if count != 2 || len(members) != 2 || members[aSess] == nil || members[bSess] == nil {
		t.Fatalf("listing %v, count %d: want a and b", members, count)
	}
	if info, _ := json.Marshal(members[aSess]["info"]); string(info) != `{"name":"Ann","tags":["x"]}` {
		t.Errorf("a's info %s", info)
	}
	code, body := ts.get("/v1/topics/room.1/presence", nil)
	var hp struct {
		Topic   string           `json:"topic"`
		Members []map[string]any `json:"members"`
		Count   int              `json:"count"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &hp) != nil || hp.Topic != "room.1" || hp.Count != 2 || len(hp.Members) != 2 {
		t.Fatalf("GET presence: %d %s", code, body)
	}
	if code, body := ts.get("/v1/topics/empty/presence", nil); code != 200 || body != `{"topic":"empty","members":[],"count":0}`+"\n" {
		t.Errorf("GET presence of a topic without members: %d %s", code, body)
	}

	// b unsubscribes: a sees the same member leave.
	b.mustOK(map[string]any{"op": "unsub", "topic": "room.1"})
	evs := a.waitPresence("room.1", 2)
	if evs[1].Op != "leave" || fmt.Sprint(member(t, evs[1])) != fmt.Sprint(member(t, join)) {
		t.Fatalf("after b's unsub a got %s, want a leave with %v", evs[1], member(t, join))
	}

	// c joins and its connection drops: a sees it join and leave.
	c := dial(t, ts)
	cSess := c.session()
	c.sub("room.1", map[string]any{"presence": true})
	a.waitPresence("room.1", 3)
	c.kill()
	evs = a.waitPresence("room.1", 4)
	if evs[3].Op != "leave" || member(t, evs[3])["session"] != cSess {
		t.Fatalf("after c's drop a got %s, want c's leave", evs[3])
	}
	if members, count := a.listing("room.1"); count != 1 || members[aSess] == nil {
		t.Errorf("listing after the leaves: %v, count %d; want a alone", members, count)
	}
	if n := len(presenceEvents(watcher.snapshot(), "room.1")); n != 0 {
		t.Errorf("a subscriber without presence got %d presence events", n)
	}
	if n := len(presenceEvents(b.snapshot(), "room.1")); n != 0 {
		t.Errorf("b got %d presence events of the members there before it", n)
	}
	if n := len(presenceEvents(a.snapshot(), "room.1")); n != 4 {
		t.Errorf("a got %d presence events, want 4", n)
	}
	a.mustOK(map[string]any{"op": "unsub", "topic": "room.1"})
	eventually(t, waitTimeout, "no member left", func() bool { _, n := ts.Broker.Presence("room.1"); return n == 0 })
	if got := ts.Broker.Stats().PresenceMembers.Load(); got != 0 {
		t.Errorf("presence members gauge %d after every member left", got)
	}
}

func TestPresenceBadRequests(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		ps, err := broker.NewPolicies(broker.Policy{}, []broker.Policy{{Match: "cursor.>", NoPresence: true}})
		if err != nil {
			t.Fatal(err)
		}
		c.Broker.Policies = ps
	})
	c := dial(t, ts)
	c.mustErr(map[string]any{"op": "sub", "topic": "room.*", "presence": true}, subproto.CodeBadRequest)
	c.mustErr(map[string]any{"op": "sub", "topic": "room.1", "presence": "yes"}, subproto.CodeBadRequest)
	c.mustErr(map[string]any{"op": "sub", "topic": "room.1", "presence_info": 1}, subproto.CodeBadRequest)
	big := strings.Repeat("x", subproto.MaxPresenceInfo)
	c.mustErr(map[string]any{"op": "sub", "topic": "room.1", "presence": true, "presence_info": big}, subproto.CodeBadRequest)
	c.mustErr(map[string]any{"op": "presence", "topic": "room.>"}, subproto.CodeInvalidTopic)
	c.mustErr(map[string]any{"op": "presence"}, subproto.CodeBadRequest)
	r := c.mustErr(map[string]any{"op": "sub", "topic": "cursor.1", "presence": true}, subproto.CodeForbidden)
	if !strings.Contains(r.str("message"), "policy") {
		t.Errorf("refusal by policy says %q", r.str("message"))
	}
	// The refused subs left nothing behind: the same topics subscribe.
	c.sub("room.1", map[string]any{"presence": true})
	c.sub("cursor.1", nil)
	if _, n := c.listing("room.1"); n != 1 {
		t.Errorf("count %d after one presence sub", n)
	}
	if code, _ := ts.get("/v1/topics/room.*/presence", nil); code != http.StatusBadRequest {
		t.Errorf("GET presence of a pattern: %d, want 400", code)
	}
	// Bad JSON in presence_info closes like bad JSON anywhere (1007).
	c.send(`{"op":"sub","id":99,"topic":"room.2","presence":true,"presence_info":{"a":}}`)
	if code, _ := c.waitClosed(waitTimeout); code != uint16(subproto.CloseInvalidData) {
		t.Errorf("bad JSON in presence_info: close %d, want %d", code, subproto.CloseInvalidData)
	}
}

func TestPresenceAuth(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.Auth = staticAuth{
			"alice": {Subject: "alice", Subscribe: []string{"room.>"}},
			"bob":   {Subject: "bob", Subscribe: []string{"room.1"}},
		}
	})
	a, b := dial(t, ts), dial(t, ts)
	a.mustOK(map[string]any{"op": "auth", "token": "alice"})
	b.mustOK(map[string]any{"op": "auth", "token": "bob"})
	a.sub("room.1", map[string]any{"presence": true})
	b.sub("room.1", map[string]any{"presence": true})
	if m := member(t, a.waitPresence("room.1", 1)[0]); m["user"] != "bob" {
		t.Errorf("bob's member %v: want user bob", m)
	}
	b.mustErr(map[string]any{"op": "presence", "topic": "room.2"}, subproto.CodeForbidden)
	b.mustErr(map[string]any{"op": "sub", "topic": "room.2", "presence": true}, subproto.CodeForbidden)
	if members, n := b.listing("room.1"); n != 2 || members[a.session()]["user"] != "alice" {
		t.Errorf("listing %v, count %d", members, n)
	}
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	if code, _ := ts.get("/v1/topics/room.1/presence", nil); code != http.StatusUnauthorized {
		t.Errorf("GET presence without a token: %d, want 401", code)
	}
	if code, _ := ts.get("/v1/topics/room.2/presence", bearer("bob")); code != http.StatusForbidden {
		t.Errorf("GET presence bob may not read: %d, want 403", code)
	}
	if code, body := ts.get("/v1/topics/room.1/presence", bearer("bob")); code != 200 || !strings.Contains(body, `"count":2`) {
		t.Errorf("GET presence with bob's token: %d %s", code, body)
	}
	b.mustOK(map[string]any{"op": "unsub", "topic": "room.1"})
	if evs := a.waitPresence("room.1", 2); evs[1].Op != "leave" || member(t, evs[1])["user"] != "bob" {
		t.Errorf("bob's unsub: a got %s", evs[1])
	}
}

func TestPresenceMuted(t *testing.T) {
	const above = 3
	ts := startServer(t, func(c *serverConfig) { c.Broker.PresenceMuteAbove = above })
	var cs []*client
	for range above {
		c := dial(t, ts)
		c.sub("big", map[string]any{"presence": true})
		cs = append(cs, c)
	}
	// The first member saw the other two join.
	cs[0].waitPresence("big", above-1)
	// One more: the topic mutes, every member is told once, nobody sees
	// the join.
	x := dial(t, ts)
	x.sub("big", map[string]any{"presence": true})
	for i, c := range append(cs, x) {
		evs := c.waitFor("presence_muted", func(evs []event) bool {
			for _, e := range presenceEvents(evs, "big") {
				if e.Op == "presence_muted" {
					return true
				}
			}
			return false
		})
		for _, e := range presenceEvents(evs, "big") {
			if e.Op == "join" && member(t, e)["session"] == x.session() {
				t.Errorf("member %d was told of the join that muted the topic: %s", i, e)
			}
		}
	}
	// A member joining while muted is told; leaves are not sent; the
	// count stays exact.
	y := dial(t, ts)
	y.sub("big", map[string]any{"presence": true})
	y.waitPresence("big", 1)
	x.kill()
	eventually(t, waitTimeout, "x's leave counted", func() bool { _, n := ts.Broker.Presence("big"); return n == above+1 })
	if _, n := cs[0].listing("big"); n != above+1 {
		t.Errorf("count %d, want %d", n, above+1)
	}
	cs[0].quiet(200*time.Millisecond, "a presence event after muting", func(e event) bool {
		return e.Op == "join" || e.Op == "leave"
	})
	for i, c := range append(cs, y) {
		muted := 0
		for _, e := range presenceEvents(c.snapshot(), "big") {
			if e.Op == "presence_muted" {
				muted++
			}
		}
		if muted != 1 {
			t.Errorf("member %d was told %d times that the topic is muted", i, muted)
		}
	}
	if got := ts.Broker.Stats().PresenceMuted.Load(); got != 1 {
		t.Errorf("muted topics counter %d, want 1", got)
	}
}

// Changes of another node's members reach this node's members as join and
// leave; a reset (the other node's snapshot, or its death) leaves exactly
// the members it no longer has.
func TestPresenceRemoteMembers(t *testing.T) {
	ts := startServer(t)
	a := dial(t, ts)
	a.sub("room", map[string]any{"presence": true})
	r1 := subproto.Member{Session: "r1", Node: "other", Info: []byte(`{"n":1}`)}
	r2 := subproto.Member{Session: "r2", User: "u", Node: "other"}
	ts.Broker.RemotePresence("other", false, []broker.PresenceChange{{Topic: "room", Member: r1}, {Topic: "room", Member: r2}, {Topic: "elsewhere", Member: r1}})
	evs := a.waitPresence("room", 2)
	if member(t, evs[0])["session"] != "r1" || member(t, evs[1])["session"] != "r2" {
		t.Fatalf("remote joins: %v", evs)
	}
	// A change that claims to be another node's member is ignored; so is a
	// repeated join.
	ts.Broker.RemotePresence("other", false, []broker.PresenceChange{{Topic: "room", Member: subproto.Member{Session: "r3", Node: "third"}}, {Topic: "room", Member: r1}})
	if _, n := a.listing("room"); n != 3 {
		t.Fatalf("count %d, want 3", n)
	}
	// The other node's snapshot holds r2 only: r1 leaves, from both topics.
	ts.Broker.RemotePresence("other", true, []broker.PresenceChange{{Topic: "room", Member: r2}})
	evs = a.waitPresence("room", 3)
	if evs[2].Op != "leave" || member(t, evs[2])["session"] != "r1" {
		t.Fatalf("after the snapshot: %s, want r1's leave", evs[2])
	}
	if _, n := ts.Broker.Presence("elsewhere"); n != 0 {
		t.Errorf("r1 still listed in elsewhere")
	}
	// The node is gone.
	ts.Broker.RemotePresence("other", true, nil)
	evs = a.waitPresence("room", 4)
	if evs[3].Op != "leave" || member(t, evs[3])["session"] != "r2" {
		t.Fatalf("after the node died: %s, want r2's leave", evs[3])
	}
	if members, n := a.listing("room"); n != 1 || members[a.session()] == nil {
		t.Errorf("listing %v, %d", members, n)
	}
	a.quiet(100*time.Millisecond, "more presence events", func(e event) bool { return e.Op == "join" || e.Op == "leave" })
}

// A client that asks for the presence list again and again without
// reading holds one reply at a time: its reader waits instead of the
// server building every list.
func TestPresenceRepliesBounded(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) { c.SendBuffer = 64 << 10 })
	members := make([]broker.PresenceChange, 1000)
	info := json.RawMessage(`"` + strings.Repeat("i", 200) + `"`)
	for i := range members {
		members[i] = broker.PresenceChange{Topic: "crowd", Member: subproto.Member{Session: fmt.Sprintf("s%04d", i), Node: "other", Info: info}}
	}
	ts.Broker.RemotePresence("other", true, members)
	c := dial(t, ts, withRecvBuffer(64<<10))
	c.session()
	c.pause()
	st := ts.Broker.Stats()
	const n = 6 // about 250 KiB each
	var sb strings.Builder
	for i := range n {
		fmt.Fprintf(&sb, `{"op":"presence","id":%d,"topic":"crowd"}`+"\n", i+1)
	}
	c.send(sb.String())
	// The socket buffers hold less than one reply: one is being written,
	// one queued, and the reader waits with the next.
	eventually(t, waitTimeout, "the first list built", func() bool { return st.PresenceLists.Load() >= 1 })
	time.Sleep(500 * time.Millisecond)
	if served := st.PresenceLists.Load(); served > 3 {
		t.Fatalf("%d presence lists built for a client that read nothing", served)
	}
	c.release()
	// A generous bound: the test client decodes every list (with the race
	// detector, on a loaded machine that takes seconds).
	var last event
	c.waitForWithin(4*waitTimeout, "the last list", func(evs []event) bool {
		for _, e := range evs {
			if isReply(e, n) {
				last = e
				return true
			}
		}
		return false
	})
	if last.Op != "ok" || last.num("count") != 1000 {
		t.Fatalf("last reply %s", last)
	}
	if list := last.M["members"].([]any); len(list) == 0 || len(list) > broker.PresenceListMax {
		t.Errorf("%d members listed", len(list))
	}
}
