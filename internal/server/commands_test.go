package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

func TestSubOK(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)

	// A topic without a log: sub creates it, so the client learns the
	// epoch before the first message.
	ok := c.sub("orders.new", nil)
	epoch := ok.str("epoch")
	if ok.str("topic") != "orders.new" || epoch == "" || !ok.has("head") || ok.num("head") != 0 || ok.num("from") != 1 || ok.has("missed") {
		t.Fatalf("sub ok %s: want topic orders.new, an epoch, head 0, from 1, no missed", ok)
	}
	if info := ts.topicInfo("orders.new"); info.Epoch != epoch {
		t.Errorf("ok epoch %q, store epoch %q", epoch, info.Epoch)
	}
	for range 3 {
		c.pub("orders.new", `1`)
	}
	c.waitMsgs("orders.new", 3)

	// Default from is latest: head 3, from 4, same epoch.
	d := dial(t, ts)
	ok = d.sub("orders.new", nil)
	if ok.str("epoch") != epoch || ok.num("head") != 3 || ok.num("from") != 4 {
		t.Fatalf("second sub ok %s: want epoch %s, head 3, from 4", ok, epoch)
	}
	// Subscribing twice on one connection is refused.
	d.mustErr(map[string]any{"op": "sub", "topic": "orders.new"}, subproto.CodeAlreadySubscribed)
}

func TestPubOKIsDurable(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	for i := uint64(1); i <= 5; i++ {
		data := fmt.Sprintf(`{"n":%d}`, i)
		before := time.Now().UnixMilli()
		r := c.mustOK(map[string]any{"op": "pub", "topic": "audit", "data": json.RawMessage(data)})
		if r.str("topic") != "audit" || r.num("offset") != i || r.has("dup") {
			t.Fatalf("pub ok %s: want topic audit, offset %d, no dup", r, i)
		}
		// The ok comes only once the record is in the store.
		recs, err := ts.Store.Read("audit", i, 1, 0)
		if err != nil || len(recs) != 1 || recs[0].Offset != i || string(recs[0].Data) != data {
			t.Fatalf("after ok %d the store has %+v, %v", i, recs, err)
		}
		if recs[0].Time < before-1000 || recs[0].Time > time.Now().UnixMilli()+1000 {
			t.Errorf("record time %d is not the time of the append (%d)", recs[0].Time, before)
		}
	}
}

func TestMsgFieldsAndDataByteForByte(t *testing.T) {
	ts := startServer(t)
	sub := dial(t, ts)
	sub.sub("raw", nil)
	pub := dial(t, ts)
	values := []string{
		`{ "a" : [1, 2.50, -0e+3 ] ,"b":{}}`,
		"[1,\t2 ,\r3]",
		`"\u00e9\ud83d\ude00 \/ \\ \" \n \t \b \f \r"`,
		`"é😀 raw UTF-8 ☃"`,
		`"\u2028\u2029"`,
		`null`, `true`, `false`, `0`, `-0.0`, `1e400`, `123456789012345678901234567890`,
		`[]`, `{}`, `[[[[[[[[[[]]]]]]]]]]`,
		`{"dup":1,"dup":2}`,
		`"` + strings.Repeat("x", 70000) + `"`,
	}
	var offsets []uint64
	for _, v := range values {
		// Surrounding whitespace is not part of the value.
		before := time.Now().UnixMilli()
		id := pub.ids.Add(1)
		pub.send(fmt.Sprintf(`{"op":"pub","id":%d,"topic":"raw","data": `+"\t"+`%s `+"\r"+`}`, id, v))
		r := pub.reply(id)
		if r.Op != "ok" {
			t.Fatalf("pub %.40q: %s", v, r)
		}
		offsets = append(offsets, r.num("offset"))
		ms := sub.waitMsgs("raw", len(offsets))
		m := ms[len(ms)-1]
		if got := m.data(); !bytes.Equal(got, []byte(v)) {
			t.Errorf("live msg data %.60q, want %.60q", got, v)
		}
		if m.str("topic") != "raw" || m.num("offset") != r.num("offset") || m.has("sub") {
			t.Errorf("msg %.100s: want topic raw, offset %d, no sub", m, r.num("offset"))
		}
		if ts := int64(m.num("ts")); ts < before-1000 || ts > time.Now().UnixMilli()+1000 {
			t.Errorf("msg ts %d is not the time of the append (~%d)", ts, before)
		}
		// ts is the broker's append time: the stored record agrees.
		recs, _ := ts.Store.Read("raw", m.num("offset"), 1, 0)
		if len(recs) != 1 || recs[0].Time != int64(m.num("ts")) {
			t.Errorf("msg ts %d, stored time %+v", m.num("ts"), recs)
		}
	}
	// The replay path gives the same bytes as the live path.
	late := dial(t, ts)
	late.sub("raw", map[string]any{"from": 1})
	ms := late.waitMsgs("raw", len(values))
	checkOffsets(t, "replay", ms, 1, uint64(len(values)))
	for i, m := range ms {
		if got := m.data(); !bytes.Equal(got, []byte(values[i])) {
			t.Errorf("replayed msg %d data %.60q, want %.60q", i+1, got, values[i])
		}
	}
}

func TestPing(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	for _, id := range []uint64{1, 42, subproto.MaxInteger} {
		r := c.do(map[string]any{"op": "ping", "id": id})
		if r.Op != "pong" || r.id() != id || len(r.M) != 2 {
			t.Errorf("ping %d: got %s, want exactly {op:pong, id:%d}", id, r, id)
		}
	}
}

// The contract: a command without id that succeeds is answered by
// nothing. For ping the success reply is pong.
func TestPingWithoutIDIsSilent(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	c.send(`{"op":"ping"}`)
	if r := c.do(map[string]any{"op": "ping"}); r.Op != "pong" {
		t.Fatalf("got %s", r)
	}
	for _, e := range c.snapshot()[1:] {
		if !e.has("id") {
			t.Fatalf("a ping without id was answered: %s", e)
		}
	}
}

func TestUnsub(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	p := dial(t, ts)
	c.sub("news", nil)
	c.sub("sentinel", nil)
	p.pub("news", `1`)
	c.waitMsgs("news", 1)

	r := c.mustOK(map[string]any{"op": "unsub", "topic": "news"})
	if len(r.M) != 2 {
		t.Errorf("unsub ok %s: want {op:ok, id}", r)
	}
	for i := range 5 {
		p.pub("news", fmt.Sprint(i+2))
	}
	// The sentinel is published after every news message; once it
	// arrived, any news message would have arrived too.
	p.pub("sentinel", `"end"`)
	c.waitMsgs("sentinel", 1)
	all := c.snapshot()
	afterOK := false
	for _, e := range all {
		if isReply(e, r.id()) {
			afterOK = true
			continue
		}
		if afterOK && e.Op == "msg" && e.str("topic") == "news" {
			t.Errorf("msg after the unsub ok: %s", e)
		}
	}
	if got := msgs(all, "news"); len(got) != 1 {
		t.Errorf("got %d news msgs, want 1", len(got))
	}

	c.mustErr(map[string]any{"op": "unsub", "topic": "news"}, subproto.CodeNotSubscribed)
	c.mustErr(map[string]any{"op": "unsub", "topic": "never"}, subproto.CodeNotSubscribed)

	// Subscribing again works and replays what was missed.
	ok := c.sub("news", map[string]any{"from": 2})
	if ok.num("from") != 2 || ok.num("head") != 6 {
		t.Fatalf("re-sub ok %s: want from 2, head 6", ok)
	}
	ms := c.waitMsgs("news", 6)
	checkOffsets(t, "re-sub", ms, 1, 6)
}

func TestAckReplies(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	for range 3 {
		c.pub("jobs", `{}`)
	}
	r := c.mustOK(map[string]any{"op": "ack", "topic": "jobs", "consumer": "w1", "offset": 2})
	if len(r.M) != 2 {
		t.Errorf("ack ok %s: want {op:ok, id}", r)
	}
	co, ok, err := ts.Store.Consumer("w1", "jobs")
	if err != nil || !ok || co.Offset != 2 || co.Epoch != ts.topicInfo("jobs").Epoch {
		t.Errorf("stored consumer offset %+v %v %v, want offset 2 in the topic's epoch", co, ok, err)
	}
	e := c.mustErr(map[string]any{"op": "ack", "topic": "jobs", "consumer": "w1", "offset": 4}, subproto.CodeOffsetOutOfRange)
	if e.num("earliest") != 1 || e.num("latest") != 3 {
		t.Errorf("ack beyond head: %s, want earliest 1, latest 3", e)
	}
	c.mustErr(map[string]any{"op": "ack", "topic": "jobs", "consumer": "bad name", "offset": 1}, subproto.CodeBadRequest)
	c.mustErr(map[string]any{"op": "ack", "topic": "jobs.*", "consumer": "w1", "offset": 1}, subproto.CodeInvalidTopic)
}

func TestCommandsWithoutID(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)

	// Successes without id are silent. Pub replies come in commit order,
	// so an ok for the first pub would come before the second's.
	c.cmd(map[string]any{"op": "sub", "topic": "quiet", "id": noID})
	c.cmd(map[string]any{"op": "pub", "topic": "quiet", "data": 1, "id": noID})
	r := c.do(map[string]any{"op": "pub", "topic": "quiet", "data": 2})
	if r.Op != "ok" || r.num("offset") != 2 {
		t.Fatalf("pub: %s, want ok offset 2", r)
	}
	c.cmd(map[string]any{"op": "ack", "topic": "quiet", "consumer": "q", "offset": 1, "id": noID})
	c.cmd(map[string]any{"op": "unsub", "topic": "quiet", "id": noID})
	c.do(map[string]any{"op": "ack", "topic": "quiet", "consumer": "q", "offset": 2})
	c.do(map[string]any{"op": "ping"})
	for _, e := range c.snapshot() {
		if (e.Op == "ok" || e.Op == "err") && !e.has("id") {
			t.Errorf("reply to a command without id: %s", e)
		}
	}
	// The sub without id was in force: both messages arrived.
	checkOffsets(t, "sub without id", c.waitMsgs("quiet", 2), 1, 2)

	// Failures without id still get an err, without id.
	cases := []struct {
		raw  string
		code subproto.Code
	}{
		{`{"op":"sub","topic":"bad topic"}`, subproto.CodeInvalidTopic},
		{`{"op":"unsub","topic":"quiet"}`, subproto.CodeNotSubscribed},
		{`{"op":"frobnicate"}`, subproto.CodeUnknownOp},
		{`{"op":"pub","topic":"quiet"}`, subproto.CodeBadRequest},
		{`{"op":"ack","topic":"quiet","consumer":"q","offset":99}`, subproto.CodeOffsetOutOfRange},
	}
	for _, tc := range cases {
		n := len(c.snapshot())
		c.send(tc.raw)
		evs := c.waitFor("err for "+tc.raw, func(evs []event) bool { return len(evs) > n && evs[len(evs)-1].Op == "err" })
		e := evs[len(evs)-1]
		if e.str("code") != string(tc.code) || e.has("id") || e.str("message") == "" {
			t.Errorf("%s: got %s, want err %s without id, with a message", tc.raw, e, tc.code)
		}
	}
}

func TestBatchedCommands(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)

	// Commands answered at once: replies in command order.
	frame := strings.Join([]string{
		`{"op":"sub","id":1,"topic":"b.one"}`,
		`{"op":"sub","id":2,"topic":"b.two","from":"earliest"}`,
		`{"op":"ping","id":3}`,
		`{"op":"unsub","id":4,"topic":"b.two"}`,
		`{"op":"sub","id":5,"topic":"b.one"}`,
		"",
		`{"op":"ping","id":6}` + "\r",
	}, "\n") + "\n"
	c.send(frame)
	evs := c.waitReplies(6)
	want := []string{"ok", "ok", "pong", "ok", "err", "pong"}
	checkReplyOrder(t, evs, 1, want)

	// Publishes: oks in the order of the pubs, consecutive offsets.
	var lines []string
	for i := range 20 {
		lines = append(lines, fmt.Sprintf(`{"op":"pub","id":%d,"topic":"b.one","data":%d}`, 100+i, i))
	}
	c.send(strings.Join(lines, "\n"))
	evs = c.waitReplies(26)
	var oks []event
	for _, e := range evs {
		if e.Op == "ok" && e.id() >= 100 {
			oks = append(oks, e)
		}
	}
	for i, e := range oks {
		if e.id() != uint64(100+i) || e.num("offset") != uint64(1+i) {
			t.Fatalf("pub reply %d: %s, want id %d offset %d", i, e, 100+i, 1+i)
		}
	}
	checkOffsets(t, "batched pubs", c.waitMsgs("b.one", 20), 1, 20)
	for i, m := range msgs(c.snapshot(), "b.one") {
		if string(m.data()) != fmt.Sprint(i) {
			t.Errorf("msg %d data %s", i, m.data())
		}
	}
}

func countReplies(evs []event) int {
	n := 0
	for _, e := range evs {
		if e.Op == "ok" || e.Op == "err" || e.Op == "pong" {
			n++
		}
	}
	return n
}

// checkReplyOrder checks that the replies in evs, from the first one on,
// have ids first, first+1, ... and the given ops.
func checkReplyOrder(t *testing.T, evs []event, first uint64, ops []string) {
	t.Helper()
	i := 0
	for _, e := range evs {
		if e.Op != "ok" && e.Op != "err" && e.Op != "pong" {
			continue
		}
		if i >= len(ops) {
			break
		}
		if e.id() != first+uint64(i) || e.Op != ops[i] {
			t.Errorf("reply %d: %s, want %s with id %d", i, e, ops[i], first+uint64(i))
		}
		i++
	}
}

func TestEveryIDGetsExactlyOneReply(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	var lines []string
	for i := 1; i <= 300; i++ {
		switch i % 5 {
		case 0:
			lines = append(lines, fmt.Sprintf(`{"op":"pub","id":%d,"topic":"once","data":%d}`, i, i))
		case 1:
			lines = append(lines, fmt.Sprintf(`{"op":"ping","id":%d}`, i))
		case 2:
			lines = append(lines, fmt.Sprintf(`{"op":"sub","id":%d,"topic":"once.%d"}`, i, i))
		case 3:
			lines = append(lines, fmt.Sprintf(`{"op":"unsub","id":%d,"topic":"once.%d"}`, i, i-1))
		case 4:
			lines = append(lines, fmt.Sprintf(`{"op":"nope","id":%d}`, i))
		}
	}
	c.send(strings.Join(lines, "\n"))
	c.waitReplies(300)
	c.do(map[string]any{"op": "ping", "id": 1000})
	seen := map[uint64]int{}
	for _, e := range c.snapshot() {
		if e.Op == "ok" || e.Op == "err" || e.Op == "pong" {
			seen[e.id()]++
		}
	}
	for i := uint64(1); i <= 300; i++ {
		if seen[i] != 1 {
			t.Errorf("id %d got %d replies", i, seen[i])
		}
	}
}
