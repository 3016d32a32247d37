package cluster_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

// With three copies the loss of two nodes at once, the owner and one of
// its followers, loses no acknowledged record: the last follower named in
// the lease takes the partition over in the same epoch, and publishing
// carries on with three copies on the nodes left.
func TestThreeCopiesSurviveTwoFailures(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "three", 5, 3)
	owner := nodes[0]
	topic := topicOwnedBy(t, owner, "three.")
	var listed []string
	waitFor(t, "two followers named in the lease", func() bool {
		_, listed = owner.Node.Followers(topic)
		return len(listed) == 2
	})
	victims := []*testNode{owner}
	for _, tn := range nodes {
		if tn.name == listed[0] {
			victims = append(victims, tn)
		}
	}
	var others []*testNode
	for _, tn := range nodes {
		if !slices.Contains(victims, tn) {
			others = append(others, tn)
		}
	}

	var (
		mu   sync.Mutex
		acks []acked
		wg   sync.WaitGroup
	)
	stop := make(chan struct{})
	for g, tn := range others {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				data := fmt.Sprintf(`"%d-%d"`, g, i)
				a, err := tn.Node.Append(t.Context(), topic, []byte(data), "")
				if err != nil {
					continue // unavailable while the partition moves
				}
				mu.Lock()
				acks = append(acks, acked{epoch: a.Epoch, offset: a.Offset, data: data})
				mu.Unlock()
			}
		})
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acks) }
	waitFor(t, "acknowledged publishes", func() bool { return count() >= 200 })
	ti, _, _ := owner.Store.Topic(topic)
	for _, v := range victims {
		v.kill()
	}
	before := count()
	waitFor(t, "publishes after the two failures", func() bool { return count() >= before+200 })
	close(stop)
	wg.Wait()

	var next *testNode
	for _, tn := range others {
		if o, _ := tn.Node.Owner(topic); o == tn.name {
			next = tn
		}
	}
	if next == nil {
		t.Fatalf("no node left owns the partition")
	}
	if next.name != listed[1] {
		// The follower left took it over (the one epoch below proves that
		// no node without its history did) and the partitions were then
		// balanced over the nodes left, which takes longer on a loaded
		// machine than the publishes do.
		t.Logf("%s owns the partition now, after %s, the follower left, took it over", next.name, listed[1])
	}
	want := map[uint64]string{}
	var head uint64
	for _, a := range acks {
		if a.epoch != ti.Epoch {
			t.Fatalf("offset %d acknowledged in epoch %s, want %s", a.offset, a.epoch, ti.Epoch)
		}
		if _, dup := want[a.offset]; dup {
			t.Fatalf("offset %d acknowledged twice", a.offset)
		}
		want[a.offset] = a.data
		head = max(head, a.offset)
	}
	for _, tn := range others {
		got := map[uint64]string{}
		for from := uint64(1); from <= head; {
			recs, err := tn.Node.Read(topic, from, 1000, 1<<20)
			if err != nil {
				t.Fatalf("%s: read from %d: %v", tn.name, from, err)
			}
			if len(recs) == 0 {
				break
			}
			for _, r := range recs {
				if r.Offset != from {
					t.Fatalf("%s: offset %d where %d was expected", tn.name, r.Offset, from)
				}
				got[r.Offset] = string(r.Data)
				from++
			}
		}
		for off, data := range want {
			if got[off] != data {
				t.Fatalf("%s: offset %d holds %q, want %q", tn.name, off, got[off], data)
			}
		}
	}
	// Three copies again: the new owner names two followers in sync.
	waitFor(t, "two followers named again", func() bool {
		_, l := next.Node.Followers(topic)
		return len(l) == 2
	})
	t.Logf("%d acknowledged, head %d, one epoch; %s took over from %s and %s", len(acks), head, next.name, victims[0].name, victims[1].name)
}
