package cluster_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// startEphemeralCluster starts k nodes keeping replicas copies of durable
// topics, with the topics under cursor.> ephemeral.
func startEphemeralCluster(t *testing.T, url, name string, k, replicas int) []*testNode {
	t.Helper()
	return startEphemeralClusterIdle(t, url, name, k, replicas, 0)
}

// startEphemeralClusterIdle is startEphemeralCluster with the brokers'
// TopicIdle, and ephemeral records kept for a second.
func startEphemeralClusterIdle(t *testing.T, url, name string, k, replicas int, idle time.Duration) []*testNode {
	t.Helper()
	ps, err := broker.NewPolicies(broker.Policy{}, []broker.Policy{{Match: "cursor.>", Ephemeral: true,
		Retention: broker.Retention{MaxMessages: 100, MaxAge: time.Second}}})
	if err != nil {
		t.Fatal(err)
	}
	nodes := make([]*testNode, k)
	for i := range nodes {
		node := fmt.Sprintf("n%d", i+1)
		nodes[i] = startNodeWith(t, url, name, node, replicas, openNodeStore(t, node), func(c *broker.Config) {
			c.Policies, c.TopicIdle = ps, idle
		})
	}
	waitSpread(t, nodes)
	return nodes
}

// TestEphemeralTopicsInCluster: an ephemeral topic is kept in memory by
// its owner alone (no store holds it, no follower is waited for), is
// reached from every node with one sequence of offsets, and a failover
// starts it in a new epoch: a resume with the old one gets epoch_mismatch,
// as does the subscription that was live on it; durable topics beside it
// are still copied.
func TestEphemeralTopicsInCluster(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startEphemeralCluster(t, url, "eph", 3, 2)
	a, b, c := nodes[0], nodes[1], nodes[2]
	topic := topicOwnedBy(t, b, "cursor.")
	ca := connect(t, a)
	for i := uint64(1); i <= 5; i++ {
		ok := mustOK(t, ca.pub(topic, fmt.Sprint(i), ""))
		if num(ok["offset"]) != i {
			t.Fatalf("publish %d through a non-owner: %v", i, ok)
		}
	}
	for _, tn := range nodes {
		if _, ok, _ := tn.Store.Topic(topic); ok {
			t.Fatalf("the ephemeral topic reached %s's store", tn.name)
		}
	}
	cc := connect(t, c)
	ok := mustOK(t, cc.do(map[string]any{"op": "sub", "topic": topic, "from": 1}))
	epoch, _ := ok["epoch"].(string)
	if epoch == "" || num(ok["head"]) != 5 {
		t.Fatalf("sub on a third node: %v, want an epoch and head 5", ok)
	}
	cc.wait("the 5 messages", func(evs []map[string]any) bool { return len(msgs(evs, topic)) == 5 })
	mustOK(t, ca.pub(topic, `6`, ""))
	cc.wait("the live message", func(evs []map[string]any) bool { return len(msgs(evs, topic)) == 6 })
	list, err := c.Node.Topics("cursor.", 100)
	if err != nil || len(list) != 1 || list[0].Topic != topic || list[0].Head != 6 || list[0].Epoch != epoch {
		t.Fatalf("listing: %+v %v", list, err)
	}

	// A durable topic of the same owner is still copied.
	durable := topicOwnedBy(t, b, "orders.")
	mustOK(t, ca.pub(durable, `1`, ""))
	waitFor(t, "the durable topic's copy", func() bool {
		_, okA, _ := a.Store.Topic(durable)
		_, okC, _ := c.Store.Topic(durable)
		return okA || okC
	})

	// The owner dies, once both partitions name a follower (which holds
	// the durable topic's history, and nothing of the ephemeral one): the
	// new owner starts the ephemeral topic in a new epoch.
	waitListed(t, nodes, b, topic)
	waitListed(t, nodes, b, durable)
	b.kill()
	var next map[string]any
	waitFor(t, "a publish after the failover", func() bool {
		next = ca.pub(topic, `7`, "")
		return next["op"] == "ok"
	})
	if num(next["offset"]) != 1 {
		t.Fatalf("after the failover: %v, want offset 1", next)
	}
	if ti, ok, err := a.Node.Topic(topic); err != nil || !ok || ti.Epoch == epoch || ti.Head != 1 {
		t.Fatalf("after the failover: %+v %v %v, want head 1 in a new epoch (old %s)", ti, ok, err, epoch)
	}
	cc.wait("the live subscription ended with epoch_mismatch", func(evs []map[string]any) bool {
		for _, ev := range evs {
			if ev["op"] == "unsubbed" && ev["topic"] == topic && ev["code"] == "epoch_mismatch" {
				return true
			}
		}
		return false
	})
	e := connect(t, c).do(map[string]any{"op": "sub", "topic": topic, "from": 7, "epoch": epoch})
	if e["op"] != "err" || e["code"] != "epoch_mismatch" {
		t.Fatalf("resume with the old epoch: %v", e)
	}
	if _, err := a.Node.Append(t.Context(), durable, []byte(`2`), ""); err != nil {
		t.Fatalf("the durable topic after the failover: %v", err)
	}
}

// TestEphemeralLogBelongsToItsTerm: a node serving an ephemeral topic in a
// later term than its log's (another node may have served it meanwhile)
// starts it again in a new epoch, and refuses an append looked up in the
// earlier term; durable topics are not touched.
func TestEphemeralLogBelongsToItsTerm(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	a := startEphemeralCluster(t, url, "term", 1, 1)[0]
	first, err := a.Node.AppendInTerm("cursor.x", 100, []byte(`1`))
	if err != nil {
		t.Fatal(err)
	}
	second, err := a.Node.AppendInTerm("cursor.x", 100, []byte(`2`))
	if err != nil || second.Epoch != first.Epoch || second.Offset != 2 {
		t.Fatalf("same term: %+v %v after %+v", second, err, first)
	}
	durable, err := a.Node.AppendInTerm("orders.x", 100, []byte(`1`))
	if err != nil {
		t.Fatal(err)
	}
	later, err := a.Node.AppendInTerm("cursor.x", 101, []byte(`3`))
	if err != nil || later.Epoch == first.Epoch || later.Offset != 1 {
		t.Fatalf("a later term: %+v %v, want offset 1 in a new epoch (old %s)", later, err, first.Epoch)
	}
	if _, err := a.Node.AppendInTerm("cursor.x", 100, []byte(`4`)); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("an append of the earlier term: %v, want unavailable", err)
	}
	if d, err := a.Node.AppendInTerm("orders.x", 101, []byte(`2`)); err != nil || d.Epoch != durable.Epoch || d.Offset != 2 {
		t.Fatalf("the durable topic: %+v %v", d, err)
	}
}

// TestEphemeralIdleTopicsInCluster: the owner of idle ephemeral topics
// deletes them, unless a node has a subscription to one: a topic merely
// touched from another node goes, one whose records aged out goes, one
// another node subscribes to stays with its epoch; a deleted topic comes
// back in a new epoch. Durable topics stay.
func TestEphemeralIdleTopicsInCluster(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startEphemeralClusterIdle(t, url, "idle", 3, 1, 300*time.Millisecond)
	a, b, c := nodes[0], nodes[1], nodes[2]
	touched := topicOwnedBy(t, b, "cursor.touched.")
	aged := topicOwnedBy(t, b, "cursor.aged.")
	kept := topicOwnedBy(t, b, "cursor.kept.")
	durable := topicOwnedBy(t, b, "orders.")
	ca := connect(t, a)
	mustOK(t, ca.do(map[string]any{"op": "sub", "topic": touched}))
	mustOK(t, ca.do(map[string]any{"op": "unsub", "topic": touched}))
	mustOK(t, ca.pub(aged, `1`, ""))
	mustOK(t, ca.pub(durable, `1`, ""))
	cc := connect(t, c)
	ok := mustOK(t, cc.do(map[string]any{"op": "sub", "topic": kept}))
	epoch := ok["epoch"]
	agedInfo, _, _ := b.Node.Topic(aged)

	waitFor(t, "the touched and aged topics deleted by their owner", func() bool {
		_, okT, _ := b.Node.Topic(touched)
		_, okA, _ := b.Node.Topic(aged)
		return !okT && !okA
	})
	if ti, ok, err := a.Node.Topic(kept); err != nil || !ok || ti.Epoch != epoch {
		t.Fatalf("the subscribed topic: %+v %v %v, want epoch %v", ti, ok, err, epoch)
	}
	if ti, ok, _ := a.Node.Topic(durable); !ok || ti.Head != 1 {
		t.Fatalf("the durable topic: %+v %v", ti, ok)
	}
	mustOK(t, ca.pub(kept, `2`, ""))
	cc.wait("the message on the kept topic", func(evs []map[string]any) bool { return len(msgs(evs, kept)) == 1 })
	mustOK(t, ca.pub(aged, `2`, ""))
	if ti, ok, _ := a.Node.Topic(aged); !ok || ti.Epoch == agedInfo.Epoch || ti.Head != 1 {
		t.Fatalf("the aged topic published again: %+v, want head 1 in a new epoch (old %s)", ti, agedInfo.Epoch)
	}
}

// TestEphemeralTopicsAcrossNATSRestart: NATS stopped and started again on
// its store moves no partition (the owners renew their leases in the same
// terms), so an ephemeral topic goes on in its epoch with the next offset.
func TestEphemeralTopicsAcrossNATSRestart(t *testing.T) {
	t.Parallel()
	ns := startRestartableNATS(t)
	nodes := startEphemeralCluster(t, ns.url(), "ephnats", 2, 1)
	a, b := nodes[0], nodes[1]
	topic := topicOwnedBy(t, b, "cursor.")
	first, err := a.Node.Append(t.Context(), topic, []byte(`1`), "")
	if err != nil {
		t.Fatal(err)
	}
	ns.stop()
	time.Sleep(leaseTTL / 2)
	ns.start()
	var next broker.Appended
	waitFor(t, "a publish after NATS is back", func() bool {
		next, err = a.Node.Append(t.Context(), topic, []byte(`2`), "")
		return err == nil
	})
	if next.Epoch != first.Epoch || next.Offset != 2 {
		t.Fatalf("after NATS restarted: %+v, want offset 2 in epoch %s", next, first.Epoch)
	}
}
