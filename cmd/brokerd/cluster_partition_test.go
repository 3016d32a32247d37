package main

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestClusterCutNodeAnswersUnavailable puts a TCP proxy between each node
// and NATS and cuts one node off NATS (its connections closed, new ones
// refused) while publishers run on the others. Publishes sent to the cut
// node over its own WebSocket must all be answered err unavailable, never
// ok, within the request timeout plus a lease TTL; the other two nodes
// keep acknowledging. Then the cut is healed: the node reconnects and
// serves again, and every log is checked as after a kill.
func TestClusterCutNodeAnswersUnavailable(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server and three brokerd processes")
	}
	rng, seed := clusterRand(t)
	topics := []string{"cut.a", "cut.b", "cut.c", "cut.d"}
	c := newTestCluster(t, fmt.Sprintf("cut-%d", seed%1_000_000_007), clusterNodes, true, topics)
	c.startAll()
	t.Logf("partitions settled in %v", c.awaitSettled("start").Round(time.Millisecond))
	log := newAckLog(topics)
	epochs := c.warmUp(log, topics, "warmup")

	victim := c.nodes[rng.IntN(len(c.nodes))]
	leases := map[string]lease{}
	for _, tp := range topics {
		leases[tp] = c.owner(tp)
	}
	t.Logf("leases %v; cutting %s off NATS", leases, victim.name)
	addr, _ := victim.addr()
	probe, err := dial(addr)
	if err != nil {
		t.Fatalf("connecting to %s: %v", victim.name, err)
	}
	defer probe.close()

	const publishers, window = 4, 16
	l := c.startLoad(log, topics, "cut", publishers, window)
	l.awaitAcks(20*time.Second, nil, 50, "before the cut")
	before := l.acked()
	cutAt := time.Now()
	l.stats.fault(cutAt)
	c.cut(victim)

	// Publish on the cut node for a while; every answer must be
	// unavailable, within the bound.
	bound := clusterRequestTimeout + clusterLeaseTTL
	type sent struct {
		topic string
		at    time.Time
	}
	var (
		mu      sync.Mutex
		pending = map[uint64]sent{}
		answers = map[string]int{}
		slowest time.Duration
	)
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		for {
			mu.Lock()
			n := len(pending)
			mu.Unlock()
			ev, err := probe.next(bound + time.Second)
			switch {
			case err != nil && n > 0:
				log.noteErr("probe on the cut %s: %v with %d pubs unanswered", victim.name, err, n)
				return
			case errors.Is(err, errClientClosed):
				return
			case err != nil:
				continue // nothing was pending
			}
			mu.Lock()
			s, ok := pending[ev.ID]
			delete(pending, ev.ID)
			mu.Unlock()
			took := time.Since(s.at)
			switch {
			case !ok:
				log.noteErr("probe on the cut %s: event for no pub: %s", victim.name, ev)
			case ev.Op == "ok":
				log.noteErr("probe on the cut %s: a pub to %s answered %s after %v: the cut node acknowledged a publish", victim.name, s.topic, ev, took)
			case ev.Op != "err" || ev.Code != "unavailable":
				log.noteErr("probe on the cut %s: a pub to %s answered %s, want err unavailable", victim.name, s.topic, ev)
			case took > bound:
				log.noteErr("probe on the cut %s: a pub to %s answered unavailable after %v, over %v", victim.name, s.topic, took, bound)
			}
			mu.Lock()
			answers[ev.Op+" "+ev.Code]++
			slowest = max(slowest, took)
			mu.Unlock()
		}
	}()
	for i := uint64(1); time.Since(cutAt) < 2*clusterLeaseTTL; i++ {
		tp := topics[int(i)%len(topics)]
		data := fmt.Appendf(nil, `{"probe":%d,"topic":%q}`, i, tp)
		log.noteSent(tp, data)
		mu.Lock()
		pending[i] = sent{tp, time.Now()}
		mu.Unlock()
		if err := probe.send(pubKeyCmd(i, tp, fmt.Sprintf("probe-%d", i), data)); err != nil {
			t.Fatalf("publishing on the cut %s: %v", victim.name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The majority keeps acknowledging every topic.
	l.awaitAcks(30*time.Second, before, 200, fmt.Sprintf("with %s cut off", victim.name))
	poll(t, bound+5*time.Second, 10*time.Millisecond, "every probe answered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(pending) == 0
	})
	mu.Lock()
	t.Logf("probe answers on the cut %s: %v, the slowest after %v (bound %v)", victim.name, answers, slowest.Round(time.Millisecond), bound)
	mu.Unlock()
	log.checkAcks(t)
	cutLeases := map[string]lease{}
	for _, tp := range topics {
		cutLeases[tp] = c.owner(tp)
		if cutLeases[tp].owner == victim.name {
			t.Errorf("%s: still held by the cut %s: %v", tp, victim.name, cutLeases[tp])
		}
	}

	// Heal: the node reconnects and serves every topic again.
	healAt := time.Now()
	c.heal(victim)
	for _, tp := range topics {
		key := "healed-" + tp
		data := []byte(`{"healed":"` + tp + `"}`)
		log.noteSent(tp, data)
		poll(t, 30*time.Second, 50*time.Millisecond, fmt.Sprintf("a publish to %s on the healed %s succeeds", tp, victim.name), func() bool {
			off, _, err := httpPublish(addr, tp, key, data)
			if err != nil {
				return false
			}
			log.noteAck(tp, off, data)
			return true
		})
	}
	served := time.Since(healAt)
	settled := c.awaitSettled("after the heal")
	l.finish()
	probe.close()
	<-probeDone
	log.checkAcks(t)
	t.Logf("cut for %v; leases while cut %v; %s served every topic %v after the heal, partitions settled %v later; %v",
		healAt.Sub(cutAt).Round(time.Millisecond), cutLeases, victim.name, served.Round(time.Millisecond), settled.Round(time.Millisecond), l.stats)

	// Publish through every node, the healed one included, then check.
	l = c.startLoad(log, topics, "healed", publishers, window)
	l.awaitAcks(20*time.Second, nil, 100, "after the heal")
	l.finish()
	log.checkAcks(t)
	c.verifyServed("after the heal", log, epochs)
	if t.Failed() {
		return
	}
	c.verifyLocal(log, epochs)
}

// TestClusterHeartbeatsResumeAfterCuts cuts nodes off NATS and heals them
// several times (one node, then every node at once): each time every node
// must heartbeat again by itself and the partitions settle over the three
// of them, with no acknowledged record lost and no topic in a new epoch.
func TestClusterHeartbeatsResumeAfterCuts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server and three brokerd processes")
	}
	rng, seed := clusterRand(t)
	topics := []string{"beat.a", "beat.b", "beat.c"}
	c := newTestCluster(t, fmt.Sprintf("beat-%d", seed%1_000_000_007), clusterNodes, true, topics)
	c.startAll()
	c.awaitSettled("start")
	log := newAckLog(topics)
	epochs := c.warmUp(log, topics, "warmup")
	l := c.startLoad(log, topics, "beat", 3, 8)
	l.awaitAcks(20*time.Second, nil, 20, "before the cuts")
	for cycle := 1; cycle <= 4; cycle++ {
		victims := []*clusterNode{c.nodes[rng.IntN(len(c.nodes))]}
		if cycle%2 == 0 {
			victims = c.nodes // all at once: as if NATS went away
		}
		var names []string
		for _, v := range victims {
			names = append(names, v.name)
			c.cut(v)
		}
		time.Sleep(clusterLeaseTTL + time.Duration(rng.Int64N(int64(clusterLeaseTTL))))
		for _, v := range victims {
			c.heal(v)
		}
		healed := time.Now()
		settled := c.awaitSettled(fmt.Sprintf("cycle %d, after healing %v", cycle, names))
		before := l.acked()
		l.awaitAcks(30*time.Second, before, 10, fmt.Sprintf("cycle %d, after healing %v", cycle, names))
		t.Logf("cycle %d: cut %v; every node heartbeating and the partitions settled %v after the heal (%v)",
			cycle, names, time.Since(healed).Round(time.Millisecond), settled.Round(time.Millisecond))
	}
	l.finish()
	log.checkAcks(t)
	c.verifyServed("after the cuts", log, epochs)
	if t.Failed() {
		return
	}
	c.verifyLocal(log, epochs)
}
