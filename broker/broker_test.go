package broker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// testConn records what the broker writes. With a gate, each WriteFrame
// waits for a token, simulating a socket that drains slowly.
type testConn struct {
	mu     sync.Mutex
	events []map[string]any
	raw    [][]byte
	gate   chan struct{}
	closed uint16
	writes int
	maxOut int // largest queue observed by the test's probe
	cond   *sync.Cond
}

func newTestConn() *testConn {
	c := &testConn{}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *testConn) WriteFrame(parts [][]byte) error {
	c.mu.Lock()
	gate := c.gate
	c.mu.Unlock()
	if gate != nil {
		<-gate
	}
	frame := bytes.Join(parts, nil)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	c.raw = append(c.raw, frame)
	for _, line := range bytes.Split(frame, []byte{'\n'}) {
		var ev map[string]any
		d := json.NewDecoder(bytes.NewReader(line))
		d.UseNumber()
		if err := d.Decode(&ev); err != nil {
			panic(fmt.Sprintf("broker wrote invalid JSON %q: %v", line, err))
		}
		c.events = append(c.events, ev)
	}
	c.cond.Broadcast()
	return nil
}

func (c *testConn) WritePing() error { return nil }

func (c *testConn) Close(code uint16, reason []byte) {
	c.mu.Lock()
	if c.closed == 0 {
		c.closed = code
	}
	c.cond.Broadcast()
	c.mu.Unlock()
}

// wait waits until pred holds for the recorded events.
func (c *testConn) wait(t testing.TB, what string, pred func([]map[string]any) bool) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	timer := time.AfterFunc(10*time.Second, func() { c.mu.Lock(); c.cond.Broadcast(); c.mu.Unlock() })
	defer timer.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for !pred(c.events) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; got %d events, last: %v", what, len(c.events), tail(c.events))
		}
		c.cond.Wait()
	}
	return append([]map[string]any(nil), c.events...)
}

func tail(evs []map[string]any) []map[string]any {
	if len(evs) > 5 {
		return evs[len(evs)-5:]
	}
	return evs
}

func num(v any) uint64 {
	n, _ := v.(json.Number).Int64()
	return uint64(n)
}

func msgs(evs []map[string]any, topic string) []uint64 {
	var out []uint64
	for _, ev := range evs {
		if ev["op"] == "msg" && ev["topic"] == topic {
			out = append(out, num(ev["offset"]))
		}
	}
	return out
}

func newTestServer(t testing.TB, mod func(*Config)) (*Server, *memStore) {
	t.Helper()
	st := newMemStore()
	cfg := Config{Node: "test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(t.Context()) })
	return srv, st
}

func connect(t testing.TB, srv *Server) (*Session, *testConn) {
	t.Helper()
	c := newTestConn()
	s, err := srv.Connect(c, ConnInfo{Remote: "test"})
	if err != nil {
		t.Fatal(err)
	}
	c.wait(t, "welcome", func(evs []map[string]any) bool { return len(evs) > 0 && evs[0]["op"] == "welcome" })
	return s, c
}

func publishN(t testing.TB, srv *Server, topic string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := srv.Publish(t.Context(), topic, []byte(fmt.Sprintf(`{"n":%d}`, i)), ""); err != nil {
			t.Fatal(err)
		}
	}
}

func checkSeq(t testing.TB, got []uint64, from, to uint64) {
	t.Helper()
	if len(got) != int(to-from+1) {
		t.Fatalf("got %d messages, want %d (%d..%d)", len(got), to-from+1, from, to)
	}
	for i, off := range got {
		if off != from+uint64(i) {
			t.Fatalf("message %d has offset %d, want %d (gap or duplicate)", i, off, from+uint64(i))
		}
	}
}

func TestReplayThenLive(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	publishN(t, srv, "a.b", 10)
	s, c := connect(t, srv)
	s.HandleFrame([]byte(`{"op":"sub","id":1,"topic":"a.b","from":3}`))
	c.wait(t, "replay", func(evs []map[string]any) bool { return len(msgs(evs, "a.b")) == 8 })
	publishN(t, srv, "a.b", 5)
	evs := c.wait(t, "live", func(evs []map[string]any) bool { return len(msgs(evs, "a.b")) == 13 })
	if evs[1]["op"] != "ok" || num(evs[1]["from"]) != 3 || num(evs[1]["head"]) != 10 {
		t.Fatalf("ok = %v", evs[1])
	}
	checkSeq(t, msgs(evs, "a.b"), 3, 15)
}

// A subscription whose connection drains slowly falls back to the log and
// still gets every message, in order, while its queue stays bounded.
func TestSlowSubscriptionCatchesUpFromLog(t *testing.T) {
	srv, _ := newTestServer(t, func(c *Config) { c.QueueMessages = 16; c.MinShare = 4; c.MaxFrameBytes = 256 })
	s, c := connect(t, srv)
	s.HandleFrame([]byte(`{"op":"sub","id":1,"topic":"t"}`))
	c.wait(t, "ok", func(evs []map[string]any) bool { return len(evs) == 2 })
	gate := make(chan struct{})
	c.mu.Lock()
	c.gate = gate
	c.mu.Unlock()
	const n = 2000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			if _, err := srv.Publish(t.Context(), "t", []byte(`"x"`), ""); err != nil {
				panic(err)
			}
			s.mu.Lock()
			if q := s.outMsgs; q > srv.cfg.QueueMessages {
				panic(fmt.Sprintf("queue holds %d messages, bound %d", q, srv.cfg.QueueMessages))
			}
			s.mu.Unlock()
		}
	}()
	go func() {
		for {
			select {
			case gate <- struct{}{}:
				time.Sleep(50 * time.Microsecond)
			case <-time.After(20 * time.Second):
				return
			}
		}
	}()
	<-done
	evs := c.wait(t, "all messages", func(evs []map[string]any) bool { return len(msgs(evs, "t")) >= n })
	checkSeq(t, msgs(evs, "t"), 1, n)
	if srv.stats.CatchUps.Load() == 0 {
		t.Fatal("the subscription never fell back to the log; the test did not exercise catch-up")
	}
}

func TestConsumerInflightWindow(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	publishN(t, srv, "jobs", 30)
	s, c := connect(t, srv)
	s.HandleFrame([]byte(`{"op":"sub","id":1,"topic":"jobs","consumer":"w","from":"earliest","max_inflight":10}`))
	c.wait(t, "window", func(evs []map[string]any) bool { return len(msgs(evs, "jobs")) == 10 })
	time.Sleep(50 * time.Millisecond) // nothing more may come
	if got := len(msgs(c.wait(t, "", func([]map[string]any) bool { return true }), "jobs")); got != 10 {
		t.Fatalf("got %d messages with max_inflight 10", got)
	}
	s.HandleFrame([]byte(`{"op":"ack","id":2,"topic":"jobs","consumer":"w","offset":5}`))
	evs := c.wait(t, "more after ack", func(evs []map[string]any) bool { return len(msgs(evs, "jobs")) == 15 })
	checkSeq(t, msgs(evs, "jobs"), 1, 15)

	// A second connection takes the consumer over and resumes at acked+1.
	s2, c2 := connect(t, srv)
	s2.HandleFrame([]byte(`{"op":"sub","id":1,"topic":"jobs","consumer":"w","max_inflight":100}`))
	evs2 := c2.wait(t, "resume", func(evs []map[string]any) bool { return len(msgs(evs, "jobs")) == 25 })
	checkSeq(t, msgs(evs2, "jobs"), 6, 30)
	c.wait(t, "taken over", func(evs []map[string]any) bool {
		for _, ev := range evs {
			if ev["op"] == "unsubbed" && ev["code"] == "taken_over" {
				return true
			}
		}
		return false
	})
}

func TestPatternSubscription(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	s, c := connect(t, srv)
	s.HandleFrame([]byte(`{"op":"sub","id":1,"topic":"room.*.msgs"}` + "\n" + `{"op":"sub","id":2,"topic":"room.>"}`))
	c.wait(t, "oks", func(evs []map[string]any) bool { return len(evs) == 3 })
	publishN(t, srv, "room.1.msgs", 2)
	publishN(t, srv, "room.2", 1)
	publishN(t, srv, "other", 1)
	// Each topic's first msg comes after a topic event.
	evs := c.wait(t, "pattern msgs", func(evs []map[string]any) bool { return len(evs) == 3+5+3 })
	count := map[string]int{}
	announced := map[string]bool{}
	for _, ev := range evs[3:] {
		k := fmt.Sprint(ev["sub"]) + " " + fmt.Sprint(ev["topic"])
		switch ev["op"] {
		case "topic":
			if announced[k] || count[k] > 0 || fmt.Sprint(ev["from"]) != "1" || ev["epoch"] == "" {
				t.Errorf("topic event %v", ev)
			}
			announced[k] = true
		case "msg":
			if !announced[k] {
				t.Errorf("msg before its topic event: %v", ev)
			}
			count[k]++
		}
	}
	want := map[string]int{"room.*.msgs room.1.msgs": 2, "room.> room.1.msgs": 2, "room.> room.2": 1}
	if fmt.Sprint(count) != fmt.Sprint(want) {
		t.Fatalf("deliveries %v, want %v", count, want)
	}
}

func TestPatternTree(t *testing.T) {
	tree := newPatternTree()
	subs := map[string]*subscription{}
	for _, p := range []string{"a.b", "a.*", "a.>", "*.b", ">", "a.*.c", "a.b.>"} {
		subs[p] = &subscription{topic: p}
		tree.insert(p, subs[p])
	}
	cases := map[string][]string{
		"a.b":   {"a.b", "a.*", "a.>", "*.b", ">"},
		"a.x.c": {"a.>", ">", "a.*.c"},
		"a":     {">"},
		"a.b.c": {"a.>", ">", "a.*.c", "a.b.>"},
	}
	for topic, want := range cases {
		got := map[string]bool{}
		for _, s := range tree.match(topic, nil) {
			got[s.topic] = true
		}
		if len(got) != len(want) {
			t.Errorf("%s matched %v, want %v", topic, got, want)
		}
		for _, w := range want {
			if !got[w] {
				t.Errorf("%s did not match %s", topic, w)
			}
		}
	}
	for p, s := range subs {
		tree.remove(p, s)
	}
	if tree.n != 0 || !tree.root.empty() {
		t.Fatalf("tree not empty after removing everything: n=%d", tree.n)
	}
}

func TestCovers(t *testing.T) {
	cases := []struct {
		p, s string
		want bool
	}{
		{"a.b", "a.b", true},
		{"a.b", "a.c", false},
		{"a.*", "a.b", true},
		{"a.*", "a.*", true},
		{"a.*", "a.>", false},
		{"a.*", "a.b.c", false},
		{"a.>", "a.b.c", true},
		{"a.>", "a.*", true},
		{"a.>", "a.>", true},
		{"a.>", "a", false},
		{">", "x", true},
		{">", ">", true},
		{"*.b", "a.b", true},
		{"*.b", "*.b", true},
		{"*.b", "*.*", false},
		{"a.b", "a.*", false},
		{"a.*.c", "a.*.c", true},
		{"a.*.c", "a.>", false},
		{"a", "a.b", false},
	}
	for _, c := range cases {
		if got := Covers(c.p, c.s); got != c.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", c.p, c.s, got, c.want)
		}
	}
}

// A client that sends many commands while reading nothing is held back
// (its reader waits), not closed, and gets every reply once it reads.
func TestUnreadRepliesHoldTheReaderBack(t *testing.T) {
	srv, _ := newTestServer(t, func(c *Config) { c.QueueMessages = 16; c.MinShare = 4; c.MaxPendingPublishes = 8 })
	s, c := connect(t, srv)
	gate := make(chan struct{})
	c.mu.Lock()
	c.gate = gate
	c.mu.Unlock()
	const n = 500
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := 1; i <= n; i++ {
			if i%2 == 0 {
				s.HandleFrame(fmt.Appendf(nil, `{"op":"ping","id":%d}`, i))
			} else {
				s.HandleFrame(fmt.Appendf(nil, `{"op":"pub","id":%d,"topic":"t","data":%d}`, i, i))
			}
		}
	}()
	select {
	case <-sent:
		t.Fatal("the reader was never held back while replies piled up")
	case <-time.After(200 * time.Millisecond):
	}
	s.mu.Lock()
	q := s.outCtrl
	s.mu.Unlock()
	if q > srv.cfg.QueueMessages+srv.cfg.MaxPendingPublishes {
		t.Fatalf("%d replies queued, bound %d", q, srv.cfg.QueueMessages+srv.cfg.MaxPendingPublishes)
	}
	close(gate) // the client reads again
	c.mu.Lock()
	c.gate = nil
	c.mu.Unlock()
	<-sent
	evs := c.wait(t, "every reply", func(evs []map[string]any) bool { return len(evs) == n+1 })
	ids := map[uint64]bool{}
	for _, ev := range evs[1:] {
		ids[num(ev["id"])] = true
	}
	if len(ids) != n {
		t.Fatalf("%d distinct replies, want %d", len(ids), n)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed != 0 {
		t.Fatalf("closed with %d", c.closed)
	}
}

// slowStore answers appends after a delay, like a store busy with fsyncs.
type slowStore struct {
	*memStore
	delay time.Duration
}

func (s *slowStore) AppendAsync(topic string, data []byte, key string, done func(Appended, error)) {
	time.AfterFunc(s.delay, func() { s.memStore.AppendAsync(topic, data, key, done) })
}

// Shutdown answers the publishes it has taken before it closes with 1001.
func TestShutdownAnswersPendingPublishes(t *testing.T) {
	st := &slowStore{memStore: newMemStore(), delay: 200 * time.Millisecond}
	srv, err := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, st)
	if err != nil {
		t.Fatal(err)
	}
	s, c := connect(t, srv)
	s.HandleFrame([]byte(`{"op":"pub","id":1,"topic":"t","data":1}` + "\n" + `{"op":"pub","id":2,"topic":"t","data":2}`))
	if err := srv.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	s.HandleFrame([]byte(`{"op":"pub","id":3,"topic":"t","data":3}`)) // refused: draining
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed != 1001 {
		t.Fatalf("closed with %d, want 1001", c.closed)
	}
	oks := 0
	for _, ev := range c.events {
		if ev["op"] == "ok" {
			oks++
		}
	}
	if oks != 2 {
		t.Fatalf("%d oks before the close, want 2: %v", oks, c.events)
	}
	if info, _, _ := st.Topic("t"); info.Head != 2 {
		t.Fatalf("head %d, want 2", info.Head)
	}
}

// reset starts topic over in a new epoch, as a cluster failover does.
func (m *memStore) reset(topic string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.topics, topic)
	m.topicLocked(topic)
}

// A live subscription does not take a new epoch's records as the sequel
// of its own: it ends with unsubbed epoch_mismatch.
func TestEpochChangeEndsSubscriptions(t *testing.T) {
	srv, st := newTestServer(t, nil)
	publishN(t, srv, "t", 3)
	s, c := connect(t, srv)
	s.HandleFrame([]byte(`{"op":"sub","id":1,"topic":"t","from":1}`))
	c.wait(t, "old epoch", func(evs []map[string]any) bool { return len(msgs(evs, "t")) == 3 })
	st.reset("t")
	publishN(t, srv, "t", 2)
	evs := c.wait(t, "unsubbed", func(evs []map[string]any) bool {
		for _, ev := range evs {
			if ev["op"] == "unsubbed" && ev["code"] == "epoch_mismatch" {
				return true
			}
		}
		return false
	})
	if got := msgs(evs, "t"); len(got) != 3 {
		t.Fatalf("messages %v: the new epoch's records reached the old subscription", got)
	}
	// A lagging subscription finds out on its next log read.
	s2, c2 := connect(t, srv)
	s2.HandleFrame([]byte(`{"op":"sub","id":1,"topic":"t","from":1}`))
	c2.wait(t, "new epoch", func(evs []map[string]any) bool { return len(msgs(evs, "t")) == 2 })
}

// An ack from a subscription of an older epoch does not land in the new
// history.
func TestAckAfterResetIsRefused(t *testing.T) {
	srv, st := newTestServer(t, nil)
	publishN(t, srv, "jobs", 5)
	s, c := connect(t, srv)
	s.HandleFrame([]byte(`{"op":"sub","id":1,"topic":"jobs","consumer":"w","from":"earliest"}`))
	c.wait(t, "messages", func(evs []map[string]any) bool { return len(msgs(evs, "jobs")) == 5 })
	st.reset("jobs")
	publishN(t, srv, "jobs", 5) // the new epoch reaches head 5 too
	s.HandleFrame([]byte(`{"op":"ack","id":2,"topic":"jobs","consumer":"w","offset":5}`))
	if r := reply(t, c, 2); r["code"] != "epoch_mismatch" {
		t.Fatalf("ack after reset: %v, want epoch_mismatch", r)
	}
	if _, ok, _ := st.Consumer("w", "jobs"); ok {
		t.Fatal("the ack of the old epoch was stored")
	}
}
