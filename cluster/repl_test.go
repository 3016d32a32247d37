package cluster_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// waitListed waits until topic's owner names a follower in its lease, and
// returns it.
func waitListed(t *testing.T, nodes []*testNode, owner *testNode, topic string) *testNode {
	t.Helper()
	var name string
	waitFor(t, "a follower named in the lease", func() bool {
		_, listed := owner.Node.Followers(topic)
		if len(listed) == 1 {
			name = listed[0]
			return true
		}
		return false
	})
	for _, tn := range nodes {
		if tn.name == name {
			return tn
		}
	}
	t.Fatalf("follower %q is not a node", name)
	return nil
}

type acked struct {
	epoch  string
	offset uint64
	data   string
	sent   time.Time // when the publish was sent
	at     time.Time // when it was acknowledged
}

func TestReplicatedFailoverKeepsEpoch(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "repl", 3, 2)
	owner := nodes[1]
	topic := topicOwnedBy(t, owner, "orders.")
	waitListed(t, nodes, owner, topic)
	var others []*testNode
	for _, tn := range nodes {
		if tn != owner {
			others = append(others, tn)
		}
	}

	// A live subscriber on a surviving node sees every acknowledged record.
	cs := connect(t, others[0])
	ok := mustOK(t, cs.do(map[string]any{"op": "sub", "topic": topic, "from": 1}))

	var mu sync.Mutex
	var acks []acked
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g, tn := range others {
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					data := fmt.Sprintf(`"%d-%d-%d"`, g, w, i)
					sent := time.Now()
					ap, err := tn.Node.Append(t.Context(), topic, []byte(data), "")
					if err != nil {
						continue // unavailable while the partition moves
					}
					mu.Lock()
					acks = append(acks, acked{ap.Epoch, ap.Offset, data, sent, time.Now()})
					mu.Unlock()
				}
			}()
		}
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acks) }
	waitFor(t, "acknowledged publishes", func() bool { return count() >= 200 })
	_, oldTerm := owner.Node.Owner(topic)
	killed := time.Now()
	owner.kill()
	waitSpread(t, others)
	// The new owner is a follower named in the lease (else the epoch
	// would change, which the checks below catch).
	var follower *testNode
	for _, tn := range others {
		if o, _ := tn.Node.Owner(topic); o == tn.name {
			follower = tn
		}
	}
	if follower == nil {
		t.Fatal("no new owner among the surviving nodes")
	}
	t.Logf("partitions moved in %v", time.Since(killed).Round(time.Millisecond))
	before := count()
	waitFor(t, "publishes after the failover", func() bool { return count() >= before+100 })
	close(stop)
	wg.Wait()

	epoch := ok["epoch"].(string)
	seen := map[uint64]bool{}
	var lastBefore, firstAfter uint64
	for _, a := range acks {
		if a.epoch != epoch {
			t.Fatalf("record %d acknowledged in epoch %s, want %s", a.offset, a.epoch, epoch)
		}
		if seen[a.offset] {
			t.Fatalf("offset %d acknowledged twice", a.offset)
		}
		seen[a.offset] = true
		if a.at.Before(killed) {
			lastBefore = max(lastBefore, a.offset)
		}
		if a.sent.After(killed) && (firstAfter == 0 || a.offset < firstAfter) {
			firstAfter = a.offset
		}
	}
	if firstAfter <= lastBefore {
		t.Fatalf("first offset acknowledged after the failover %d, last before %d", firstAfter, lastBefore)
	}
	t.Logf("%d publishes acknowledged; last before the kill %d, first after %d", len(acks), lastBefore, firstAfter)

	// Every acknowledged record is on the new owner and readable from
	// every node, at its offset.
	want := map[uint64]string{}
	var head uint64
	for _, a := range acks {
		want[a.offset] = a.data
		head = max(head, a.offset)
	}
	check := func(who string, read func(from uint64) ([]broker.Record, error)) {
		got := map[uint64]string{}
		for from := uint64(1); from <= head; {
			recs, err := read(from)
			if err != nil {
				t.Fatalf("%s: read from %d: %v", who, from, err)
			}
			if len(recs) == 0 {
				break
			}
			for _, r := range recs {
				if r.Offset != from {
					t.Fatalf("%s: offset %d where %d was expected", who, r.Offset, from)
				}
				got[r.Offset] = string(r.Data)
				from++
			}
		}
		for off, data := range want {
			if got[off] != data {
				t.Fatalf("%s: offset %d holds %q, want %q", who, off, got[off], data)
			}
		}
	}
	check("new owner's store", func(from uint64) ([]broker.Record, error) {
		return follower.Store.Read(topic, from, 1000, 1<<20)
	})
	for _, tn := range others {
		check(tn.name, func(from uint64) ([]broker.Record, error) { return tn.Node.Read(topic, from, 1000, 1<<20) })
	}

	// The new owner's follower is brought up to date, and refuses what
	// the old owner (a zombie of the old term) would still send.
	var other *testNode
	for _, tn := range others {
		if tn != follower {
			other = tn
		}
	}
	waitFor(t, "the new follower up to date", func() bool {
		ti, _, _ := other.Store.Topic(topic)
		return ti.Epoch == epoch && ti.Head >= head
	})
	check("new follower's store", func(from uint64) ([]broker.Record, error) {
		return other.Store.Read(topic, from, 1000, 1<<20)
	})
	if _, newTerm := follower.Node.Owner(topic); newTerm <= oldTerm {
		t.Fatalf("term %d after the failover, %d before", newTerm, oldTerm)
	}
	zombie := []broker.Record{{Offset: head + 1000, Time: time.Now().UnixMilli(), Data: []byte(`"zombie"`)}}
	if st, _, err := follower.Node.SendReplica(other.name, topic, oldTerm, epoch, zombie); err != nil || st != "stale" {
		t.Fatalf("records of the old term: %q %v, want stale", st, err)
	}

	// The subscriber saw the acknowledged records live, in order.
	evs := cs.wait("live records", func(evs []map[string]any) bool {
		got := msgs(evs, topic)
		return len(got) > 0 && got[len(got)-1] >= head
	})
	got := msgs(evs, topic)
	if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Fatalf("live offsets out of order or repeated")
	}
	// A client resuming with the epoch it had carries on.
	for _, tn := range others {
		cl := connect(t, tn)
		ev := cl.do(map[string]any{"op": "sub", "topic": topic, "from": lastBefore + 1, "epoch": epoch})
		if ev["op"] != "ok" {
			t.Fatalf("resume on %s: %v", tn.name, ev)
		}
	}
}

func TestFollowerCatchesUpAfterMissingRecords(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "gap", 3, 2)
	owner := nodes[0]
	topic := topicOwnedBy(t, owner, "gap.")
	follower := waitListed(t, nodes, owner, topic)
	for i := range 10 {
		if _, err := owner.Node.Append(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	resume := follower.Node.PauseFollowing()
	const k = 30
	errs := make(chan error, k)
	for i := range k {
		owner.Node.AppendAsync(topic, []byte(fmt.Sprint(100+i)), "", func(_ broker.Appended, err error) { errs <- err })
	}
	time.Sleep(300 * time.Millisecond)
	if ti, _, _ := follower.Store.Topic(topic); ti.Head != 10 {
		t.Fatalf("paused follower holds %d records, want 10", ti.Head)
	}
	// Nothing unreplicated is visible.
	if ti, _, _ := owner.Node.Topic(topic); ti.Head != 10 {
		t.Fatalf("owner shows head %d before the copies, want 10", ti.Head)
	}
	resume()
	if _, err := owner.Node.Append(t.Context(), topic, []byte(`"last"`), ""); err != nil {
		t.Fatal(err)
	}
	for range k {
		if err := <-errs; err != nil {
			t.Fatalf("publish while the follower was away: %v", err)
		}
	}
	ti, _, _ := follower.Store.Topic(topic)
	oi, _, _ := owner.Store.Topic(topic)
	if ti.Head != 10+k+1 || oi.Head != ti.Head || ti.Epoch != oi.Epoch {
		t.Fatalf("follower %+v, owner %+v", ti, oi)
	}
}

func TestStaleTermRefused(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "fence", 3, 2)
	owner := nodes[2]
	topic := topicOwnedBy(t, owner, "fence.")
	follower := waitListed(t, nodes, owner, topic)
	ap, err := owner.Node.Append(t.Context(), topic, []byte(`1`), "")
	if err != nil {
		t.Fatal(err)
	}
	_, term := owner.Node.Owner(topic)
	rec := []broker.Record{{Offset: ap.Offset + 1, Time: ap.Time, Data: []byte(`"zombie"`)}}
	st, _, err := owner.Node.SendReplica(follower.name, topic, term-1, ap.Epoch, rec)
	if err != nil || st != "stale" {
		t.Fatalf("older term: %q %v, want stale", st, err)
	}
	// A node refuses records of a partition it holds itself.
	st, _, err = follower.Node.SendReplica(owner.name, topic, term, ap.Epoch, rec)
	if err != nil || st != "stale" {
		t.Fatalf("to the owner: %q %v, want stale", st, err)
	}
	if ti, _, _ := follower.Store.Topic(topic); ti.Head != ap.Offset {
		t.Fatalf("follower head %d, want %d", ti.Head, ap.Offset)
	}
}

func TestReplicatedDrainKeepsEpoch(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "rdrain", 3, 2)
	owner := nodes[0]
	topic := topicOwnedBy(t, owner, "drain.")
	waitListed(t, nodes, owner, topic)
	c := connect(t, nodes[1])
	var last map[string]any
	for i := range 20 {
		last = mustOK(t, c.pub(topic, fmt.Sprint(i), ""))
	}
	epoch := mustOK(t, c.do(map[string]any{"op": "sub", "topic": topic, "from": 1}))["epoch"]
	if err := owner.Node.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitSpread(t, nodes[1:])
	t.Logf("hand-over took %v", time.Since(start).Round(time.Millisecond))
	ok := mustOK(t, c.pub(topic, `"after"`, ""))
	t.Logf("first publish after %v", time.Since(start).Round(time.Millisecond))
	if num(ok["offset"]) != num(last["offset"])+1 {
		t.Fatalf("after the drain: %v, last before %v", ok, last)
	}
	cl := connect(t, nodes[2])
	sub := mustOK(t, cl.do(map[string]any{"op": "sub", "topic": topic, "from": 1, "epoch": epoch}))
	if sub["epoch"] != epoch || num(sub["head"]) != 21 {
		t.Fatalf("resume after the drain: %v, epoch %v", sub, epoch)
	}
	cl.wait("replay", func(evs []map[string]any) bool { return len(msgs(evs, topic)) == 21 })
}

// A copy that holds no record yet starts only at the owner's first (or
// earliest) record: a later record sent first is a gap, not a new start
// that would leave a hole below it.
func TestEmptyCopyStartsAtTheFirstRecord(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "empty", 3, 2)
	owner := nodes[0]
	topic := topicOwnedBy(t, owner, "empty.")
	follower := waitListed(t, nodes, owner, topic)
	other := nodeBesides(nodes, owner, follower)
	var recs []broker.Record
	for i := range 3 {
		ap, err := owner.Node.Append(t.Context(), topic, fmt.Appendf(nil, `%d`, i), "")
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, broker.Record{Offset: ap.Offset, Time: ap.Time, Data: fmt.Appendf(nil, `%d`, i)})
	}
	if _, ok, _ := other.Store.Topic(topic); ok {
		t.Fatalf("%s, not a follower, holds %s", other.name, topic)
	}
	_, term := owner.Node.Owner(topic)
	ti, _, _ := owner.Store.Topic(topic)
	// Agreeing on nothing leaves an empty copy that takes records.
	if st, off, err := owner.Node.SendAgreement(other.name, topic, term, ti.Epoch, 0); err != nil || st != "ok" || off != 0 {
		t.Fatalf("agreement on nothing: %q %d %v", st, off, err)
	}
	if st, off, err := owner.Node.SendReplica(other.name, topic, term, ti.Epoch, recs[2:]); err != nil || st != "gap" || off != 1 {
		t.Fatalf("the third record first: %q %d %v, want gap from 1", st, off, err)
	}
	if st, off, err := owner.Node.SendReplica(other.name, topic, term, ti.Epoch, recs); err != nil || st != "ok" || off != 3 {
		t.Fatalf("every record: %q %d %v, want ok 3", st, off, err)
	}
	got, _, _ := other.Store.Topic(topic)
	if got.Earliest != 1 || got.Head != 3 || got.Count != 3 {
		t.Fatalf("copy %+v, want records 1 to 3", got)
	}
}
