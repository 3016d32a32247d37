package server_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/server"
	"github.com/brokerd/brokerd/store"
	"github.com/brokerd/brokerd/subproto"
)

// Tests of pattern subscriptions with replay and resume (protocol v1.1).

// patternView is what a pattern subscription delivered, per topic: its
// topic events and msgs in arrival order.
type patternView struct {
	topics map[string][]event // topic events
	msgs   map[string][]event
	order  []string // "topic <t>" / "msg <t>" in arrival order
}

func viewPattern(evs []event, pattern string) patternView {
	v := patternView{topics: map[string][]event{}, msgs: map[string][]event{}}
	for _, e := range evs {
		if e.str("sub") != pattern {
			continue
		}
		switch e.Op {
		case "topic":
			v.topics[e.str("topic")] = append(v.topics[e.str("topic")], e)
			v.order = append(v.order, "topic "+e.str("topic"))
		case "msg":
			v.msgs[e.str("topic")] = append(v.msgs[e.str("topic")], e)
			v.order = append(v.order, "msg "+e.str("topic"))
		}
	}
	return v
}

// check verifies that each topic's first msg follows a topic event.
func (v patternView) check(t *testing.T) {
	t.Helper()
	announced := map[string]bool{}
	for _, o := range v.order {
		kind, topic, _ := strings.Cut(o, " ")
		if kind == "topic" {
			announced[topic] = true
		} else if !announced[topic] {
			t.Errorf("msg of %s before any topic event", topic)
			announced[topic] = true
		}
	}
}

// count returns how many msgs arrived via pattern.
func patternMsgs(c *client, pattern string) int {
	n := 0
	for _, e := range c.snapshot() {
		if e.Op == "msg" && e.str("sub") == pattern {
			n++
		}
	}
	return n
}

func waitPatternMsgs(t *testing.T, c *client, pattern string, n int) patternView {
	t.Helper()
	c.waitFor(fmt.Sprintf("%d msgs via %s", n, pattern), func([]event) bool { return patternMsgs(c, pattern) >= n })
	v := viewPattern(c.snapshot(), pattern)
	v.check(t)
	return v
}

func TestPatternSince(t *testing.T) {
	var clock atomic.Int64
	ts := startServer(t, withClock(&clock))
	p := dial(t, ts)
	for k := 1; k <= 10; k++ {
		clock.Store(int64(1000 * k))
		publishN(t, p, "chat.a", k, 1)
		if k <= 5 {
			publishN(t, p, "chat.b.x", k, 1)
		}
		publishN(t, p, "other.a", k, 1)
	}
	clock.Store(20000)
	s := dial(t, ts)
	ok := s.sub("chat.>", map[string]any{"since": 4000})
	if ok.str("topic") != "chat.>" {
		t.Fatalf("ok %s", ok)
	}
	v := waitPatternMsgs(t, s, "chat.>", 7+2)
	for topic, from := range map[string]uint64{"chat.a": 4, "chat.b.x": 4} {
		te := v.topics[topic]
		if len(te) != 1 || te[0].num("from") != from || te[0].str("epoch") != ts.topicInfo(topic).Epoch || te[0].has("code") {
			t.Errorf("%s: topic events %v, want one from %d", topic, te, from)
		}
	}
	checkOffsets(t, "chat.a", v.msgs["chat.a"], 4, 10)
	checkOffsets(t, "chat.b.x", v.msgs["chat.b.x"], 4, 5)
	// Then live, and a topic first written after the ok from offset 1.
	p.pub("chat.a", `11`)
	publishN(t, p, "chat.c", 1, 3)
	p.pub("other.b", `1`)
	v = waitPatternMsgs(t, s, "chat.>", 7+2+1+3)
	checkOffsets(t, "chat.a", v.msgs["chat.a"], 4, 11)
	checkOffsets(t, "chat.c", v.msgs["chat.c"], 1, 3)
	if te := v.topics["chat.c"]; len(te) != 1 || te[0].num("from") != 1 {
		t.Errorf("chat.c: topic events %v, want one from 1", te)
	}
	if len(v.topics) != 3 {
		t.Errorf("topic events for %d topics, want 3: %v", len(v.topics), v.topics)
	}
	s.quiet(50*time.Millisecond, "a msg of another topic", func(e event) bool { return e.Op == "msg" && strings.HasPrefix(e.str("topic"), "other") })

	// A live-only pattern starts each topic at what comes after the ok.
	l := dial(t, ts)
	l.sub("chat.*", nil)
	p.pub("chat.a", `12`)
	v = waitPatternMsgs(t, l, "chat.*", 1)
	if te := v.topics["chat.a"]; len(te) != 1 || te[0].num("from") != 12 {
		t.Errorf("live-only: topic events %v, want chat.a from 12", te)
	}
}

func TestPatternPositions(t *testing.T) {
	ts := startServer(t)
	p := dial(t, ts)
	publishN(t, p, "pos.a", 1, 10)
	publishN(t, p, "pos.b", 1, 10)
	publishN(t, p, "pos.c", 1, 3)
	trimmedTopic(t, ts, "pos.t", 4) // earliest 7, head 10
	epochA, epochT := ts.topicInfo("pos.a").Epoch, ts.topicInfo("pos.t").Epoch

	s := dial(t, ts)
	s.sub("pos.*", map[string]any{"positions": map[string]any{
		"pos.a": map[string]any{"from": 8, "epoch": epochA},
		"pos.b": map[string]any{"from": 2, "epoch": "old"},
		"pos.t": map[string]any{"from": 3, "epoch": epochT},
		"pos.c": map[string]any{"from": 4}, // caught up
		"pos.n": map[string]any{"from": 1}, // no log yet
	}})
	v := waitPatternMsgs(t, s, "pos.*", 3)
	checkOffsets(t, "pos.a", v.msgs["pos.a"], 8, 10)
	s.waitFor("two coded topic events", func(evs []event) bool {
		return len(viewPattern(evs, "pos.*").topics["pos.b"]) == 1 && len(viewPattern(evs, "pos.*").topics["pos.t"]) == 1
	})
	v = viewPattern(s.snapshot(), "pos.*")
	if e := v.topics["pos.b"][0]; e.str("code") != "epoch_mismatch" || e.str("epoch") != ts.topicInfo("pos.b").Epoch || e.num("earliest") != 1 || e.num("latest") != 10 {
		t.Errorf("pos.b: %s, want epoch_mismatch with the current epoch and range", e)
	}
	if e := v.topics["pos.t"][0]; e.str("code") != "offset_out_of_range" || e.num("earliest") != 7 || e.num("latest") != 10 {
		t.Errorf("pos.t: %s, want offset_out_of_range 7-10", e)
	}
	// Live: the refused topics stay silent, the others go on.
	for _, topic := range []string{"pos.a", "pos.b", "pos.c", "pos.t", "pos.n"} {
		p.pub(topic, `"live"`)
	}
	v = waitPatternMsgs(t, s, "pos.*", 3+3)
	checkOffsets(t, "pos.a", v.msgs["pos.a"], 8, 11)
	checkOffsets(t, "pos.c", v.msgs["pos.c"], 4, 4)
	checkOffsets(t, "pos.n", v.msgs["pos.n"], 1, 1)
	if len(v.msgs["pos.b"])+len(v.msgs["pos.t"]) != 0 {
		t.Errorf("refused topics delivered: %v %v", v.msgs["pos.b"], v.msgs["pos.t"])
	}
	if e := v.topics["pos.c"]; len(e) != 1 || e[0].num("from") != 4 {
		t.Errorf("pos.c topic events %v, want from 4", e)
	}

	// With if_gone the trimmed topic starts at earliest and says so.
	g := dial(t, ts)
	g.sub("pos.*", map[string]any{"if_gone": "earliest", "positions": map[string]any{"pos.t": map[string]any{"from": 3}}})
	v = waitPatternMsgs(t, g, "pos.*", 5)
	if e := v.topics["pos.t"]; len(e) != 1 || e[0].num("from") != 7 || fmt.Sprint(e[0].M["missed"]) != "[3 6]" {
		t.Errorf("pos.t with if_gone: %v, want from 7 and missed [3 6]", e)
	}
	checkOffsets(t, "pos.t", v.msgs["pos.t"], 7, 11)

	// Positions must match the pattern.
	g.mustErr(map[string]any{"op": "sub", "topic": "pos.x.*", "positions": map[string]any{"pos.a": map[string]any{"from": 1}}}, subproto.CodeBadRequest)
}

func TestPatternTooManyTopics(t *testing.T) {
	ts := startServer(t, func(sc *serverConfig) { sc.Broker.MaxPatternTopics = 3 })
	p := dial(t, ts)
	for i := range 4 {
		publishN(t, p, fmt.Sprintf("many.%d", i), 1, 2)
	}
	s := dial(t, ts)
	s.mustErr(map[string]any{"op": "sub", "topic": "many.*", "since": 0}, subproto.CodeTooManyTopics)
	pos := map[string]any{}
	for i := range 4 {
		pos[fmt.Sprintf("many.%d", i)] = map[string]any{"from": 1}
	}
	s.mustErr(map[string]any{"op": "sub", "topic": "many.*", "positions": pos}, subproto.CodeTooManyTopics)
	// Since after every record: nothing to replay, not bounded.
	s.sub("many.*", map[string]any{"since": time.Now().Add(time.Hour).UnixMilli()})
	s.mustOK(map[string]any{"op": "unsub", "topic": "many.*"})
	// Three topics are fine; live-only is not bounded.
	delete(pos, "many.3")
	s.sub("many.*", map[string]any{"positions": pos})
	waitPatternMsgs(t, s, "many.*", 6)
	l := dial(t, ts)
	l.sub("many.>", nil)
}

// A history reset under a live pattern subscription: a topic event with
// epoch_mismatch, then the new epoch from its first offset.
func TestPatternHistoryReset(t *testing.T) {
	ts := startServer(t)
	p := dial(t, ts)
	publishN(t, p, "reset.a", 1, 3)
	s := dial(t, ts)
	s.sub("reset.*", map[string]any{"since": 0})
	waitPatternMsgs(t, s, "reset.*", 3)
	old := ts.topicInfo("reset.a").Epoch
	if _, err := ts.Store.ResetTopic("reset.a"); err != nil {
		t.Fatal(err)
	}
	publishN(t, p, "reset.a", 1, 2)
	v := waitPatternMsgs(t, s, "reset.*", 5)
	cur := ts.topicInfo("reset.a").Epoch
	te := v.topics["reset.a"]
	if len(te) != 3 || te[0].str("epoch") != old || te[1].str("code") != "epoch_mismatch" || te[1].str("epoch") != cur ||
		te[2].str("epoch") != cur || te[2].num("from") != 1 || te[2].has("code") {
		t.Fatalf("topic events %v; want the old epoch's, epoch_mismatch, then the new epoch from 1", te)
	}
	ms := v.msgs["reset.a"]
	checkOffsets(t, "old epoch", ms[:3], 1, 3)
	checkOffsets(t, "new epoch", ms[3:], 1, 2)
}

// restartableServer is a whole brokerd on the store directory dir, which
// can be stopped and started again on the same directory.
type restartableServer struct {
	*testServer
	stop func()
}

func startServerOn(t *testing.T, dir string) *restartableServer {
	t.Helper()
	st, err := store.Open(dir, &store.Options{Logger: discard, RetentionInterval: -1, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{Node: "node-test", Logger: discard}, st)
	if err != nil {
		t.Fatal(err)
	}
	edge, err := server.New(server.Config{Logger: discard, ConnRatePerIP: -1}, b)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(edge.Handler())
	host := strings.TrimPrefix(hs.URL, "http://")
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Shutdown(ctx)
		hs.Close()
		if err := st.Close(); err != nil {
			t.Errorf("store.Close: %v", err)
		}
	}
	t.Cleanup(stop)
	return &restartableServer{&testServer{t: t, Store: st, Broker: b, Edge: edge, HTTP: hs, URL: "ws://" + host + "/ws", Host: host}, stop}
}

// TestPatternResumeAcrossRestart: a client keeps each topic's position
// from the pattern's topic events and msgs, the broker restarts, and the
// client resumes with positions: every topic continues with no gap and
// no duplicate, including what was published while it was away and
// topics it had not seen yet (through since).
func TestPatternResumeAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	ts := startServerOn(t, dir)
	p := dial(t, ts.testServer)
	s := dial(t, ts.testServer)
	subscribed := time.Now().UnixMilli()
	s.sub("feed.>", nil)
	const topics = 20
	for i := range topics {
		publishN(t, p, fmt.Sprintf("feed.%d", i), 1, 5)
	}
	v := waitPatternMsgs(t, s, "feed.>", topics*5)
	positions := map[string]any{}
	for topic, ms := range v.msgs {
		epoch := v.topics[topic][0].str("epoch")
		positions[topic] = map[string]any{"from": ms[len(ms)-1].num("offset") + 1, "epoch": epoch}
	}
	s.close()
	// While away: more on the same topics, and new topics.
	for i := range topics {
		publishN(t, p, fmt.Sprintf("feed.%d", i), 6, i%3)
	}
	publishN(t, p, "feed.new.1", 1, 4)
	p.close()
	ts.stop()

	ts = startServerOn(t, dir)
	r := dial(t, ts.testServer)
	r.sub("feed.>", map[string]any{"positions": positions, "since": subscribed})
	want := 0
	for i := range topics {
		want += i % 3
	}
	v = waitPatternMsgs(t, r, "feed.>", want+4)
	for i := range topics {
		topic := fmt.Sprintf("feed.%d", i)
		if n := i % 3; n > 0 {
			checkOffsets(t, topic, v.msgs[topic], 6, uint64(5+n))
		} else if len(v.msgs[topic]) > 0 {
			t.Errorf("%s: %d msgs, want none", topic, len(v.msgs[topic]))
		}
	}
	checkOffsets(t, "feed.new.1", v.msgs["feed.new.1"], 1, 4)
	names := make([]string, 0, len(v.topics))
	for k := range v.topics {
		names = append(names, k)
	}
	sort.Strings(names)
	// Caught-up topics get their topic event only with their next msg.
	if len(v.topics) != topics*2/3+1 {
		t.Errorf("topic events for %v", names)
	}
	r.quiet(50*time.Millisecond, "more msgs", func(e event) bool { return e.Op == "msg" && patternMsgs(r, "feed.>") > want+4 })
}

// Publishes racing with a pattern sub with since, on a small queue so
// that topics keep falling back to the log: every topic is delivered from
// 1 to its head exactly once, in order.
func TestPatternSinceRacingPublishes(t *testing.T) {
	ts := startServer(t, func(sc *serverConfig) {
		sc.Broker.QueueMessages = 64
		sc.Broker.MinShare = 16
		sc.Broker.ReplayPage = 7
	})
	const topics, per = 8, 300
	done := make(chan struct{})
	for i := range topics {
		p := dial(t, ts)
		go func() {
			defer func() { done <- struct{}{} }()
			publishData(t, p, fmt.Sprintf("race.%d", i), 1, per, 10, func(k int) string { return fmt.Sprint(k) })
		}()
	}
	s := dial(t, ts, withRecvBuffer(4096))
	eventually(t, waitTimeout, "the first publishes", func() bool { return ts.head("race.0") > 20 })
	s.sub("race.*", map[string]any{"since": 0})
	for range topics {
		<-done
	}
	v := waitPatternMsgs(t, s, "race.*", topics*per)
	for i := range topics {
		topic := fmt.Sprintf("race.%d", i)
		checkOffsets(t, topic, v.msgs[topic], 1, per)
		if te := v.topics[topic]; len(te) != 1 || te[0].num("from") != 1 {
			t.Errorf("%s: topic events %v, want one from 1", topic, te)
		}
	}
}
