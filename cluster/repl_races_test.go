package cluster_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

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
