package cluster_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// TestJoiningNodeGetsPartitionsWithHistory starts two nodes, gives many
// partitions a history, then starts a third: it must get its share of the
// partitions, and only as a follower holding their history, so that every
// topic keeps its epoch and its records.
func TestJoiningNodeGetsPartitionsWithHistory(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "join", 2, 2)
	a := nodes[0]
	type topicState struct {
		epoch string
		head  uint64
	}
	want := map[string]topicState{}
	for i := range 4 * partitions {
		topic := fmt.Sprintf("join.%d", i)
		var ap broker.Appended
		for j := range 5 {
			var err error
			if ap, err = a.Node.Append(t.Context(), topic, fmt.Appendf(nil, `"%d-%d"`, i, j), ""); err != nil {
				t.Fatal(err)
			}
		}
		want[topic] = topicState{ap.Epoch, ap.Offset}
	}
	c := startNodeR(t, url, "join", "n3", 2)
	nodes = append(nodes, c)
	start := time.Now()
	waitSpread(t, nodes)
	t.Logf("spread over three nodes in %v", time.Since(start).Round(time.Millisecond))
	owned := 0
	for topic, w := range want {
		if o, _ := c.Node.Owner(topic); o == c.name {
			owned++
			// The new owner holds the history itself.
			if ti, ok, _ := c.Store.Topic(topic); !ok || ti.Epoch != w.epoch || ti.Head != w.head {
				t.Errorf("%s on its new owner: %+v, want epoch %s head %d", topic, ti, w.epoch, w.head)
			}
		}
		for _, tn := range nodes {
			ti, ok, err := tn.Node.Topic(topic)
			if err != nil || !ok || ti.Epoch != w.epoch || ti.Head != w.head {
				t.Errorf("%s read on %s: %+v %v %v, want epoch %s head %d", topic, tn.name, ti, ok, err, w.epoch, w.head)
			}
		}
	}
	if owned == 0 {
		t.Fatal("the new node owns none of the topics")
	}
	// Publishing goes on in the same epochs.
	for topic, w := range want {
		ap, err := c.Node.Append(t.Context(), topic, []byte(`"after"`), "")
		if err != nil || ap.Epoch != w.epoch || ap.Offset != w.head+1 {
			t.Fatalf("%s after the join: %+v %v, want epoch %s offset %d", topic, ap, err, w.epoch, w.head+1)
		}
	}
}

// TestConsumerPositionSurvivesOwnerDeath acks a durable consumer, kills
// the topic's owner, and resumes the consumer on another node.
func TestConsumerPositionSurvivesOwnerDeath(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "rcons", 3, 2)
	a, owner := nodes[0], nodes[1]
	topic := topicOwnedBy(t, owner, "jobs.")
	waitListed(t, nodes, owner, topic)
	for i := range 10 {
		if _, err := a.Node.Append(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	ca := connect(t, a)
	mustOK(t, ca.do(map[string]any{"op": "sub", "topic": topic, "consumer": "w", "from": "earliest"}))
	ca.wait("10 messages", func(evs []map[string]any) bool { return len(msgs(evs, topic)) >= 10 })
	mustOK(t, ca.do(map[string]any{"op": "ack", "topic": topic, "consumer": "w", "offset": 6}))
	ca.s.Closed(nil)
	owner.kill()

	c := nodes[2]
	cc := connect(t, c)
	var ok map[string]any
	waitFor(t, "the consumer resumes on a survivor", func() bool {
		ok = cc.do(map[string]any{"op": "sub", "topic": topic, "consumer": "w"})
		return ok["op"] == "ok"
	})
	if num(ok["from"]) != 7 {
		t.Fatalf("resume after the owner died: %v, want from 7", ok)
	}
	got := msgs(cc.wait("4 messages", func(evs []map[string]any) bool { return len(msgs(evs, topic)) >= 4 }), topic)
	if got[0] != 7 || got[3] != 10 {
		t.Fatalf("resumed at %v", got)
	}
}

// TestReturningOwnerDropsUnacknowledgedSuffix: an owner commits records
// its follower never gets (so they are never acknowledged) and dies; the
// follower takes over and publishes other records at those offsets; when
// the old owner comes back it must drop its suffix and copy the new
// owner's, not keep a log that differs from every other node's.
func TestReturningOwnerDropsUnacknowledgedSuffix(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	// Automatic replicas: the survivor alone keeps acknowledging.
	nodes := startClusterR(t, url, "diverge", 2, 0)
	a := nodes[0]
	topic := topicOwnedBy(t, a, "div.")
	b := waitListed(t, nodes, a, topic)
	for i := range 10 {
		if _, err := a.Node.Append(t.Context(), topic, fmt.Appendf(nil, `"a%d"`, i), ""); err != nil {
			t.Fatal(err)
		}
	}
	resume := b.Node.PauseFollowing()
	for i := range 5 {
		a.Node.AppendAsync(topic, fmt.Appendf(nil, `"lost%d"`, i), "", func(broker.Appended, error) {})
	}
	waitFor(t, "the owner's unacknowledged suffix", func() bool {
		ti, _, _ := a.Store.Topic(topic)
		return ti.Head == 15
	})
	a.kill()
	resume()
	var last broker.Appended
	waitFor(t, "the follower takes over", func() bool {
		ap, err := b.Node.Append(t.Context(), topic, []byte(`"b0"`), "k-b0")
		last = ap
		return err == nil
	})
	for i := 1; i < 8; i++ {
		var err error
		if last, err = b.Node.Append(t.Context(), topic, fmt.Appendf(nil, `"b%d"`, i), ""); err != nil {
			t.Fatal(err)
		}
	}
	if last.Offset != 18 {
		t.Fatalf("the new owner's last offset %d, want 18 (it continues at 11)", last.Offset)
	}
	a2 := restartNode(t, url, "diverge", a, 0)
	waitFor(t, "the old owner copies the new owner's log", func() bool {
		ti, _, _ := a2.Store.Topic(topic)
		return ti.Head == 18
	})
	ra, err := a2.Store.Read(topic, 1, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Store.Read(topic, 1, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(ra) != len(rb) {
		t.Fatalf("old owner holds %d records, new owner %d", len(ra), len(rb))
	}
	for i := range ra {
		if ra[i].Offset != rb[i].Offset || !bytes.Equal(ra[i].Data, rb[i].Data) || ra[i].Time != rb[i].Time {
			t.Fatalf("offset %d: old owner %s, new owner %s", rb[i].Offset, ra[i].Data, rb[i].Data)
		}
	}
}

// TestAutomaticReplicasAlone: with automatic replicas a node alone
// acknowledges on its own, and two nodes keep the epoch when one dies.
func TestAutomaticReplicas(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	a := startNodeR(t, url, "auto", "n1", 0)
	if _, err := a.Node.Append(t.Context(), "auto.x", []byte(`1`), ""); err != nil {
		t.Fatalf("alone: %v", err)
	}
	b := startNodeR(t, url, "auto", "n2", 0)
	nodes := []*testNode{a, b}
	waitSpread(t, nodes)
	owner, other := a, b
	if o, _ := a.Node.Owner("auto.x"); o == b.name {
		owner, other = b, a
	}
	waitListed(t, nodes, owner, "auto.x")
	ap, err := other.Node.Append(t.Context(), "auto.x", []byte(`2`), "")
	if err != nil || ap.Offset != 2 {
		t.Fatalf("two nodes: %+v %v", ap, err)
	}
	owner.kill()
	waitFor(t, "the survivor acknowledges alone", func() bool {
		next, err := other.Node.Append(t.Context(), "auto.x", []byte(`3`), "k3")
		if err != nil {
			return false
		}
		if next.Epoch != ap.Epoch || next.Offset != 3 {
			t.Fatalf("after the owner died: %+v, want epoch %s offset 3", next, ap.Epoch)
		}
		return true
	})
}

// TestEmptyTopicKeepsEpochOnFailover: a topic created by a subscribe has
// an epoch before its first record; the follower holds it too, so the
// owner's death does not change it.
func TestEmptyTopicKeepsEpochOnFailover(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "empty", 3, 2)
	a, owner := nodes[0], nodes[2]
	topic := topicOwnedBy(t, owner, "empty.")
	follower := waitListed(t, nodes, owner, topic)
	ca := connect(t, a)
	ok := mustOK(t, ca.do(map[string]any{"op": "sub", "topic": topic, "from": "earliest"}))
	epoch := ok["epoch"].(string)
	if ti, found, _ := follower.Store.Topic(topic); !found || ti.Epoch != epoch {
		t.Fatalf("the follower's copy of the empty topic: %+v %v, want epoch %s", ti, found, epoch)
	}
	owner.kill()
	var ap broker.Appended
	waitFor(t, "a publish after the failover", func() bool {
		var err error
		ap, err = a.Node.Append(t.Context(), topic, []byte(`1`), "k1")
		return err == nil
	})
	if ap.Epoch != epoch || ap.Offset != 1 {
		t.Fatalf("first record after the failover: %+v, want epoch %s offset 1", ap, epoch)
	}
}

// TestStaleCopyIsCheckedWithTheOwner gives a node that neither owns nor
// follows a partition a copy of one of its topics that holds records the
// owner's log does not (as a node killed while owning it keeps): checked
// with the owner, the copy keeps only what the owner's log holds.
func TestStaleCopyIsCheckedWithTheOwner(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "stale", 3, 2)
	owner := nodes[0]
	topic := topicOwnedBy(t, owner, "stale.")
	follower := waitListed(t, nodes, owner, topic)
	other := nodeBesides(nodes, owner, follower)
	for i := range 5 {
		if _, err := owner.Node.Append(t.Context(), topic, fmt.Appendf(nil, `"%d"`, i), ""); err != nil {
			t.Fatal(err)
		}
	}
	ti, _, _ := owner.Store.Topic(topic)
	recs, err := owner.Store.Read(topic, 1, 100, 1<<20)
	if err != nil || len(recs) != 5 {
		t.Fatal(len(recs), err)
	}
	// The stale copy: the owner's five records and three it never had.
	stale := append(recs, broker.Record{Offset: 6, Time: recs[4].Time, Data: []byte(`"lost"`)},
		broker.Record{Offset: 7, Time: recs[4].Time, Data: []byte(`"lost"`)},
		broker.Record{Offset: 8, Time: recs[4].Time, Data: []byte(`"lost"`)})
	if err := other.Store.AppendAt(topic, ti.Epoch, stale); err != nil {
		t.Fatal(err)
	}
	for i := 5; i < 7; i++ {
		if _, err := owner.Node.Append(t.Context(), topic, fmt.Appendf(nil, `"%d"`, i), ""); err != nil {
			t.Fatal(err)
		}
	}
	other.Node.CheckCopies(topic)
	got, ok, _ := other.Store.Topic(topic)
	if !ok || got.Epoch != ti.Epoch || got.Head != 5 {
		t.Fatalf("%s's copy after the check: %+v, want records 1 to 5 of epoch %s", other.name, got, ti.Epoch)
	}
	kept, _ := other.Store.Read(topic, 1, 100, 1<<20)
	for i := range kept {
		if !bytes.Equal(kept[i].Data, recs[i].Data) {
			t.Fatalf("offset %d: %s, want %s", kept[i].Offset, kept[i].Data, recs[i].Data)
		}
	}
}

// TestStatsFollowReplication reads the numbers the metrics show: two nodes
// with strict replicas 2 are fully replicated; when one dies the other
// takes its partitions over with their history, starts no new epoch, and
// counts every partition as under-replicated.
func TestStatsFollowReplication(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "stats", 2, 2)
	a, b := nodes[0], nodes[1]
	waitSpread(t, nodes)
	waitFor(t, "every partition replicated", func() bool {
		sa, sb := a.Node.Stats(), b.Node.Stats()
		return sa.Members == 2 && sb.Members == 2 && sa.Owned+sb.Owned == partitions && sa.UnderReplicated == 0 && sb.UnderReplicated == 0
	})
	topic := topicOwnedBy(t, b, "stats.")
	ap, err := a.Node.Append(t.Context(), topic, []byte(`1`), "")
	if err != nil {
		t.Fatal(err)
	}
	before := a.Node.Stats()
	b.kill()
	waitFor(t, "the partitions taken over", func() bool {
		s := a.Node.Stats()
		return s.Members == 1 && s.Owned == partitions && s.UnderReplicated == partitions && s.Takeovers > before.Takeovers
	})
	if s := a.Node.Stats(); s.EpochResets != 0 {
		t.Fatalf("%d topics reset: %+v", s.EpochResets, s)
	}
	if ti, ok, _ := a.Store.Topic(topic); !ok || ti.Epoch != ap.Epoch || ti.Head != ap.Offset {
		t.Fatalf("%s after the takeover: %+v, want epoch %s head %d", topic, ti, ap.Epoch, ap.Offset)
	}
}

// TestTakeCutShortIsTakenUp: a follower writes the lease of a dead
// owner's partition and is killed before its data is made ready for the
// new term. Restarted, it is the only node the lease names, and it must
// take the partition up with its data (same epoch, every record): without
// the take recorded on disk first it would not know the lease for its own
// and the partition would wait for good.
func TestTakeCutShortIsTakenUp(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "intent", 2, 0)
	a := nodes[0]
	topic := topicOwnedBy(t, a, "cut.")
	b := waitListed(t, nodes, a, topic)
	fill(t, a, topic, 20)
	ti, _, _ := a.Store.Topic(topic)
	a.kill()
	if err := b.Node.TakeCutShort(topic); err != nil {
		t.Fatal(err)
	}
	b.kill()
	b2 := restartNode(t, url, "intent", b, 0)
	var ap broker.Appended
	waitFor(t, "the restarted node serves the partition", func() bool {
		var err error
		ap, err = b2.Node.Append(t.Context(), topic, []byte(`"after"`), "")
		return err == nil
	})
	if ap.Epoch != ti.Epoch || ap.Offset != ti.Head+1 {
		t.Fatalf("after the take cut short: %+v, want epoch %s offset %d", ap, ti.Epoch, ti.Head+1)
	}
}
