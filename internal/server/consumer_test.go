package server_test

import (
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

func TestDurableConsumer(t *testing.T) {
	ts := startServer(t)
	p := dial(t, ts)
	publishN(t, p, "work", 1, 20)

	c := dial(t, ts)
	ok := c.sub("work", map[string]any{"consumer": "billing", "from": "earliest", "max_inflight": 5})
	epoch := ok.str("epoch")
	if ok.num("from") != 1 || ok.num("head") != 20 {
		t.Fatalf("ok %s: want from 1, head 20", ok)
	}
	// max_inflight: five messages, then nothing until an ack.
	checkOffsets(t, "window", c.waitMsgs("work", 5), 1, 5)
	c.quiet(150*time.Millisecond, "msg past the window", func(e event) bool { return e.Op == "msg" && e.num("offset") > 5 })

	// An ack of 3 opens the window by three: 6, 7, 8.
	c.mustOK(map[string]any{"op": "ack", "topic": "work", "consumer": "billing", "offset": 3})
	checkOffsets(t, "after ack 3", c.waitMsgs("work", 8), 1, 8)
	c.quiet(150*time.Millisecond, "msg past the window", func(e event) bool { return e.Op == "msg" && e.num("offset") > 8 })

	// Live messages respect the window too.
	publishN(t, p, "work", 21, 5)
	c.mustOK(map[string]any{"op": "ack", "topic": "work", "consumer": "billing", "offset": 5})
	checkOffsets(t, "after ack 5", c.waitMsgs("work", 10), 1, 10)
	c.quiet(150*time.Millisecond, "msg past the window", func(e event) bool { return e.Op == "msg" && e.num("offset") > 10 })

	// Reconnect: the subscription resumes at acked+1, so 6..10 (sent but
	// not acknowledged) come again. from is ignored once the consumer
	// has an acked offset.
	c.close()
	c2 := dial(t, ts)
	ok = c2.sub("work", map[string]any{"consumer": "billing", "from": "latest", "max_inflight": 100})
	if ok.num("from") != 6 || ok.str("epoch") != epoch {
		t.Fatalf("resume ok %s: want from 6 (acked 5 + 1)", ok)
	}
	checkOffsets(t, "redelivery", c2.waitMsgs("work", 20), 6, 25)
	c2.mustOK(map[string]any{"op": "ack", "topic": "work", "consumer": "billing", "offset": 25})
	publishN(t, p, "work", 26, 3)
	checkOffsets(t, "live", c2.waitMsgs("work", 23), 6, 28)

	// A consumer is per name: another name starts afresh.
	o := dial(t, ts)
	if ok := o.sub("work", map[string]any{"consumer": "audit", "from": 27}); ok.num("from") != 27 {
		t.Fatalf("new consumer ok %s: want from 27", ok)
	}
	checkOffsets(t, "other consumer", o.waitMsgs("work", 2), 27, 28)

	// An ack of a lower offset never moves the consumer back.
	c2.mustOK(map[string]any{"op": "ack", "topic": "work", "consumer": "billing", "offset": 2})
	if co, _, _ := ts.Store.Consumer("billing", "work"); co.Offset != 25 {
		t.Fatalf("consumer offset %d after a lower ack, want 25", co.Offset)
	}
}

func TestDurableConsumerTakeOver(t *testing.T) {
	ts := startServer(t)
	p := dial(t, ts)
	publishN(t, p, "orders", 1, 4)

	a := dial(t, ts)
	a.name = "a"
	a.sub("orders", map[string]any{"consumer": "shipper", "from": "earliest"})
	a.waitMsgs("orders", 4)
	a.mustOK(map[string]any{"op": "ack", "topic": "orders", "consumer": "shipper", "offset": 2})

	b := dial(t, ts)
	b.name = "b"
	ok := b.sub("orders", map[string]any{"consumer": "shipper"})
	if ok.num("from") != 3 {
		t.Fatalf("take-over ok %s: want from 3", ok)
	}
	evs := a.waitFor("unsubbed taken_over", func(evs []event) bool {
		return len(evs) > 0 && evs[len(evs)-1].Op == "unsubbed"
	})
	u := evs[len(evs)-1]
	if u.str("topic") != "orders" || u.str("code") != string(subproto.CodeTakenOver) || len(u.M) != 3 {
		t.Fatalf("old connection got %s, want {op:unsubbed, topic:orders, code:taken_over}", u)
	}
	checkOffsets(t, "new owner", b.waitMsgs("orders", 2), 3, 4)

	// Only the new owner receives what comes next; the old connection
	// lives on without the subscription.
	publishN(t, p, "orders", 5, 3)
	checkOffsets(t, "new owner", b.waitMsgs("orders", 5), 3, 7)
	a.mustErr(map[string]any{"op": "unsub", "topic": "orders"}, subproto.CodeNotSubscribed)
	n := len(msgs(a.snapshot(), "orders"))
	if n != 4 {
		t.Errorf("old connection got %d msgs, want 4", n)
	}
	a.do(map[string]any{"op": "ping"})
	if n := len(msgs(a.snapshot(), "orders")); n != 4 {
		t.Errorf("old connection got msgs after it was taken over: %d", n)
	}

	// The old connection may take it back.
	ok = a.sub("orders", map[string]any{"consumer": "shipper"})
	if ok.num("from") != 3 {
		t.Fatalf("take-back ok %s: want from 3", ok)
	}
	evs = b.waitFor("unsubbed", func(evs []event) bool { return evs[len(evs)-1].Op == "unsubbed" })
	if u := evs[len(evs)-1]; u.str("code") != string(subproto.CodeTakenOver) {
		t.Fatalf("b got %s", u)
	}
	// Acks from the new owner move the consumer; the old connection's
	// subscription, gone, does not interfere.
	a.waitMsgs("orders", 9) // 4 + 3..7
	a.mustOK(map[string]any{"op": "ack", "topic": "orders", "consumer": "shipper", "offset": 7})
	if co, _, _ := ts.Store.Consumer("shipper", "orders"); co.Offset != 7 {
		t.Fatalf("consumer offset %d, want 7", co.Offset)
	}
}
