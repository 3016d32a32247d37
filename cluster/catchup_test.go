package cluster_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
)

var catchUpRecords = flag.Int("catchup.records", 20_000, "records of the topic a joining node catches up in TestCatchUpKeepsLiveTraffic")

// TestCatchUpKeepsLiveTraffic gives one node's topic a long history, then
// starts a second node, which becomes the follower of every partition and
// catches the history up in pages, while publishers keep publishing to
// that topic and to others. It checks the copy and reports how long the
// catch-up took and how long publishes waited meanwhile (-v; a larger
// -catchup.records for a real measure).
func TestCatchUpKeepsLiveTraffic(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	a := startNodeR(t, url, "catchup", "n1", 0)
	big := topicOwnedBy(t, a, "big.")
	others := []string{"other.1", "other.2", "other.3"}
	if _, err := a.Node.Ensure(t.Context(), big); err != nil {
		t.Fatal(err)
	}
	data := []byte(`"` + string(slices.Repeat([]byte("x"), 100)) + `"`)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 64 {
		wg.Go(func() {
			for range next {
				if _, err := a.Node.Append(t.Context(), big, data, ""); err != nil {
					t.Error(err)
				}
			}
		})
	}
	start := time.Now()
	for i := range *catchUpRecords {
		next <- i
	}
	close(next)
	wg.Wait()
	t.Logf("%d records of %s written in %v", *catchUpRecords, big, time.Since(start).Round(time.Millisecond))

	// Publishers, one per topic, each waiting for its ok.
	type stat struct {
		acks, unavailable int
		longest           time.Duration
	}
	ctx, stop := context.WithCancel(t.Context())
	var smu sync.Mutex
	stats := map[string]*stat{}
	for _, topic := range append([]string{big}, others...) {
		s := &stat{}
		stats[topic] = s
		wg.Go(func() {
			for ctx.Err() == nil {
				sent := time.Now()
				_, err := a.Node.Append(ctx, topic, []byte(`"live"`), "")
				took := time.Since(sent)
				smu.Lock()
				switch {
				case ctx.Err() != nil:
				case errors.Is(err, broker.ErrUnavailable):
					// A partition handed over while the publish
					// waited: a client publishes again.
					s.unavailable++
				case err != nil:
					t.Errorf("publishing to %s: %v", topic, err)
				default:
					s.acks++
					s.longest = max(s.longest, took)
				}
				smu.Unlock()
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	joined := time.Now()
	b := startNodeR(t, url, "catchup", "n2", 0)
	nodes := []*testNode{a, b}
	// In sync: the topic's owner, whichever node it is now, names the
	// other as a follower holding every acknowledged record.
	inSync := func(topic string) bool {
		for _, tn := range nodes {
			if o, _ := tn.Node.Owner(topic); o == tn.name {
				_, listed := tn.Node.Followers(topic)
				return len(listed) == 1
			}
		}
		return false
	}
	allInSync := func() bool {
		for _, topic := range append([]string{big}, others...) {
			if !inSync(topic) {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !allInSync() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	caughtUp := time.Since(joined)
	time.Sleep(200 * time.Millisecond)
	stop()
	wg.Wait()
	// Partitions handed to the new node for balance meanwhile name their
	// follower a moment after the hand-over: in sync again soon.
	waitFor(t, fmt.Sprintf("every topic with a follower in sync (first after %v)", caughtUp), allInSync)
	// Both copies of the big topic end the same, from offset 1.
	same := func() (bool, string) {
		ai, _, _ := a.Store.Topic(big)
		bi, _, _ := b.Store.Topic(big)
		return bi.Epoch == ai.Epoch && bi.Earliest == 1 && ai.Earliest == 1 && bi.Head == ai.Head && bi.Count == ai.Count,
			fmt.Sprintf("%s %+v, %s %+v", a.name, ai, b.name, bi)
	}
	waitFor(t, "both copies of "+big+" the same", func() bool { ok, _ := same(); return ok })
	var parts []string
	for _, topic := range append([]string{big}, others...) {
		s := stats[topic]
		parts = append(parts, fmt.Sprintf("%s: %d acks, longest wait %v, %d unavailable", topic, s.acks, s.longest.Round(time.Millisecond), s.unavailable))
	}
	t.Logf("%s in sync after %v (%.0f records/s); during the catch-up and 300 ms around it: %v",
		b.name, caughtUp.Round(time.Millisecond), float64(*catchUpRecords)/caughtUp.Seconds(), parts)
	for topic, s := range stats {
		if s.acks == 0 {
			t.Errorf("no publish to %s was acknowledged", topic)
		}
	}
}

// With automatic replicas a follower still copying the history does not
// hold publishes up: a copy on it could not take the partition over yet.
// Once it has the history it counts, and it is named in the lease holding
// every record acknowledged meanwhile.
func TestAutomaticReplicasDoNotWaitForACopy(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	a := startNodeR(t, url, "nowait", "n1", 0)
	waitSpread(t, []*testNode{a})
	topic := topicOwnedBy(t, a, "big.")
	fill(t, a, topic, 60000)
	b := startNodeR(t, url, "nowait", "n2", 0)
	waitFor(t, "n2 copying the history", func() bool { return len(a.Node.Syncing(topic)) > 0 })
	var last broker.Appended
	for i := range 10 {
		ap, err := a.Node.Append(t.Context(), topic, []byte(fmt.Sprintf(`"during %d"`, i)), "")
		if err != nil {
			t.Fatal(err)
		}
		last = ap
	}
	if len(a.Node.Syncing(topic)) == 0 {
		t.Fatal("the copy ended before the publishes were answered: they may have waited for it")
	}
	waitFor(t, "n2 named in the lease", func() bool {
		_, listed := a.Node.Followers(topic)
		return len(listed) == 1
	})
	if ti, _, _ := b.Store.Topic(topic); ti.Head < last.Offset || ti.Epoch != last.Epoch {
		t.Fatalf("n2 named in the lease holds %+v; offset %d of epoch %s was acknowledged", ti, last.Offset, last.Epoch)
	}
}
