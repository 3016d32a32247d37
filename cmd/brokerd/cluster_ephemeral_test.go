package main

import (
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/brokerd/brokerd/store"
)

// TestClusterEphemeralFailover, on real processes: an ephemeral topic is
// served with one sequence of offsets from every node while its owner
// keeps it in memory; when the owner is killed (kill -9) the topic starts
// again at offset 1 in a new epoch on the new owner, the live subscription
// of the old epoch ends with epoch_mismatch, and so does a resume with it.
// No node's store ever holds the topic.
func TestClusterEphemeralFailover(t *testing.T) {
	c := newTestCluster(t, "ephemeral", 3, false, nil)
	c.args = []string{"--config", writeConfig(t, "policies:\n  - match: \"cursor.>\"\n    storage: ephemeral\n")}
	c.startAll()
	c.awaitSettled("start")
	const topic = "cursor.a"
	owner := c.node(c.owner(topic).owner)
	var others []*clusterNode
	for _, n := range c.nodes {
		if n != owner {
			others = append(others, n)
		}
	}
	addr0, _ := others[0].addr()
	addr1, _ := others[1].addr()
	pub := mustDial(t, addr0)
	t.Cleanup(pub.close)
	for i := uint64(1); i <= 5; i++ {
		if ev := pub.request(t, i, pubCmd(i, topic, []byte(strconv.FormatUint(i, 10)))); ev.Op != "ok" || ev.Offset != i {
			t.Fatalf("publish %d through %s (owner %s): %s", i, others[0].name, owner.name, ev)
		}
	}
	sub := mustDial(t, addr1)
	t.Cleanup(sub.close)
	ok := sub.request(t, 100, subCmd(100, topic, "1", ""))
	if ok.Op != "ok" || ok.Epoch == "" || ok.Head != 5 {
		t.Fatalf("sub through %s: %s", others[1].name, ok)
	}
	epoch := ok.Epoch
	for want := uint64(1); want <= 5; want++ {
		ev, err := sub.next(10 * time.Second)
		if err != nil || ev.Op != "msg" || ev.Offset != want {
			t.Fatalf("replay, offset %d: %v %v", want, ev, err)
		}
	}

	c.kill(owner)
	var ev *event
	id := uint64(10)
	poll(t, 30*time.Second, 50*time.Millisecond, "a publish after the owner's kill", func() bool {
		id++
		ev = pub.request(t, id, pubCmd(id, topic, []byte(`6`)))
		return ev.Op == "ok"
	})
	if ev.Offset != 1 {
		t.Fatalf("the first publish after the kill: %s, want offset 1 (a new epoch)", ev)
	}
	for {
		ev, err := sub.next(30 * time.Second)
		if err != nil {
			t.Fatalf("waiting for the live subscription to end: %v", err)
		}
		if ev.Op == "msg" {
			t.Fatalf("a message of the new epoch reached the old epoch's subscription: %s", ev)
		}
		if ev.Op == "unsubbed" && ev.Code == "epoch_mismatch" {
			break
		}
	}
	again := mustDial(t, addr1)
	t.Cleanup(again.close)
	if e := again.request(t, 1, subCmd(1, topic, "6", epoch)); e.Op != "err" || e.Code != "epoch_mismatch" {
		t.Fatalf("resume with the old epoch: %s", e)
	}
	if e := again.request(t, 2, subCmd(2, topic, "1", "")); e.Op != "ok" || e.Epoch == epoch || e.Head != 1 {
		t.Fatalf("sub in the new epoch: %s", e)
	}

	c.stopAll()
	for _, n := range c.nodes {
		db, err := store.Open(n.dataDir, &store.Options{RetentionInterval: -1, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		if _, ok, _ := db.Topic(topic); ok {
			t.Errorf("%s's store holds the ephemeral topic", n.name)
		}
		_ = db.Close()
	}
}
