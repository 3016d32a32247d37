package cluster_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/brokerd/brokerd/broker"
)

// An Ensure of a new topic creates it on the followers too. Racing the
// topic's first publish, that must never take from a follower the record
// it has just confirmed (the ok already sent): the follower's copy holds
// every acknowledged record once both are done.
func TestEnsureRacingFirstPublishKeepsTheCopy(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "ensrace", 2, 2)
	owner := nodes[0]
	first := topicOwnedBy(t, owner, "warm.")
	f := waitListed(t, nodes, owner, first)
	tried := 0
	for i := 0; i < 5000 && tried < 200; i++ {
		topic := fmt.Sprintf("ens.%d", i)
		if owner.Node.Partition(topic) != owner.Node.Partition(first) {
			continue
		}
		tried++
		var (
			wg   sync.WaitGroup
			a    broker.Appended
			aerr error
		)
		wg.Go(func() { _, _ = owner.Node.Ensure(t.Context(), topic) })
		wg.Go(func() { a, aerr = owner.Node.Append(t.Context(), topic, []byte(`"x"`), "") })
		wg.Wait()
		if aerr != nil {
			t.Fatalf("%s: %v", topic, aerr)
		}
		// Ensure waited for the follower's answers: nothing is in flight.
		if ti, ok, _ := f.Store.Topic(topic); !ok || ti.Head < a.Offset || ti.Epoch != a.Epoch {
			t.Fatalf("%s: offset %d acknowledged, the follower holds %+v (found %v)", topic, a.Offset, ti, ok)
		}
	}
}

// A replication request lost on the way (here: the follower's
// subscription gone for a moment) is sent again when the topic's
// acknowledgements stall, without waiting for another record: the
// publish waiting for it is answered ok once the follower is back.
func TestLostReplicationIsSentAgain(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "resend", 2, 2)
	owner := nodes[0]
	topic := topicOwnedBy(t, owner, "resend.")
	f := waitListed(t, nodes, owner, topic)
	if _, err := owner.Node.Append(t.Context(), topic, []byte(`"a"`), ""); err != nil {
		t.Fatal(err)
	}
	resends := owner.Node.Stats().Resends
	resume := f.Node.PauseFollowing()
	done := make(chan error, 1)
	sent := time.Now()
	owner.Node.AppendAsync(topic, []byte(`"b"`), "kb", func(_ broker.Appended, err error) { done <- err })
	time.Sleep(200 * time.Millisecond)
	if ti, _, _ := f.Store.Topic(topic); ti.Head != 1 {
		t.Fatalf("the paused follower holds %d records, want 1", ti.Head)
	}
	resume()
	if err := <-done; err != nil {
		t.Fatalf("the publish sent while the follower was away: %v after %v", err, time.Since(sent))
	}
	t.Logf("answered ok %v after it was sent", time.Since(sent).Round(time.Millisecond))
	if s := owner.Node.Stats(); s.Resends <= resends {
		t.Errorf("resends counted %d, %d before", s.Resends, resends)
	}
	recs, err := owner.Node.Read(topic, 1, 10, 1<<20)
	if err != nil || len(recs) != 2 {
		t.Fatalf("the owner serves %d records (%v), want 2", len(recs), err)
	}
	if ti, _, _ := f.Store.Topic(topic); ti.Head != 2 {
		t.Fatalf("the follower holds %d records, want 2", ti.Head)
	}
}

// The owner's local store shows a record once it is committed, a moment
// before the commit hook hands it to replication: reads of the owner must
// not show it before its copies are confirmed, however soon they come.
func TestOwnerReadsWaitForCopies(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "capread", 2, 2)
	owner := nodes[0]
	topic := topicOwnedBy(t, owner, "cap.")
	f := waitListed(t, nodes, owner, topic)
	if _, err := owner.Node.Append(t.Context(), topic, []byte(`"acked"`), ""); err != nil {
		t.Fatal(err)
	}
	checkReadsWaitForCopies(t, owner, f, topic, 1)
}

// The same on a follower that took the partition over: its first append
// to a topic it holds is not shown before its new follower has it.
func TestNewOwnerReadsWaitForCopies(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "capread2", 3, 2)
	owner := nodes[0]
	topic := topicOwnedBy(t, owner, "cap.")
	waitListed(t, nodes, owner, topic)
	for i := range 5 {
		if _, err := owner.Node.Append(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	owner.kill()
	others := []*testNode{nodes[1], nodes[2]}
	var next *testNode
	waitFor(t, "a new owner with a follower in sync", func() bool {
		for _, tn := range others {
			if o, _ := tn.Node.Owner(topic); o == tn.name {
				if _, listed := tn.Node.Followers(topic); len(listed) == 1 {
					next = tn
					return true
				}
			}
		}
		return false
	})
	f := nodeBesides(others, next)
	if ti, _, _ := next.Node.Topic(topic); ti.Head != 5 {
		t.Fatalf("the new owner shows head %d, want 5", ti.Head)
	}
	checkReadsWaitForCopies(t, next, f, topic, 5)
}

// checkReadsWaitForCopies pauses follower f and widens the moment between
// owner's commits and its commit hook, appends to topic, whose head is
// head, and fails if owner's Read or Topic shows a record past head.
func checkReadsWaitForCopies(t *testing.T, owner, f *testNode, topic string, head uint64) {
	t.Helper()
	hook := owner.Node.LocalCommitHook()
	owner.Store.SetCommitHook(func(b []broker.Committed) {
		time.Sleep(20 * time.Millisecond)
		hook(b)
	})
	resume := f.Node.PauseFollowing()
	defer resume()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seen []string
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if recs, err := owner.Node.Read(topic, head+1, 10, 1<<20); err == nil && len(recs) > 0 {
				seen = append(seen, fmt.Sprintf("read offset %d", recs[0].Offset))
			}
			if ti, _, err := owner.Node.Topic(topic); err == nil && ti.Head > head {
				seen = append(seen, fmt.Sprintf("head %d", ti.Head))
			}
		}
	})
	for i := range 20 {
		owner.Node.AppendAsync(topic, []byte(fmt.Sprint(i)), "", func(broker.Appended, error) {})
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	if len(seen) > 0 {
		t.Fatalf("records not yet copied were visible on the owner %d times, first: %s", len(seen), seen[0])
	}
}

// A lease bucket made anew (NATS's JetStream data lost) starts its
// revisions, and so the partitions' terms, over. Nodes restarted on their
// data must not refuse the new, lower terms as stale: the cluster takes
// publishes again (the histories start new epochs: nobody can vouch for
// them).
func TestLeaseBucketMadeAnew(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "anew", 2, 2)
	topic := topicOwnedBy(t, nodes[0], "anew.")
	waitListed(t, nodes, nodes[0], topic)
	// A failover and a hand-back: terms well above those a new bucket
	// starts with (its first leases take revisions 1, 2, …).
	nodes[0].kill()
	waitFor(t, "the other node takes every partition", func() bool { return len(nodes[1].Node.Owned()) == partitions })
	nodes[0] = restartNode(t, url, "anew", nodes[0], 2)
	waitSpread(t, nodes)
	for i := range 5 {
		if _, err := nodes[1].Node.Append(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	_, term := nodes[1].Node.Owner(topic)
	if term <= 2*partitions {
		t.Fatalf("term %d: not above what a new bucket starts with", term)
	}
	for _, tn := range nodes {
		tn.kill()
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(t.Context(), "brokerd_anew_leases"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // distinct creation times
	for i := range nodes {
		nodes[i] = restartNode(t, url, "anew", nodes[i], 2)
	}
	waitSpread(t, nodes)
	a, err := nodes[1].Node.Append(t.Context(), topic, []byte(`"after"`), "")
	if err != nil {
		t.Fatalf("publishing after the lease bucket was made anew: %v", err)
	}
	if a.Offset != 1 {
		t.Logf("offset %d in epoch %s", a.Offset, a.Epoch)
	}
}

// A renewal refused while a follower is being brought up to date: once
// the lease is claimed back in the same term, the follower still ends up
// in sync and named in the lease.
func TestFollowerSyncSurvivesLeaseInDoubt(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	a := startNodeR(t, url, "doubt", "n1", 0)
	waitSpread(t, []*testNode{a})
	topic := topicOwnedBy(t, a, "big.")
	fill(t, a, topic, 60000)
	startNodeR(t, url, "doubt", "n2", 0)
	waitFor(t, "n2 being brought up to date", func() bool { return len(a.Node.Syncing(topic)) > 0 })
	time.Sleep(20 * time.Millisecond)
	a.Node.RefuseRenewal(topic)
	waitFor(t, "the lease claimed back", func() bool { return a.Node.Serving(topic) })
	waitFor(t, "n2 named in the lease", func() bool {
		_, listed := a.Node.Followers(topic)
		return len(listed) == 1
	})
}

// A record committed while its owner's lease was in doubt (the commit
// hook passes it by) and whose publisher retries with the same key once
// the lease is claimed back: the retry is answered ok only once the
// follower holds it, and the owner does not serve it before.
func TestRecordCommittedInDoubtIsReplicated(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "doubt2", 2, 2)
	owner := nodes[0]
	first := topicOwnedBy(t, owner, "warm.")
	f := waitListed(t, nodes, owner, first)
	var topic string
	for i := range 10000 {
		topic = fmt.Sprintf("fresh.%d", i)
		if owner.Node.Partition(topic) == owner.Node.Partition(first) {
			break
		}
	}
	owner.Node.MarkBeforeAppend(topic)
	owner.Node.RefuseRenewal(topic)
	// The append, in flight when the renewal was refused, commits now.
	if _, err := owner.Store.Append(t.Context(), topic, []byte(`"in doubt"`), "k1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the lease claimed back", func() bool { return owner.Node.Serving(topic) })
	if recs, err := owner.Node.Read(topic, 1, 10, 1<<20); err != nil || len(recs) > 0 {
		t.Fatalf("the owner serves %d records (%v) that no follower holds", len(recs), err)
	}
	a, err := owner.Node.Append(t.Context(), topic, []byte(`"in doubt"`), "k1")
	if err != nil {
		t.Fatalf("retry with the same key: %v", err)
	}
	if !a.Dup || a.Offset != 1 {
		t.Fatalf("retry answered %+v, want offset 1, dup", a)
	}
	if ti, ok, _ := f.Store.Topic(topic); !ok || ti.Head < 1 {
		t.Fatalf("retry answered ok, the follower holds %+v (found %v)", ti, ok)
	}
	if recs, err := owner.Node.Read(topic, 1, 10, 1<<20); err != nil || len(recs) != 1 {
		t.Fatalf("the owner serves %d records (%v), want 1", len(recs), err)
	}
}
