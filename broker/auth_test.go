package broker

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// fakeAuth maps token strings to grants; "expired" and unknown tokens fail.
type fakeAuth map[string]*Grant

func (f fakeAuth) Verify(token string) (*Grant, error) {
	if token == "expired" {
		return nil, fmt.Errorf("%w: test", ErrTokenExpired)
	}
	g, ok := f[token]
	if !ok {
		return nil, fmt.Errorf("%w: test", ErrTokenInvalid)
	}
	cp := *g
	cp.Expires = time.Now().Add(time.Hour)
	if token == "short" {
		cp.Expires = time.Now().Add(300 * time.Millisecond)
	}
	return &cp, nil
}

var testGrants = fakeAuth{
	"alice":  {Subject: "alice", Publish: []string{"chat.>"}, Subscribe: []string{"chat.*", "news"}},
	"alice2": {Subject: "alice", Publish: []string{"chat.>"}, Subscribe: []string{"news"}},
	"bob":    {Subject: "bob", Publish: []string{">"}, Subscribe: []string{">"}},
	"short":  {Subject: "carol", Subscribe: []string{">"}}, // expires 300 ms after Verify
}

func authServer(t *testing.T) *Server {
	srv, _ := newTestServer(t, func(c *Config) { c.Auth = testGrants; c.AuthTimeout = 300 * time.Millisecond })
	return srv
}

func lastOf(evs []map[string]any, id uint64) map[string]any {
	for i := len(evs) - 1; i >= 0; i-- {
		if v, ok := evs[i]["id"]; ok && num(v) == id {
			return evs[i]
		}
	}
	return nil
}

func reply(t *testing.T, c *testConn, id uint64) map[string]any {
	t.Helper()
	evs := c.wait(t, fmt.Sprintf("reply %d", id), func(evs []map[string]any) bool { return lastOf(evs, id) != nil })
	return lastOf(evs, id)
}

func TestAuthCommandsAndPermissions(t *testing.T) {
	srv := authServer(t)
	s, c := connect(t, srv)
	s.HandleFrame([]byte(`{"op":"ping","id":1}` + "\n" + `{"op":"pub","id":2,"topic":"chat.a","data":1}`))
	if r := reply(t, c, 1); r["op"] != "pong" {
		t.Fatalf("ping before auth: %v", r)
	}
	if r := reply(t, c, 2); r["code"] != "unauthorized" {
		t.Fatalf("pub before auth: %v", r)
	}
	s.HandleFrame([]byte(`{"op":"auth","id":3,"token":"alice"}`))
	if r := reply(t, c, 3); r["op"] != "ok" {
		t.Fatalf("auth: %v", r)
	}
	cases := []struct {
		cmd  string
		want string // op or code
	}{
		{`{"op":"pub","id":%d,"topic":"chat.a.b","data":1}`, "ok"},
		{`{"op":"pub","id":%d,"topic":"news","data":1}`, "forbidden"},
		{`{"op":"sub","id":%d,"topic":"chat.x"}`, "ok"},
		{`{"op":"sub","id":%d,"topic":"chat.x.y"}`, "forbidden"},
		{`{"op":"sub","id":%d,"topic":"chat.*"}`, "ok"},
		{`{"op":"sub","id":%d,"topic":"chat.>"}`, "forbidden"},
		{`{"op":"sub","id":%d,"topic":"news"}`, "ok"},
		{`{"op":"ack","id":%d,"topic":"secret","consumer":"c","offset":1}`, "forbidden"},
	}
	for i, tc := range cases {
		id := uint64(10 + i)
		s.HandleFrame(fmt.Appendf(nil, tc.cmd, id))
		r := reply(t, c, id)
		got := fmt.Sprint(r["op"])
		if got == "err" {
			got = fmt.Sprint(r["code"])
		}
		if got != tc.want {
			t.Errorf("%s: got %v, want %s", tc.cmd, r, tc.want)
		}
	}

	// A bad refresh keeps the old token in force.
	s.HandleFrame([]byte(`{"op":"auth","id":30,"token":"nope"}`))
	if r := reply(t, c, 30); r["code"] != "unauthorized" {
		t.Fatalf("bad refresh: %v", r)
	}
	// Another subject cannot take over the connection.
	s.HandleFrame([]byte(`{"op":"auth","id":31,"token":"bob"}`))
	if r := reply(t, c, 31); r["code"] != "unauthorized" {
		t.Fatalf("refresh as another subject: %v", r)
	}
	// A narrower token ends the subscriptions it no longer allows, at once.
	s.HandleFrame([]byte(`{"op":"auth","id":32,"token":"alice2"}`))
	evs := c.wait(t, "revocations", func(evs []map[string]any) bool {
		n := 0
		for _, ev := range evs {
			if ev["op"] == "unsubbed" && ev["code"] == "forbidden" {
				n++
			}
		}
		return n == 2 && lastOf(evs, 32) != nil
	})
	for _, ev := range evs {
		if ev["op"] == "unsubbed" && ev["topic"] == "news" {
			t.Fatalf("news is still allowed but was ended: %v", ev)
		}
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed != 0 {
		t.Fatalf("connection closed with %d", closed)
	}
}

func waitClosed(t *testing.T, c *testConn, want uint16) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		got := c.closed
		c.mu.Unlock()
		if got != 0 {
			if got != want {
				t.Fatalf("closed with %d, want %d", got, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not closed; want %d", want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAuthCloses(t *testing.T) {
	srv := authServer(t)
	dial := func(token string) *testConn {
		c := newTestConn()
		if _, err := srv.Connect(c, ConnInfo{Token: token}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Run("bad handshake token", func(t *testing.T) { waitClosed(t, dial("nope"), 4001) })
	t.Run("expired handshake token", func(t *testing.T) { waitClosed(t, dial("expired"), 4003) })
	t.Run("auth timeout", func(t *testing.T) { waitClosed(t, dial(""), 4001) })
	t.Run("bad auth command", func(t *testing.T) {
		c := newTestConn()
		sess, err := srv.Connect(c, ConnInfo{})
		if err != nil {
			t.Fatal(err)
		}
		sess.HandleFrame([]byte(`{"op":"auth","id":1,"token":"nope"}`))
		waitClosed(t, c, 4001)
	})
	t.Run("token expiry", func(t *testing.T) { waitClosed(t, dial("short"), 4003) })
	t.Run("refresh before expiry keeps the connection", func(t *testing.T) {
		c := newTestConn()
		sess, _ := srv.Connect(c, ConnInfo{Token: "short"})
		// carol refreshes with a token of the same subject and a long expiry.
		testGrants["carol-long"] = &Grant{Subject: "carol", Subscribe: []string{">"}}
		defer delete(testGrants, "carol-long")
		sess.HandleFrame([]byte(`{"op":"auth","id":1,"token":"carol-long"}`))
		reply(t, c, 1)
		time.Sleep(500 * time.Millisecond)
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.closed != 0 {
			t.Fatalf("closed with %d after a refresh", c.closed)
		}
	})
	t.Run("handshake token authenticates", func(t *testing.T) {
		c := newTestConn()
		sess, _ := srv.Connect(c, ConnInfo{Token: "bob"})
		sess.HandleFrame([]byte(`{"op":"pub","id":1,"topic":"x","data":1}`))
		if r := reply(t, c, 1); r["op"] != "ok" {
			t.Fatalf("pub: %v", r)
		}
	})
}

// Durable consumers belong to the token's subject: the same name used by
// two users is two consumers.
func TestConsumersBelongToSubject(t *testing.T) {
	srv := authServer(t)
	publishN(t, srv, "chat.room", 5)
	sa, ca := connect(t, srv)
	sa.HandleFrame([]byte(`{"op":"auth","token":"alice"}` + "\n" + `{"op":"sub","id":1,"topic":"chat.room","consumer":"w","from":"earliest"}`))
	ca.wait(t, "alice's messages", func(evs []map[string]any) bool { return len(msgs(evs, "chat.room")) == 5 })
	sa.HandleFrame([]byte(`{"op":"ack","id":2,"topic":"chat.room","consumer":"w","offset":5}`))
	reply(t, ca, 2)

	sb, cb := connect(t, srv)
	sb.HandleFrame([]byte(`{"op":"auth","token":"bob"}` + "\n" + `{"op":"sub","id":1,"topic":"chat.room","consumer":"w","from":"earliest"}`))
	evs := cb.wait(t, "bob's messages", func(evs []map[string]any) bool { return len(msgs(evs, "chat.room")) == 5 })
	checkSeq(t, msgs(evs, "chat.room"), 1, 5)
	// alice's subscription was not taken over by bob.
	for _, ev := range ca.wait(t, "", func([]map[string]any) bool { return true }) {
		if ev["op"] == "unsubbed" {
			t.Fatalf("alice got %v", ev)
		}
	}
}

// closeOrderConn records how many frames were written when Close came.
type closeOrderConn struct {
	*testConn
	writesAtClose atomic.Int64
}

func (c *closeOrderConn) Close(code uint16, reason []byte) {
	c.mu.Lock()
	w := c.writes
	c.mu.Unlock()
	c.writesAtClose.CompareAndSwap(0, int64(w)+1) // +1: 0 means not closed yet
	c.testConn.Close(code, reason)
}

// A bad handshake token closes with 4001 or 4003 only once welcome is
// written (issue 15: the close cleared the queue first, and most clients
// saw the close without welcome). The transport is held back so that the
// close is ready before welcome could be written.
func TestBadTokenClosesAfterWelcome(t *testing.T) {
	srv := authServer(t)
	for _, tc := range []struct {
		token string
		code  uint16
	}{{"bogus", 4001}, {"expired", 4003}} {
		c := &closeOrderConn{testConn: newTestConn()}
		gate := make(chan struct{})
		c.gate = gate
		s, err := srv.Connect(c, ConnInfo{Remote: "test", Token: tc.token})
		if err != nil {
			t.Fatal(err)
		}
		s.HandleFrame([]byte(`{"op":"ping","id":1}`)) // ignored: the session is closing
		close(gate)
		c.wait(t, "the close", func([]map[string]any) bool { return c.closed != 0 })
		if c.closed != tc.code {
			t.Fatalf("token %q: closed with %d, want %d", tc.token, c.closed, tc.code)
		}
		if w := c.writesAtClose.Load() - 1; w < 1 {
			t.Fatalf("token %q: closed after %d frames, want welcome first", tc.token, w)
		}
		c.mu.Lock()
		evs := c.events
		c.mu.Unlock()
		if len(evs) != 1 || evs[0]["op"] != "welcome" {
			t.Fatalf("token %q: events %v, want welcome alone", tc.token, evs)
		}
	}
}
