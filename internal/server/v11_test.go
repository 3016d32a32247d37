package server_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/brokerd/brokerd/store"
	"github.com/brokerd/brokerd/subproto"
)

// Tests of the protocol v1.1 additions to sub, ack and the HTTP history
// (last, since, ack with epoch, features in welcome).

// withClock stamps records with the time clock holds (ms).
func withClock(clock *atomic.Int64) func(*serverConfig) {
	return func(c *serverConfig) {
		c.Store.Now = func() time.Time { return time.UnixMilli(clock.Load()) }
	}
}

func TestWelcomeFeatures(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	evs := c.waitFor("welcome", func(evs []event) bool { return len(evs) > 0 })
	w := evs[0]
	if w.Op != "welcome" {
		t.Fatalf("first event %s, want welcome", w)
	}
	got, ok := w.M["features"].([]any)
	if !ok {
		t.Fatalf("welcome %s has no features array", w)
	}
	want := map[string]bool{subproto.FeatureLast: true, subproto.FeatureSince: true, subproto.FeaturePatternReplay: true, subproto.FeatureAckEpoch: true, subproto.FeaturePresence: true}
	for _, f := range got {
		if !want[f.(string)] {
			t.Errorf("welcome lists feature %v, which is not built", f)
		}
		delete(want, f.(string))
	}
	if len(want) > 0 {
		t.Errorf("welcome %s misses features %v", w, want)
	}
}

func TestSubLast(t *testing.T) {
	ts := startServer(t)
	p := dial(t, ts)
	publishN(t, p, "room", 1, 10)
	trimmedTopic(t, ts, "trim", 4) // earliest 7, head 10
	cases := []struct {
		topic    string
		last     int
		wantFrom uint64
	}{
		// Each case publishes one more message.
		{"room", 1, 10},
		{"room", 3, 9},
		{"room", 12, 1},
		{"room", 10000, 1},
		{"trim", 2, 9},
		{"trim", 5, 7},
		{"trim", 6, 7}, // fewer retained: from earliest, no missed
		{"empty.room", 50, 1},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s last %d", c.topic, c.last), func(t *testing.T) {
			s := dial(t, ts)
			ok := s.sub(c.topic, map[string]any{"last": c.last})
			if ok.num("from") != c.wantFrom || ok.has("missed") {
				t.Fatalf("ok %s: want from %d and no missed", ok, c.wantFrom)
			}
			// Replay up to the head, then live (each case publishes one
			// message after its ok).
			off := p.pub(c.topic, `"live"`)
			if off != ok.num("head")+1 {
				t.Fatalf("published at %d, head was %d", off, ok.num("head"))
			}
			checkOffsets(t, "last", s.waitMsgs(c.topic, int(off-c.wantFrom+1)), c.wantFrom, off)
		})
	}
	s := dial(t, ts)
	for _, f := range []map[string]any{
		{"last": 0}, {"last": 10001}, {"last": -1}, {"last": "5"},
		{"last": 5, "from": 1}, {"last": 5, "from": "earliest"}, {"last": 5, "since": 0},
	} {
		f["op"], f["topic"] = "sub", "room"
		s.mustErr(f, subproto.CodeBadRequest)
	}
	s.mustErr(map[string]any{"op": "sub", "topic": "room.*", "last": 5}, subproto.CodeBadRequest)
	s.mustErr(map[string]any{"op": "sub", "topic": "room", "last": 5, "epoch": "old"}, subproto.CodeEpochMismatch)
	s.mustErr(map[string]any{"op": "unsub", "topic": "room"}, subproto.CodeNotSubscribed)
}

// timedTopic publishes ten messages to topic at times 1000, 2000, ...,
// 10000 ms of clock.
func timedTopic(t *testing.T, ts *testServer, clock *atomic.Int64, topic string) {
	t.Helper()
	p := dial(t, ts)
	for k := 1; k <= 10; k++ {
		clock.Store(int64(1000 * k))
		publishN(t, p, topic, k, 1)
	}
	p.close()
}

func TestSubSince(t *testing.T) {
	var clock atomic.Int64
	ts := startServer(t, withClock(&clock))
	timedTopic(t, ts, &clock, "t")
	timedTopic(t, ts, &clock, "trim")
	if err := ts.Store.SetRetention("trim", store.Retention{MaxMessages: 4, MaxAge: -1}); err != nil {
		t.Fatal(err)
	}
	if err := ts.Store.RunRetention(); err != nil {
		t.Fatal(err)
	}
	if info := ts.topicInfo("trim"); info.Earliest != 7 {
		t.Fatalf("trim: earliest %d, want 7", info.Earliest)
	}
	clock.Store(20000)
	p := dial(t, ts)
	cases := []struct {
		name     string
		topic    string
		extra    map[string]any
		wantFrom uint64
		missed   []uint64
	}{
		{"before all", "t", map[string]any{"since": 0}, 1, nil},
		{"exact", "t", map[string]any{"since": 3000}, 3, nil},
		{"between", "t", map[string]any{"since": 3001}, 4, nil},
		{"last record", "t", map[string]any{"since": 10000}, 10, nil},
		{"after all", "t", map[string]any{"since": 10001}, 11, nil},
		{"at the live ones", "t", map[string]any{"since": 20000}, 11, nil},
		{"trimmed, at earliest", "trim", map[string]any{"since": 7000}, 7, nil},
		{"trimmed, after earliest", "trim", map[string]any{"since": 8500}, 9, nil},
		{"trimmed, older, if_gone", "trim", map[string]any{"since": 100, "if_gone": "earliest"}, 7, []uint64{1, 6}},
		{"new topic", "t.new", map[string]any{"since": 5}, 1, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := dial(t, ts)
			ok := s.sub(c.topic, c.extra)
			if ok.num("from") != c.wantFrom {
				t.Fatalf("ok %s: want from %d", ok, c.wantFrom)
			}
			if c.missed == nil && ok.has("missed") {
				t.Errorf("ok %s: want no missed", ok)
			}
			if c.missed != nil {
				m, _ := ok.M["missed"].([]any)
				if len(m) != 2 || fmt.Sprint(m[0]) != fmt.Sprint(c.missed[0]) || fmt.Sprint(m[1]) != fmt.Sprint(c.missed[1]) {
					t.Errorf("ok %s: want missed %v", ok, c.missed)
				}
			}
			// Each case publishes one message at time 20000 after its ok.
			off := p.pub(c.topic, `"live"`)
			ms := s.waitMsgs(c.topic, int(off-c.wantFrom+1))
			checkOffsets(t, "since", ms, c.wantFrom, off)
			for _, m := range ms {
				want := uint64(20000)
				if o := m.num("offset"); o <= 10 && c.topic != "t.new" {
					want = 1000 * o
				}
				if ts, o := m.num("ts"), m.num("offset"); ts != want {
					t.Errorf("msg %d has ts %d", o, ts)
				}
			}
		})
	}
	s := dial(t, ts)
	e := s.mustErr(map[string]any{"op": "sub", "topic": "trim", "since": 6999}, subproto.CodeOffsetOutOfRange)
	if e.num("earliest") != 7 || e.num("latest") != 13 || e.str("epoch") == "" {
		t.Errorf("err %s: want earliest 7, latest 13 and the epoch", e)
	}
	for _, f := range []map[string]any{
		{"since": -1}, {"since": 1.5}, {"since": "2024-01-01"}, {"since": subproto.MaxInteger + 1},
		{"since": 5, "from": 1}, {"since": 5, "from": "latest"},
	} {
		f["op"], f["topic"] = "sub", "t"
		s.mustErr(f, subproto.CodeBadRequest)
	}
	s.mustErr(map[string]any{"op": "sub", "topic": "t", "since": 0, "epoch": "old"}, subproto.CodeEpochMismatch)
}

func TestHistoryLastSince(t *testing.T) {
	var clock atomic.Int64
	ts := startServer(t, withClock(&clock))
	timedTopic(t, ts, &clock, "h")
	timedTopic(t, ts, &clock, "trim")
	if err := ts.Store.SetRetention("trim", store.Retention{MaxMessages: 4, MaxAge: -1}); err != nil {
		t.Fatal(err)
	}
	if err := ts.Store.RunRetention(); err != nil {
		t.Fatal(err)
	}
	first := func(m map[string]any) float64 {
		list, _ := m["messages"].([]any)
		if len(list) == 0 {
			return 0
		}
		return list[0].(map[string]any)["offset"].(float64)
	}
	ok := []struct {
		path     string
		first    float64 // 0: no messages
		n        int
		wantNext float64
	}{
		{"/v1/topics/h/messages?last=3", 8, 3, 11},
		{"/v1/topics/h/messages?last=10000", 1, 10, 11},
		{"/v1/topics/h/messages?last=3&limit=2", 8, 2, 10},
		{"/v1/topics/h/messages?since=0", 1, 10, 11},
		{"/v1/topics/h/messages?since=4000", 4, 7, 11},
		{"/v1/topics/h/messages?since=4001&limit=1", 5, 1, 6},
		{"/v1/topics/h/messages?since=99999", 0, 0, 11},
		{"/v1/topics/trim/messages?last=9", 7, 4, 11},
		{"/v1/topics/trim/messages?since=7000", 7, 4, 11},
	}
	for _, c := range ok {
		code, m, body := getJSON(t, ts, c.path, nil)
		list, _ := m["messages"].([]any)
		if code != 200 || first(m) != c.first || len(list) != c.n || m["next"] != c.wantNext {
			t.Errorf("GET %s: %d %s; want first %v, %d messages, next %v", c.path, code, body, c.first, c.n, c.wantNext)
		}
	}
	bad := []struct {
		path string
		code int
		err  string
	}{
		{"/v1/topics/trim/messages?since=6999", 409, "offset_out_of_range"},
		{"/v1/topics/h/messages?last=0", 400, "bad_request"},
		{"/v1/topics/h/messages?last=10001", 400, "bad_request"},
		{"/v1/topics/h/messages?last=x", 400, "bad_request"},
		{"/v1/topics/h/messages?since=-1", 400, "bad_request"},
		{"/v1/topics/h/messages?since=", 400, "bad_request"},
		{"/v1/topics/h/messages?since=1&last=1", 400, "bad_request"},
		{"/v1/topics/h/messages?from=1&last=1", 400, "bad_request"},
		{"/v1/topics/h/messages?since=1&epoch=old", 409, "epoch_mismatch"},
	}
	for _, c := range bad {
		code, m, body := getJSON(t, ts, c.path, nil)
		if code != c.code || m["code"] != c.err {
			t.Errorf("GET %s: %d %s; want %d %s", c.path, code, body, c.code, c.err)
		}
	}
}

func TestAckEpoch(t *testing.T) {
	ts := startServer(t)
	p := dial(t, ts)
	publishN(t, p, "jobs", 1, 5)
	c := dial(t, ts)
	ok := c.sub("jobs", map[string]any{"consumer": "w", "from": "earliest"})
	epoch := ok.str("epoch")
	c.waitMsgs("jobs", 5)
	// An ack of another epoch stores nothing.
	e := c.mustErr(map[string]any{"op": "ack", "topic": "jobs", "consumer": "w", "offset": 3, "epoch": "old"}, subproto.CodeEpochMismatch)
	if e.str("epoch") != epoch || e.num("latest") != 5 {
		t.Errorf("err %s: want the current epoch and latest 5", e)
	}
	if _, has, err := ts.Store.Consumer("w", "jobs"); err != nil || has {
		t.Fatalf("after a refused ack the consumer has a position (%v, %v)", has, err)
	}
	c.mustOK(map[string]any{"op": "ack", "topic": "jobs", "consumer": "w", "offset": 3, "epoch": epoch})
	if co, has, err := ts.Store.Consumer("w", "jobs"); err != nil || !has || co.Offset != 3 || co.Epoch != epoch {
		t.Fatalf("after the ack: %+v %v %v, want offset 3 of %s", co, has, err, epoch)
	}
	c.mustErr(map[string]any{"op": "ack", "topic": "jobs", "consumer": "w", "offset": 5, "epoch": "old"}, subproto.CodeEpochMismatch)
	if co, _, _ := ts.Store.Consumer("w", "jobs"); co.Offset != 3 {
		t.Fatalf("a refused ack moved the consumer to %d", co.Offset)
	}
	// Resumes after what was acked.
	c.close()
	d := dial(t, ts)
	if ok := d.sub("jobs", map[string]any{"consumer": "w", "epoch": epoch}); ok.num("from") != 4 {
		t.Fatalf("resume ok %s, want from 4", ok)
	}
	d.mustErr(map[string]any{"op": "ack", "topic": "jobs", "consumer": "w", "offset": 4, "epoch": ""}, subproto.CodeBadRequest)
}
