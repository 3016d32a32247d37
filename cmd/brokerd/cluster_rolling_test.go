package main

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestClusterRollingRestartKeepsSubscribers restarts every node in turn
// (SIGTERM, wait for the exit, start again on its data, wait for /readyz
// and for the partitions to settle) while publishers run and two
// WebSocket subscribers per topic read the topic's log. A subscriber whose
// connection closes resumes on another node from its last offset + 1
// with the epoch it saw. Every acknowledged record must be served, and
// every subscriber must see each offset exactly once, in order, in one
// epoch, without ever being told epoch_mismatch.
func TestClusterRollingRestartKeepsSubscribers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server and three brokerd processes")
	}
	rng, seed := clusterRand(t)
	topics := []string{"rolling.a", "rolling.b", "rolling.c"}
	c := newTestCluster(t, fmt.Sprintf("rolling-%d", seed%1_000_000_007), clusterNodes, false, topics)
	c.startAll()
	t.Logf("partitions settled in %v", c.awaitSettled("start").Round(time.Millisecond))
	log := newAckLog(topics)
	epochs := c.warmUp(log, topics, "warmup")

	stopSubs := make(chan struct{})
	var subs []*resumingSub
	var wg sync.WaitGroup
	for i, tp := range topics {
		for j := range 2 {
			s := &resumingSub{c: c, topic: tp, epoch: epochs[tp], name: fmt.Sprintf("%s/%d", tp, j), got: map[uint64][]byte{}}
			subs = append(subs, s)
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.run(i*2+j, stopSubs)
			}()
		}
	}
	defer func() {
		select {
		case <-stopSubs:
		default:
			close(stopSubs)
		}
		wg.Wait()
	}()

	// A lighter load than the other tests: the restarted nodes catch up
	// on every topic's log, and the subscribers read all of it.
	const publishers, window = 3, 4
	l := c.startLoad(log, topics, "rolling", publishers, window)
	l.awaitAcks(20*time.Second, nil, 50, "before the restarts")
	order := rng.Perm(len(c.nodes))
	for _, i := range order {
		n := c.nodes[i]
		at := time.Now()
		l.stats.fault(at)
		before := l.acked()
		c.stop(n)
		stopped := time.Since(at)
		c.start(n)
		ready := time.Since(at)
		settled := c.awaitSettled("after restarting " + n.name)
		l.awaitAcks(20*time.Second, before, 50, "after restarting "+n.name)
		first, _ := l.stats.failover()
		t.Logf("%s: stopped in %v, ready after %v, partitions settled %v later; from the SIGTERM to the first ack of a pub sent after it %v",
			n.name, stopped.Round(time.Millisecond), ready.Round(time.Millisecond), settled.Round(time.Millisecond), first)
	}
	l.finish()
	t.Logf("publishers: %d acks; %v", l.total.Load(), l.stats)

	// The subscribers read up to the last acknowledged offset.
	heads := map[string]uint64{}
	log.mu.Lock()
	for tp, m := range log.acked {
		for off := range m {
			heads[tp] = max(heads[tp], off)
		}
	}
	log.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range subs {
		for s.last.Load() < heads[s.topic] && s.failure() == "" && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	close(stopSubs)
	wg.Wait()
	log.mu.Lock()
	for _, s := range subs {
		if f := s.failure(); f != "" {
			t.Errorf("subscriber %s: %s", s.name, f)
			continue
		}
		if last := s.last.Load(); last < heads[s.topic] {
			t.Errorf("subscriber %s: got offsets up to %d, the last acknowledged is %d", s.name, last, heads[s.topic])
		}
		bad := 0
		for off, data := range log.acked[s.topic] {
			if got, ok := s.got[off]; ok && !bytes.Equal(got, data) {
				if bad++; bad <= 3 {
					t.Errorf("subscriber %s: offset %d is %s, acknowledged %s", s.name, off, got, data)
				}
			}
		}
		t.Logf("subscriber %s: offsets 1 to %d, %d connections, %d subscriptions", s.name, s.last.Load(), s.conns, s.subs)
	}
	log.mu.Unlock()
	log.checkAcks(t)
	c.verifyServed("after the restarts", log, epochs)
	if t.Failed() {
		return
	}
	c.verifyLocal(log, epochs)
}

// resumingSub reads a topic from offset 1 over WebSocket, resuming on
// another node from the last offset it got + 1, with its epoch, whenever
// the connection or the subscription ends. It records the first thing
// that goes wrong: an offset out of order, another epoch, an
// epoch_mismatch.
type resumingSub struct {
	c     *testCluster
	topic string
	epoch string
	name  string

	last  atomic.Uint64
	got   map[uint64][]byte // offset → data; read after run returns
	conns int
	subs  int

	mu   sync.Mutex
	fail string
}

func (s *resumingSub) failure() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fail
}

func (s *resumingSub) failf(format string, args ...any) {
	s.mu.Lock()
	if s.fail == "" {
		s.fail = fmt.Sprintf(format, args...)
	}
	s.mu.Unlock()
}

func (s *resumingSub) run(node int, stop <-chan struct{}) {
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	var conn *wsClient
	defer func() {
		if conn != nil {
			conn.close()
		}
	}()
	var id uint64
	for !stopped() {
		if conn == nil {
			node = (node + 1) % len(s.c.nodes)
			addr, ok := s.c.nodes[node].addr()
			if !ok {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			cl, err := dial(addr)
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			conn = cl
			s.conns++
			id++
			s.subs++
			from := strconv.FormatUint(s.last.Load()+1, 10)
			if err := conn.send(subCmd(id, s.topic, from, s.epoch)); err != nil {
				conn.close()
				conn = nil
				continue
			}
		}
		ev, err := conn.next(200 * time.Millisecond)
		if errors.Is(err, errClientClosed) {
			conn = nil
			continue
		}
		if err != nil {
			continue // nothing yet: look at stop again
		}
		switch {
		case ev.Op == "msg" && ev.Topic == s.topic:
			last := s.last.Load()
			if ev.Offset != last+1 {
				s.failf("got offset %d after %d (on %s)", ev.Offset, last, conn.welcome.Node)
				return
			}
			s.got[ev.Offset] = ev.Data
			s.last.Store(ev.Offset)
		case ev.Op == "ok" && ev.ID == id:
			if ev.Epoch != s.epoch || ev.From != s.last.Load()+1 {
				s.failf("sub answered %s, want epoch %s from %d", ev, s.epoch, s.last.Load()+1)
				return
			}
		case ev.Code == "epoch_mismatch":
			s.failf("%s after offset %d (on %s)", ev, s.last.Load(), conn.welcome.Node)
			return
		case ev.Op == "err" && ev.ID == id && ev.Code == "unavailable", ev.Op == "unsubbed":
			// Subscribe again, on another node.
			conn.close()
			conn = nil
		default:
			s.failf("unexpected %s", ev)
			return
		}
	}
}
