package server_test

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/brokerd/brokerd/store"
	"github.com/brokerd/brokerd/subproto"
)

// sendPubs sends n pubs of data(k) (k from first on) to topic from c in
// frames of batch commands, without waiting for the replies. Safe from
// any goroutine.
func sendPubs(c *client, topic string, first, n, batch int, data func(k int) string) []uint64 {
	var ids []uint64
	var lines []string
	for k := first; k < first+n; k++ {
		raw, id := c.encode(map[string]any{"op": "pub", "topic": topic, "data": rawJSON(data(k))})
		ids = append(ids, id)
		lines = append(lines, raw)
		if len(lines) == batch || k == first+n-1 {
			c.send(strings.Join(lines, "\n"))
			lines = lines[:0]
		}
	}
	return ids
}

// waitOKs waits for the replies to ids and fails unless each is ok.
func waitOKs(t testing.TB, c *client, ids []uint64) {
	t.Helper()
	for _, id := range ids {
		if r := c.reply(id); r.Op != "ok" {
			t.Fatalf("pub: %s", r)
		}
	}
}

// publishData publishes n messages of data(k) and waits for every ok.
func publishData(t testing.TB, c *client, topic string, first, n, batch int, data func(k int) string) {
	t.Helper()
	waitOKs(t, c, sendPubs(c, topic, first, n, batch, data))
}

// A subscriber whose socket backs up is fed from the log: it gets every
// message in order, and so does a subscriber that keeps up.
func TestSlowSubscriberCatchesUpFromLog(t *testing.T) {
	const total, size = 5000, 1024
	ts := startServer(t, func(sc *serverConfig) {
		sc.Broker.QueueMessages = 64
		sc.Broker.MinShare = 16
		sc.SendBuffer = 64 << 10
	})
	fast := dial(t, ts)
	fast.name = "fast"
	fast.sub("firehose", nil)
	slow := dial(t, ts, withRecvBuffer(4096), withFrameDelay(200*time.Microsecond))
	slow.name = "slow"
	slow.sub("firehose", nil)
	// A second topic on the slow connection shares its queue.
	slow.sub("trickle", nil)

	// The slow client stops reading until its subscription has fallen
	// back to the log, then reads slowly.
	slow.pause()
	p := dial(t, ts)
	sent := make(chan []uint64)
	go func() { sent <- sendPubs(p, "firehose", 1, total, 50, func(k int) string { return payload(k, size) }) }()
	eventually(t, waitTimeout, "a catch-up from the log", func() bool { return ts.Broker.Stats().CatchUps.Load() > 0 })
	publishN(t, p, "trickle", 1, 3)
	slow.release()
	waitOKs(t, p, <-sent)

	for _, c := range []*client{fast, slow} {
		ms := c.waitMsgs("firehose", total)
		checkOffsets(t, c.name, ms, 1, total)
		for i, m := range ms {
			if want := payload(i+1, size); string(m.data()) != want {
				t.Fatalf("%s: msg %d data %.40s…, want %.40s…", c.name, i+1, m.data(), want)
			}
		}
	}
	checkOffsets(t, "slow trickle", slow.waitMsgs("trickle", 3), 1, 3)
	if n := ts.Broker.Stats().SlowCloses.Load(); n != 0 {
		t.Errorf("%d slow closes: a slow but draining subscriber must not be closed", n)
	}
}

// A subscriber that stops reading entirely is closed once a write makes
// no progress within the write timeout; it resumes from its last offset.
func TestStalledSubscriberIsClosed(t *testing.T) {
	const total, size = 64, 16 << 10 // 1 MiB: far more than the small socket buffers hold
	ts := startServer(t, func(sc *serverConfig) {
		sc.Server.WriteTimeout = time.Second
		sc.Broker.QueueMessages = 16
		sc.Broker.MinShare = 8
		sc.SendBuffer = 16 << 10
	})
	stalled := dial(t, ts, withRecvBuffer(4096))
	stalled.name = "stalled"
	ok := stalled.sub("bulk", nil)
	epoch := ok.str("epoch")
	stalled.pause()

	p := dial(t, ts)
	publishData(t, p, "bulk", 1, total, 16, func(k int) string { return payload(k, size) })
	published := time.Now()
	eventually(t, 10*time.Second, "the stalled connection to be closed as slow", func() bool {
		return ts.Broker.Stats().SlowCloses.Load() >= 1 && ts.Broker.Subscribers("bulk") == 0
	})
	t.Logf("closed %v after the last publish", time.Since(published).Round(time.Millisecond))

	// What the client had received before is whole and in order; the
	// connection ends with 4008, or without a close frame when the
	// socket could not take one.
	stalled.release()
	code, reason := stalled.waitClosed(5 * time.Second)
	if code != 0 && code != uint16(subproto.CloseSlowConsumer) {
		t.Fatalf("stalled client closed with %d %q, want 4008 or no close frame", code, reason)
	}
	got := msgs(stalled.snapshot(), "bulk")
	var last uint64
	if len(got) > 0 {
		last = got[len(got)-1].num("offset")
	}
	checkOffsets(t, "stalled", got, 1, last)
	if last >= total {
		t.Fatalf("the stalled client received everything (%d): the test did not fill the socket", last)
	}
	t.Logf("stalled client: close code %d, %d of %d messages before the close", code, last, total)

	// The publisher was not held back, and resuming from last+1 gives
	// the rest.
	if p.isClosed() {
		t.Fatal("the publisher was closed")
	}
	again := dial(t, ts)
	ok = again.sub("bulk", map[string]any{"from": last + 1, "epoch": epoch})
	if ok.num("from") != last+1 {
		t.Fatalf("resume ok %s", ok)
	}
	checkOffsets(t, "resumed", again.waitMsgs("bulk", int(total-last)), last+1, total)
}

// A publisher that pipelines pubs and stops reading its replies for a
// while, shorter than the write timeout, is slowed down, not closed: the
// contract closes only a connection that makes no write progress within
// the write timeout.
func TestPublisherPausingShorterThanWriteTimeout(t *testing.T) {
	const total = 3000
	ts := startServer(t, func(sc *serverConfig) {
		sc.Broker.QueueMessages = 64 // the reply backlog allowed is QueueMessages + MaxPendingPublishes
		sc.Broker.MinShare = 16
		sc.SendBuffer = 16 << 10
	})
	p := dial(t, ts, withRecvBuffer(4096))
	p.pause()
	sent := make(chan []uint64, 1)
	go func() { sent <- sendPubs(p, "pipelined", 1, total, 100, func(k int) string { return fmt.Sprint(k) }) }()
	time.Sleep(time.Second) // the pause, well within the 10s write timeout
	p.release()
	deadline := time.Now().Add(waitTimeout)
	for {
		p.mu.Lock()
		n, closed, code, reason := p.nreplies, p.closed, p.closeCode, string(p.closeMsg)
		p.mu.Unlock()
		if n >= total {
			break
		}
		if closed {
			t.Fatalf("a publisher that stopped reading its replies for 1s (write timeout 10s) was closed with %d %q after %d of %d oks", code, reason, n, total)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d oks", n, total)
		}
		time.Sleep(5 * time.Millisecond)
	}
	ids := <-sent
	waitOKs(t, p, ids)
	if h := ts.head("pipelined"); h != total {
		t.Fatalf("head %d, want %d", h, total)
	}
}

// When live messages fill the outbound queue to exactly its byte limit
// and the subscription falls back to the log, the writer must still drain
// the queue and feed the subscription.
func TestQueueFullToTheByte(t *testing.T) {
	const dataSize = 16000
	data := func(k int) string { return payload(k, dataSize) }
	// Every msg of offsets 100..999 encodes to the same size.
	msgSize := len(subproto.AppendMsg(nil, "exact", 100, time.Now().UnixMilli(), []byte(data(100)), ""))
	ts := startServer(t, func(sc *serverConfig) {
		sc.Broker.QueueMessages = 64
		sc.Broker.MinShare = 16
		sc.Broker.QueueBytes = 8 * msgSize
	})
	p := dial(t, ts)
	publishN(t, p, "exact", 1, 99)

	s := dial(t, ts, withRecvBuffer(4096))
	s.sub("exact", nil)
	s.pause()
	const n = 300
	publishData(t, p, "exact", 100, n, 10, data)
	eventually(t, waitTimeout, "a catch-up from the log", func() bool { return ts.Broker.Stats().CatchUps.Load() > 0 })
	s.release()

	// Wait while messages keep coming; a writer that is stuck delivers
	// nothing more.
	got := msgs(s.snapshot(), "exact")
	for progress := time.Now(); len(got) < n && time.Since(progress) < 2*time.Second && !s.isClosed(); {
		time.Sleep(10 * time.Millisecond)
		if now := msgs(s.snapshot(), "exact"); len(now) > len(got) {
			got, progress = now, time.Now()
		}
	}
	if len(got) < n && !s.isClosed() {
		t.Fatalf("subscriber stuck after %d of %d msgs with the queue full to the byte", len(got), n)
	}

	checkOffsets(t, "subscriber", got, 100, 99+n)
}

// A pattern subscription that falls behind is fed from the topic logs
// like a topic subscription (v1.1): never ended as slow, nothing lost,
// per topic in order.
func TestSlowPatternSubscriptionFedFromLog(t *testing.T) {
	ts := startServer(t, func(sc *serverConfig) {
		sc.Broker.QueueMessages = 64
		sc.Broker.MinShare = 16
	})
	s := dial(t, ts, withRecvBuffer(4096))
	s.sub("metrics.*", nil)
	s.sub("metrics.cpu", map[string]any{"from": "earliest"})
	s.pause()
	p := dial(t, ts)
	const total = 2000
	catchUps := ts.Broker.Stats().CatchUps.Load()
	publishData(t, p, "metrics.cpu", 1, total, 50, func(k int) string { return payload(k, 1024) })
	publishData(t, p, "metrics.mem", 1, 100, 50, func(k int) string { return payload(k, 1024) })
	eventually(t, waitTimeout, "the pattern to fall back to the log", func() bool {
		return ts.Broker.Stats().CatchUps.Load() > catchUps
	})
	s.release()
	evs := s.waitFor("every msg", func(evs []event) bool {
		n := 0
		for _, e := range evs {
			if e.Op == "msg" {
				n++
			}
		}
		return n >= 2*total+100
	})
	var exact []event
	viaPattern := map[string][]event{}
	for i, e := range evs {
		switch e.Op {
		case "unsubbed":
			t.Fatalf("got %s", e)
		case "topic":
			if e.str("sub") != "metrics.*" || e.has("code") || e.num("from") != 1 {
				t.Errorf("topic event %s", e)
			}
			if len(viaPattern[e.str("topic")]) > 0 {
				t.Errorf("topic event %s after msgs of the topic", e)
			}
		case "msg":
			if !e.has("sub") {
				exact = append(exact, e)
				continue
			}
			topic := e.str("topic")
			if len(viaPattern[topic]) == 0 {
				if i == 0 || evs[i-1].Op != "topic" && !slices.ContainsFunc(evs[:i], func(x event) bool { return x.Op == "topic" && x.str("topic") == topic }) {
					t.Errorf("first msg of %s without a topic event before it", topic)
				}
			}
			viaPattern[topic] = append(viaPattern[topic], e)
		}
	}
	checkOffsets(t, "exact", exact, 1, total)
	checkOffsets(t, "pattern metrics.cpu", viaPattern["metrics.cpu"], 1, total)
	checkOffsets(t, "pattern metrics.mem", viaPattern["metrics.mem"], 1, 100)
	if n := ts.Broker.Stats().SlowPatternEnds.Load(); n != 0 {
		t.Errorf("%d pattern subscriptions ended as slow", n)
	}
}

// rawJSON marks s as JSON to encode as is.
type rawJSON string

func (r rawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }

// Retention that removes records a lagging subscription has not received
// yet must end the subscription with unsubbed offset_out_of_range: never a
// silent gap, never a silent stall.
func TestLaggingSubscriptionTrimmed(t *testing.T) {
	const total, size = 256, 4 << 10 // 1 MiB: more than the small socket buffers hold
	cases := []struct {
		name string
		trim func(ts *testServer, clock *atomic.Int64)
	}{
		{"oldest records", func(ts *testServer, _ *atomic.Int64) {
			if err := ts.Store.SetRetention("trimmed", store.Retention{MaxMessages: 100}); err != nil {
				t.Fatal(err)
			}
		}},
		{"every record", func(ts *testServer, clock *atomic.Int64) {
			if err := ts.Store.SetRetention("trimmed", store.Retention{MaxAge: time.Minute}); err != nil {
				t.Fatal(err)
			}
			clock.Add(int64(time.Hour))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var skew atomic.Int64
			ts := startServer(t, func(sc *serverConfig) {
				sc.Broker.QueueMessages = 64
				sc.Broker.MinShare = 16
				sc.SendBuffer = 16 << 10
				sc.Store.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
			})
			p := dial(t, ts)
			publishData(t, p, "trimmed", 1, total, 16, func(k int) string { return payload(k, size) })

			s := dial(t, ts, withRecvBuffer(4096))
			s.sub("trimmed", map[string]any{"from": 1})
			s.pause()
			// The trim may come at any point of the replay: the check of
			// last below proves the subscription was behind it.
			c.trim(ts, &skew)
			if err := ts.Store.RunRetention(); err != nil {
				t.Fatal(err)
			}
			info := ts.topicInfo("trimmed")
			t.Logf("after retention: earliest %d, head %d", info.Earliest, info.Head)
			s.release()

			var got []event
			var unsubbed []event
			for progress := time.Now(); time.Since(progress) < 2*time.Second && len(unsubbed) == 0 && !s.isClosed(); {
				time.Sleep(10 * time.Millisecond)
				evs := s.snapshot()
				unsubbed = unsubbed[:0]
				for _, e := range evs {
					if e.Op == "unsubbed" {
						unsubbed = append(unsubbed, e)
					}
				}
				if now := msgs(evs, "trimmed"); len(now) > len(got) {
					got, progress = now, time.Now()
				}
			}
			var last uint64
			if len(got) > 0 {
				last = got[len(got)-1].num("offset")
			}
			checkOffsets(t, "before the trim", got, 1, last)
			if last >= info.Earliest-1 {
				t.Fatalf("the subscriber received %d messages before the trim took effect: the test did not make it lag", last)
			}
			if len(unsubbed) == 0 {
				t.Fatalf("subscription stalled silently at offset %d after retention removed offsets up to %d", last, info.Earliest-1)
			}
			if u := unsubbed[0]; len(unsubbed) != 1 || u.str("topic") != "trimmed" || u.str("code") != string(subproto.CodeOffsetOutOfRange) {
				t.Fatalf("got %v, want one unsubbed trimmed offset_out_of_range", unsubbed)
			}
		})
	}
}
