package main

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestClusterPausedOwnerIsFenced stops the owner of a topic's partition
// with SIGSTOP for three lease TTLs while publishers run: its leases
// expire and its followers take its partitions over, the publishers
// connected to it give up waiting and move. Then it resumes with SIGCONT,
// still believing for a moment that it owns its partitions, and the
// publishers use every node again, the resumed one included. No offset may
// be acknowledged twice, every acknowledged record must be served and
// held by two nodes, in the topic's one epoch, and no record stored twice.
func TestClusterPausedOwnerIsFenced(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server and three brokerd processes")
	}
	rng, seed := clusterRand(t)
	// Several topics, so that the paused node leads some and follows
	// others.
	topics := []string{"zombie.a", "zombie.b", "zombie.c", "zombie.d", "zombie.e", "zombie.f"}
	c := newTestCluster(t, fmt.Sprintf("zombie-%d", seed%1_000_000_007), clusterNodes, false, topics)
	c.startAll()
	t.Logf("partitions settled in %v", c.awaitSettled("start").Round(time.Millisecond))
	log := newAckLog(topics)
	epochs := c.warmUp(log, topics, "warmup")

	// The zombie is the owner of a topic chosen at random.
	target := topics[rng.IntN(len(topics))]
	before := map[string]lease{}
	for _, tp := range topics {
		before[tp] = c.owner(tp)
	}
	zombie := c.node(before[target].owner)
	var led []string
	for _, tp := range topics {
		if before[tp].owner == zombie.name {
			led = append(led, tp)
		}
	}
	t.Logf("leases %v; pausing %s, the owner of %v", before, zombie.name, led)

	const publishers, window = 4, 16
	l := c.startLoad(log, topics, "pause", publishers, window)
	l.awaitAcks(20*time.Second, nil, 50, "before the pause")
	pausedAt := time.Now()
	l.stats.fault(pausedAt)
	c.pause(zombie)
	// The followers take over once the zombie's leases are stale.
	poll(t, 10*clusterLeaseTTL, 20*time.Millisecond, fmt.Sprintf("the partitions of %v move from the paused %s", led, zombie.name), func() bool {
		ls, _, err := c.leases()
		if err != nil {
			return false
		}
		for _, tp := range led {
			if l := ls[topicPartition(tp)]; l.owner == "" || l.owner == zombie.name {
				return false
			}
		}
		return true
	})
	moved := time.Since(pausedAt)
	l.awaitAcks(20*time.Second, l.acked(), 100, "while "+zombie.name+" is paused")
	if d := 3*clusterLeaseTTL - time.Since(pausedAt); d > 0 {
		time.Sleep(d) // the pause lasts three lease TTLs
	}
	after := map[string]lease{}
	for _, tp := range topics {
		after[tp] = c.owner(tp)
	}
	c.resume(zombie)
	resumedAt := time.Now()
	l.finish()
	log.checkAcks(t)
	t.Logf("%s paused for %v; its partitions moved after %v; leases then %v; %v",
		zombie.name, time.Since(pausedAt).Round(time.Millisecond), moved.Round(time.Millisecond), after, l.stats)
	for _, tp := range led {
		if after[tp].term <= before[tp].term {
			t.Errorf("%s: lease %v after the pause, %v before: the term did not grow", tp, after[tp], before[tp])
		}
	}

	// Publish through every node, the resumed zombie first, for a few
	// seconds, while it finds out that it lost its leases.
	l = c.startLoad(log, topics, "resumed", publishers, window)
	zi := slices.Index(c.nodes, zombie)
	l2 := c.startLoadOn(log, topics, "zombie", []int{zi}, window)
	start := l.acked()
	l.awaitAcks(20*time.Second, start, 100, "after the resume")
	l2.awaitAcks(20*time.Second, nil, 50, "through the resumed "+zombie.name)
	if d := 3*clusterLeaseTTL - time.Since(resumedAt); d > 0 {
		time.Sleep(d) // a few seconds of load after the resume
	}
	l.finish()
	l2.finish()
	log.checkAcks(t)
	t.Logf("after the resume: %d acks, %d through %s; %v", l.total.Load(), l2.total.Load(), zombie.name, l2.stats)
	c.verifyServed("after the resume", log, epochs)
	if t.Failed() {
		return
	}
	c.verifyLocal(log, epochs)
}
