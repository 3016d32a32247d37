package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/brokerd/brokerd/store"
	"github.com/brokerd/brokerd/subproto"
)

// publishN publishes n messages to topic through c, data {"i":k} for the
// k-th message of the topic, and waits for every ok.
func publishN(t testing.TB, c *client, topic string, first, n int) {
	t.Helper()
	var ids []uint64
	for k := first; k < first+n; k++ {
		ids = append(ids, c.cmd(map[string]any{"op": "pub", "topic": topic, "data": map[string]int{"i": k}}))
	}
	for _, id := range ids {
		if r := c.reply(id); r.Op != "ok" {
			t.Fatalf("pub: %s", r)
		}
	}
}

func TestSubFrom(t *testing.T) {
	ts := startServer(t)
	cases := []struct {
		name     string
		from     any
		wantFrom uint64
	}{
		{"default", nil, 11},
		{"latest", "latest", 11},
		{"earliest", "earliest", 1},
		{"offset 1", 1, 1},
		{"offset 7", 7, 7},
		{"offset head", 10, 10},
		{"offset head+1", 11, 11},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			topic := fmt.Sprintf("hist.%d", i)
			p := dial(t, ts)
			publishN(t, p, topic, 1, 10)
			s := dial(t, ts)
			extra := map[string]any{}
			if c.from != nil {
				extra["from"] = c.from
			}
			ok := s.sub(topic, extra)
			if ok.num("from") != c.wantFrom || ok.num("head") != 10 || ok.has("missed") {
				t.Fatalf("ok %s: want from %d, head 10", ok, c.wantFrom)
			}
			// Replay, then the live message published after the ok.
			off := p.pub(topic, `"live"`)
			ms := s.waitMsgs(topic, int(off-c.wantFrom+1))
			checkOffsets(t, "sub", ms, c.wantFrom, off)
			for _, m := range ms[:len(ms)-1] {
				if want := fmt.Sprintf(`{"i":%d}`, m.num("offset")); string(m.data()) != want {
					t.Errorf("msg %d data %s, want %s", m.num("offset"), m.data(), want)
				}
			}
			s.quiet(50*time.Millisecond, "extra msg", func(e event) bool { return e.Op == "msg" && e.num("offset") > off })
		})
	}
}

// trimmedTopic publishes 10 messages to topic and trims it to the last
// keep, so that earliest is 11-keep and head 10.
func trimmedTopic(t *testing.T, ts *testServer, topic string, keep int64) {
	t.Helper()
	p := dial(t, ts)
	publishN(t, p, topic, 1, 10)
	p.close()
	if err := ts.Store.SetRetention(topic, store.Retention{MaxMessages: keep}); err != nil {
		t.Fatal(err)
	}
	if err := ts.Store.RunRetention(); err != nil {
		t.Fatal(err)
	}
	if info := ts.topicInfo(topic); info.Earliest != uint64(11-keep) || info.Head != 10 {
		t.Fatalf("after trimming: %+v, want earliest %d head 10", info, 11-keep)
	}
}

func TestSubOutOfRange(t *testing.T) {
	ts := startServer(t)
	trimmedTopic(t, ts, "trim", 4) // earliest 7, head 10
	epoch := ts.topicInfo("trim").Epoch

	errCases := []struct {
		name  string
		extra map[string]any
		code  subproto.Code
	}{
		{"older than earliest", map[string]any{"from": 3}, subproto.CodeOffsetOutOfRange},
		{"just before earliest", map[string]any{"from": 6}, subproto.CodeOffsetOutOfRange},
		{"beyond head+1", map[string]any{"from": 12}, subproto.CodeOffsetOutOfRange},
		{"far beyond head", map[string]any{"from": subproto.MaxInteger}, subproto.CodeOffsetOutOfRange},
		{"wrong epoch", map[string]any{"from": 8, "epoch": "not-the-epoch"}, subproto.CodeEpochMismatch},
		{"wrong epoch, from earliest", map[string]any{"from": "earliest", "epoch": "x"}, subproto.CodeEpochMismatch},
		{"wrong epoch, if_gone", map[string]any{"from": 1, "epoch": "x", "if_gone": "earliest"}, subproto.CodeEpochMismatch},
		{"beyond head+1 with if_gone", map[string]any{"from": 12, "if_gone": "earliest"}, subproto.CodeOffsetOutOfRange},
	}
	for _, c := range errCases {
		t.Run(c.name, func(t *testing.T) {
			s := dial(t, ts)
			f := map[string]any{"op": "sub", "topic": "trim"}
			for k, v := range c.extra {
				f[k] = v
			}
			e := s.mustErr(f, c.code)
			if e.num("earliest") != 7 || e.num("latest") != 10 || !e.has("earliest") || !e.has("latest") {
				t.Errorf("err %s: want earliest 7, latest 10", e)
			}
			if c.code == subproto.CodeEpochMismatch && e.str("epoch") != epoch {
				t.Errorf("err %s: want the current epoch %q", e, epoch)
			}
			// A refused sub leaves no subscription behind.
			s.mustErr(map[string]any{"op": "unsub", "topic": "trim"}, subproto.CodeNotSubscribed)
		})
	}

	okCases := []struct {
		name     string
		extra    map[string]any
		wantFrom uint64
		missed   []uint64
	}{
		{"earliest", map[string]any{"from": "earliest"}, 7, nil},
		{"at earliest", map[string]any{"from": 7}, 7, nil},
		{"head+1", map[string]any{"from": 11}, 11, nil},
		{"right epoch", map[string]any{"from": 8, "epoch": epoch}, 8, nil},
		{"if_gone earliest", map[string]any{"from": 3, "if_gone": "earliest"}, 7, []uint64{3, 6}},
		{"if_gone earliest from 1", map[string]any{"from": 1, "if_gone": "earliest", "epoch": epoch}, 7, []uint64{1, 6}},
		{"if_gone without a hole", map[string]any{"from": 9, "if_gone": "earliest"}, 9, nil},
	}
	for _, c := range okCases {
		t.Run(c.name, func(t *testing.T) {
			s := dial(t, ts)
			ok := s.sub("trim", c.extra)
			if ok.num("from") != c.wantFrom || ok.num("head") != 10 || ok.str("epoch") != epoch {
				t.Fatalf("ok %s: want from %d, head 10, epoch %s", ok, c.wantFrom, epoch)
			}
			if c.missed == nil {
				if ok.has("missed") {
					t.Errorf("ok %s has missed, want none", ok)
				}
			} else {
				m, _ := ok.M["missed"].([]any)
				if len(m) != 2 || fmt.Sprint(m[0]) != fmt.Sprint(c.missed[0]) || fmt.Sprint(m[1]) != fmt.Sprint(c.missed[1]) {
					t.Errorf("ok %s: want missed %v", ok, c.missed)
				}
			}
			if c.wantFrom <= 10 {
				checkOffsets(t, "replay", s.waitMsgs("trim", int(11-c.wantFrom)), c.wantFrom, 10)
			}
			s.quiet(30*time.Millisecond, "msg", func(e event) bool { return e.Op == "msg" && e.num("offset") > 10 })
		})
	}
}
