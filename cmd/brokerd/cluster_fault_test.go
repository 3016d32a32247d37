package main

import (
	"flag"
	"fmt"
	"slices"
	"testing"
	"time"
)

var clusterCycles = flag.Int("cluster.cycles", 2, "kill -9 cycles of TestClusterKillOwnerKeepsAckedRecords: each kills a topic's owner (every fourth, any node) under load and restarts it")

// TestClusterKillOwnerKeepsAckedRecords runs three brokerd nodes with
// --replicas 2 on one NATS and publishes over WebSocket from several
// connections spread over the nodes. Each cycle kills the owner of a
// random topic (every fourth cycle, any node) with SIGKILL at a random
// moment, keeps publishing on the survivors past the
// lease TTL, checks that every acknowledged publish is served, in one
// epoch, without gap or duplicate, and that a durable consumer resumes on
// a survivor right after what it acknowledged before the kill (the
// acknowledgement had its copies), then restarts the killed node on its
// data, waits for the partitions to settle and checks again. At the end
// it stops every node and checks each one's own store. -cluster.cycles
// sets how many cycles; the summary at the end counts what a soak needs.
func TestClusterKillOwnerKeepsAckedRecords(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server and three brokerd processes")
	}
	rng, seed := clusterRand(t)
	topics := []string{"fault.alpha", "fault.beta"}
	c := newTestCluster(t, fmt.Sprintf("kill-%d", seed%1_000_000_007), clusterNodes, false, topics)
	c.startAll()
	t.Logf("partitions settled in %v", c.awaitSettled("start").Round(time.Millisecond))
	log := newAckLog(topics)
	epochs := c.warmUp(log, topics, "warmup")
	t.Logf("epochs %v; partitions %d, %d", epochs, topicPartition(topics[0]), topicPartition(topics[1]))

	var (
		cycles    int
		first     []time.Duration // per kill and topic: from the kill to the first ack of a pub sent after it
		gaps      []time.Duration // per kill and topic: the longest gap between two acks in the cycle
		found     tally           // the worst of the checks
		startedAt = time.Now()
	)
	defer func() {
		found.dupOffset = log.dupAcks()
		outcome := "passed"
		if t.Failed() {
			outcome = "FAILED (the checks stop at the first cycle that fails)"
		}
		t.Logf("summary (seed %d): %s; %d of %d cycles in %v; %d acked messages; %d lost; %d duplicated offsets (%d offsets acked twice, %d records stored twice); "+
			"failover time, per kill and topic, from the SIGKILL to the first ack of a publish sent after it: p50 %v p99 %v max %v (%d samples); "+
			"longest publisher-visible gap between two acks per kill and topic: p50 %v p99 %v max %v",
			seed, outcome, cycles, *clusterCycles, time.Since(startedAt).Round(time.Millisecond), log.acks(), found.lost,
			found.dupOffset+found.dupData, found.dupOffset, found.dupData,
			percentile(first, 50), percentile(first, 99), percentile(first, 100), len(first),
			percentile(gaps, 50), percentile(gaps, 99), percentile(gaps, 100))
	}()

	// A durable consumer of the first topic steps through it on one node
	// after another: before each kill it acknowledges some messages, and
	// after the kill it must resume right after them on a survivor.
	consumer := &durableConsumer{c: c, log: log, topic: topics[0], name: "fault-consumer", epoch: epochs[topics[0]], node: rng.IntN(len(c.nodes))}
	defer func() { t.Logf("durable consumer: %d steps, acknowledged up to %d", consumer.steps, consumer.acked) }()

	const publishers, window = 4, 16
	for cycle := 1; cycle <= *clusterCycles; cycle++ {
		l := c.startLoad(log, topics, fmt.Sprintf("c%d", cycle), publishers, window)
		target := int64(100 + rng.IntN(401))
		poll(t, 20*time.Second, 5*time.Millisecond, fmt.Sprintf("cycle %d: %d acks before the kill", cycle, target), func() bool {
			return l.total.Load() >= target
		})
		// Mostly the owner of a topic, the failover under test; every
		// fourth cycle any node, a follower's death too.
		victim := c.nodes[rng.IntN(len(c.nodes))]
		if cycle%4 != 0 {
			owner := c.owner(topics[rng.IntN(len(topics))]).owner
			for _, n := range c.nodes {
				if n.name == owner {
					victim = n
				}
			}
		}
		if err := consumer.step(50, 20*time.Second); err != nil {
			t.Fatalf("cycle %d, before the kill: %v", cycle, err)
		}
		var roles []string
		for _, tp := range topics {
			roles = append(roles, fmt.Sprintf("%s %s", tp, c.owner(tp)))
		}
		before := l.acked()
		killAt := time.Now()
		l.stats.fault(killAt)
		c.kill(victim)
		acksAtKill := l.total.Load()

		// Keep publishing on the survivors past the lease TTL, until every
		// topic has taken 200 more acks.
		l.awaitAcks(30*time.Second, before, 200, fmt.Sprintf("cycle %d: after killing %s", cycle, victim.name))
		if d := 3*clusterLeaseTTL - time.Since(killAt); d > 0 {
			time.Sleep(d) // the load runs on: a fixed length of failover traffic
		}
		l.finish()
		log.checkAcks(t)
		f, g := l.stats.failover()
		for _, tp := range topics {
			first = append(first, f[tp])
			gaps = append(gaps, g[tp])
		}
		t.Logf("cycle %d: killed %s (leases %v) after %d acks (target %d); %d acks this cycle, published on the survivors for %v; %v",
			cycle, victim.name, roles, acksAtKill, target, l.total.Load(), time.Since(killAt).Round(time.Millisecond), l.stats)
		found.worst(c.verifyServed(fmt.Sprintf("cycle %d after the kill", cycle), log, epochs))
		if t.Failed() {
			return
		}
		if err := consumer.step(50, 20*time.Second); err != nil {
			t.Fatalf("cycle %d, after killing %s: %v", cycle, victim.name, err)
		}

		restartAt := time.Now()
		c.start(victim)
		ready := time.Since(restartAt)
		settled := c.awaitSettled(fmt.Sprintf("cycle %d after restarting %s", cycle, victim.name))
		t.Logf("cycle %d: %s restarted, ready after %v, partitions settled %v later", cycle, victim.name,
			ready.Round(time.Millisecond), settled.Round(time.Millisecond))
		// Publish through every node, the restarted one included, then check.
		l = c.startLoad(log, topics, fmt.Sprintf("c%d-back", cycle), publishers, window)
		l.awaitAcks(30*time.Second, l.acked(), 100, fmt.Sprintf("cycle %d: after the restart", cycle))
		l.finish()
		log.checkAcks(t)
		found.worst(c.verifyServed(fmt.Sprintf("cycle %d after the restart", cycle), log, epochs))
		if t.Failed() {
			return
		}
		cycles = cycle
	}
	found.worst(c.verifyLocal(log, epochs))
}

// percentile returns the p-th percentile (nearest rank) of ds, 0 when
// there is none.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s) + 99) / 100
	return s[max(i, 1)-1]
}
