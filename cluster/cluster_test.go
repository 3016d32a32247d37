package cluster_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/store"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestLeasesSpread(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "spread", 3)
	for _, tn := range nodes {
		if n := len(tn.Node.Owned()); n != partitions/3 {
			t.Errorf("%s owns %d partitions, want %d", tn.name, n, partitions/3)
		}
	}
	// Every node agrees on every owner.
	for p := range 100 {
		topic := fmt.Sprintf("t%d", p)
		waitFor(t, "owners agree on "+topic, func() bool {
			o, term := nodes[0].Node.Owner(topic)
			for _, tn := range nodes[1:] {
				if o2, term2 := tn.Node.Owner(topic); o2 != o || term2 != term {
					return false
				}
			}
			return o != ""
		})
	}
}

func TestPublishForwarded(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "fwd", 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	topic := topicOwnedBy(t, b, "orders.")
	ca := connect(t, a)
	for i := uint64(1); i <= 3; i++ {
		ok := mustOK(t, ca.pub(topic, fmt.Sprintf(`{"n":%d}`, i), ""))
		if num(ok["offset"]) != i {
			t.Fatalf("pub %d on a non-owner: offset %v, want %d", i, ok["offset"], i)
		}
	}
	first := mustOK(t, ca.pub(topic, `"k"`, "key-1"))
	cc := connect(t, c)
	dup := mustOK(t, cc.pub(topic, `"k"`, "key-1"))
	if dup["dup"] != true || num(dup["offset"]) != num(first["offset"]) {
		t.Fatalf("same key from another node: %v, want dup of offset %v", dup, first["offset"])
	}
	// The owner holds the log; the non-owners hold nothing.
	if ti, ok, _ := b.Store.Topic(topic); !ok || ti.Head != 4 {
		t.Fatalf("owner's log: %+v %v", ti, ok)
	}
	if _, ok, _ := a.Store.Topic(topic); ok {
		t.Fatal("a non-owner stored the topic")
	}
	// HTTP-style publish through the broker API on a non-owner.
	ap, err := c.Broker.Publish(t.Context(), topic, []byte(`5`), "")
	if err != nil || ap.Offset != 5 {
		t.Fatalf("Publish on a non-owner: %+v %v", ap, err)
	}
	// Topics lists it once, from any node.
	list, err := a.Node.Topics("", 100)
	if err != nil || len(list) != 1 || list[0].Topic != topic || list[0].Head != 5 {
		t.Fatalf("Topics: %+v %v", list, err)
	}
}

func TestSubscribeAnywhere(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "sub", 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	topic := topicOwnedBy(t, a, "feed.x.")
	other := topicOwnedBy(t, b, "feed.y.")
	// Some history before the subscription.
	for i := range 20 {
		if _, err := b.Broker.Publish(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	cc := connect(t, c)
	mustOK(t, cc.do(map[string]any{"op": "sub", "topic": "feed.>"}))
	ok := mustOK(t, cc.do(map[string]any{"op": "sub", "topic": topic, "from": 1}))
	if ok["epoch"] == "" {
		t.Fatalf("sub ok without epoch: %v", ok)
	}
	const total = 400
	var wg sync.WaitGroup
	for _, tn := range []*testNode{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range (total - 20) / 2 {
				if _, err := tn.Broker.Publish(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	if _, err := a.Broker.Publish(t.Context(), other, []byte(`"other"`), ""); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	evs := cc.wait("all messages", func(evs []map[string]any) bool {
		n := 0
		for _, ev := range evs {
			if ev["op"] == "msg" && ev["sub"] == nil && ev["topic"] == topic {
				n++
			}
		}
		return n >= total
	})
	var exact []uint64
	for _, ev := range evs {
		if ev["op"] == "msg" && ev["sub"] == nil && ev["topic"] == topic {
			exact = append(exact, num(ev["offset"]))
		}
	}
	for i, off := range exact {
		if off != uint64(i+1) {
			t.Fatalf("message %d has offset %d: gap or duplicate (%v…)", i, off, exact[max(0, i-3):min(len(exact), i+3)])
		}
	}
	// The pattern subscription sees the topic owned by b, published on a.
	cc.wait("pattern msg", func(evs []map[string]any) bool {
		for _, ev := range evs {
			if ev["op"] == "msg" && ev["sub"] == "feed.>" && ev["topic"] == other {
				return true
			}
		}
		return false
	})
	// Each live record reaches the pattern subscription once.
	time.Sleep(100 * time.Millisecond)
	var pat []uint64
	for _, ev := range cc.wait("", func([]map[string]any) bool { return true }) {
		if ev["op"] == "msg" && ev["sub"] == "feed.>" && ev["topic"] == topic {
			pat = append(pat, num(ev["offset"]))
		}
	}
	for i := 1; i < len(pat); i++ {
		if pat[i] != pat[i-1]+1 {
			t.Fatalf("pattern subscription: offset %d after %d", pat[i], pat[i-1])
		}
	}
}

func TestConsumerResumesOnAnotherNode(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "cons", 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	topic := topicOwnedBy(t, c, "jobs.")
	for i := range 10 {
		if _, err := c.Broker.Publish(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	ca := connect(t, a)
	mustOK(t, ca.do(map[string]any{"op": "sub", "topic": topic, "consumer": "w", "from": "earliest"}))
	ca.wait("10 messages", func(evs []map[string]any) bool { return len(msgs(evs, topic)) >= 10 })
	mustOK(t, ca.do(map[string]any{"op": "ack", "topic": topic, "consumer": "w", "offset": 6}))
	ca.s.Closed(nil)

	cb := connect(t, b)
	ok := mustOK(t, cb.do(map[string]any{"op": "sub", "topic": topic, "consumer": "w"}))
	if num(ok["from"]) != 7 {
		t.Fatalf("resume on another node: from %v, want 7", ok["from"])
	}
	got := msgs(cb.wait("4 messages", func(evs []map[string]any) bool { return len(msgs(evs, topic)) >= 4 }), topic)
	if got[0] != 7 || got[3] != 10 {
		t.Fatalf("resumed at %v", got)
	}
	cos, err := b.Node.Consumers("w")
	if err != nil || len(cos) != 1 || cos[0].Offset != 6 {
		t.Fatalf("Consumers: %+v %v", cos, err)
	}
}

func TestOwnerDiesNewEpoch(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "kill", 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	topic := topicOwnedBy(t, b, "pay.")
	ca := connect(t, a)
	var epoch string
	for i := 1; i <= 5; i++ {
		mustOK(t, ca.pub(topic, fmt.Sprint(i), ""))
	}
	ok := mustOK(t, ca.do(map[string]any{"op": "sub", "topic": topic, "from": 1}))
	epoch = ok["epoch"].(string)
	ca.wait("5 messages", func(evs []map[string]any) bool { return len(msgs(evs, topic)) >= 5 })

	// Publishers on the surviving nodes keep going through the failover:
	// no (epoch, offset) may be handed out twice.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]bool{}
	for _, tn := range []*testNode{a, c} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ap, err := tn.Node.Append(t.Context(), topic, []byte(fmt.Sprint(i)), "")
				if err != nil {
					continue // unavailable while the partition moves
				}
				k := fmt.Sprintf("%s/%d", ap.Epoch, ap.Offset)
				mu.Lock()
				if seen[k] {
					t.Errorf("offset %s handed out twice", k)
				}
				seen[k] = true
				mu.Unlock()
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	killed := time.Now()
	b.kill()
	waitSpread(t, []*testNode{a, c})
	t.Logf("partitions of the dead owner moved in %v", time.Since(killed).Round(time.Millisecond))
	close(stop)
	wg.Wait()
	if o, _ := a.Node.Owner(topic); o == b.name || o == "" {
		t.Fatalf("topic still owned by %q", o)
	}
	// A client resuming with the old epoch is told, on either node.
	for _, tn := range []*testNode{a, c} {
		cl := connect(t, tn)
		ev := cl.do(map[string]any{"op": "sub", "topic": topic, "from": 6, "epoch": epoch})
		if ev["op"] != "err" || ev["code"] != "epoch_mismatch" {
			t.Fatalf("resume with the old epoch on %s: %v, want epoch_mismatch", tn.name, ev)
		}
	}
	// Publishes after the failover are in a new epoch, from offset 1.
	cc := connect(t, c)
	ok = mustOK(t, cc.do(map[string]any{"op": "sub", "topic": topic, "from": 1}))
	if ok["epoch"] == epoch {
		t.Fatalf("after failover: %v, old epoch %s", ok, epoch)
	}
	newEpoch := ok["epoch"].(string)
	for off := uint64(1); off <= num(ok["head"]); off++ {
		if !seen[fmt.Sprintf("%s/%d", newEpoch, off)] {
			t.Fatalf("offset %d of the new epoch was not handed to a publisher", off)
		}
	}
	if n := len(msgs(cc.wait("replay of the new epoch", func(evs []map[string]any) bool {
		return uint64(len(msgs(evs, topic))) >= num(ok["head"])
	}), topic)); num(ok["head"]) > 0 && n == 0 {
		t.Fatal("no replay")
	}
}

func TestDrainHandsOver(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "drain", 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	start := time.Now()
	if err := b.Node.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := len(b.Node.Owned()); n != 0 {
		t.Fatalf("drained node still owns %d partitions", n)
	}
	// Handed over, not left to expire: once Drain returns no lease names
	// the drained node as its owner any more.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), "brokerd_drain_leases")
	if err != nil {
		t.Fatal(err)
	}
	for p := range partitions {
		e, err := kv.Get(t.Context(), fmt.Sprintf("p%d", p))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(string(e.Value())); len(f) > 0 && f[0] == b.name {
			t.Errorf("partition %d: lease %q still names the drained node after Drain returned", p, e.Value())
		}
	}
	waitSpread(t, []*testNode{a, c})
	t.Logf("hand-over took %v", time.Since(start).Round(time.Millisecond))
	// The drained node still serves its clients by forwarding.
	cb := connect(t, b)
	mustOK(t, cb.pub(topicOwnedBy(t, a, "d."), `1`, ""))
}

func TestClustersIsolated(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	one := startNode(t, url, "one", "n1")
	two := startNode(t, url, "two", "n1")
	waitSpread(t, []*testNode{one})
	waitSpread(t, []*testNode{two})
	c1, c2 := connect(t, one), connect(t, two)
	mustOK(t, c2.do(map[string]any{"op": "sub", "topic": "shared"}))
	mustOK(t, c1.do(map[string]any{"op": "sub", "topic": "shared"}))
	mustOK(t, c1.pub("shared", `"one"`, ""))
	ok := mustOK(t, c2.pub("shared", `"two"`, ""))
	if num(ok["offset"]) != 1 {
		t.Fatalf("cluster two's first publish: offset %v", ok["offset"])
	}
	c1.wait("own message", func(evs []map[string]any) bool { return len(msgs(evs, "shared")) >= 1 })
	c2.wait("own message", func(evs []map[string]any) bool { return len(msgs(evs, "shared")) >= 1 })
	time.Sleep(100 * time.Millisecond)
	if n := len(msgs(c1.wait("", func([]map[string]any) bool { return true }), "shared")); n != 1 {
		t.Fatalf("cluster one saw %d messages", n)
	}
}

// Records committed elsewhere while a node was cut off from NATS reach its
// live subscribers after the reconnect, even when the topic goes quiet.
func TestLiveRepairAfterReconnect(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "repair", 2)
	a, c := nodes[0], nodes[1]
	topic := topicOwnedBy(t, a, "quiet.")
	cc := connect(t, c)
	mustOK(t, cc.do(map[string]any{"op": "sub", "topic": topic}))
	for i := range 3 {
		if _, err := a.Broker.Publish(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	cc.wait("the first records", func(evs []map[string]any) bool { return len(msgs(evs, topic)) == 3 })
	reconnect := c.Node.SimulateLiveOutage(topic)
	for i := range 3 {
		if _, err := a.Broker.Publish(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	reconnect() // no record is published after it: only the repair can deliver 4..6
	evs := cc.wait("the missed records", func(evs []map[string]any) bool { return len(msgs(evs, topic)) == 6 })
	for i, off := range msgs(evs, topic) {
		if off != uint64(i+1) {
			t.Fatalf("offsets %v", msgs(evs, topic))
		}
	}
}

// The same for a pattern subscription: the topic it saw records of before
// the outage is repaired after the reconnect, with no record published
// after it.
func TestLiveRepairAfterReconnectPattern(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "repairpat", 2)
	a, c := nodes[0], nodes[1]
	topic := topicOwnedBy(t, a, "quietpat.")
	cc := connect(t, c)
	mustOK(t, cc.do(map[string]any{"op": "sub", "topic": "quietpat.>"}))
	for i := range 3 {
		if _, err := a.Broker.Publish(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	cc.wait("the first records", func(evs []map[string]any) bool { return len(msgs(evs, "quietpat.>")) == 3 })
	reconnect := c.Node.SimulateLiveOutage("quietpat.>")
	for i := range 3 {
		if _, err := a.Broker.Publish(t.Context(), topic, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	reconnect()
	evs := cc.wait("the missed records", func(evs []map[string]any) bool { return len(msgs(evs, "quietpat.>")) == 6 })
	for i, off := range msgs(evs, "quietpat.>") {
		if off != uint64(i+1) {
			t.Fatalf("offsets %v", msgs(evs, "quietpat.>"))
		}
	}
}

// TestTooManyTopicsTravels: the owner's store refuses a new topic past its
// limit; a node that forwarded the publish gets the same refusal, not
// unavailable.
func TestTooManyTopicsTravels(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	var nodes []*testNode
	for _, name := range []string{"n1", "n2"} {
		st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet, RetentionInterval: -1, NoSync: true, MaxTopics: 2})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		nodes = append(nodes, startNodeOn(t, url, "cap", name, 1, st))
	}
	waitSpread(t, nodes)
	a, b := nodes[0], nodes[1]
	// Topics b owns, published through a until b's store is full.
	owned := map[int]bool{}
	for _, p := range b.Node.Owned() {
		owned[p] = true
	}
	var refused error
	for i := 0; i < 1000 && refused == nil; i++ {
		topic := fmt.Sprintf("cap.%d", i)
		if owned[b.Node.Partition(topic)] {
			_, refused = a.Node.Append(t.Context(), topic, []byte(`1`), "")
		}
	}
	if !errors.Is(refused, broker.ErrTooManyTopics) {
		t.Fatalf("a publish forwarded to a full owner: %v, want ErrTooManyTopics", refused)
	}
	if n := b.Store.TopicCount(); n != 2 {
		t.Fatalf("the owner holds %d topics, want 2", n)
	}
}

// TestTopicClassesTravel: a policy's max-topics (the broker hands it to
// the node as topic classes) bounds the topics each owner holds, and the
// owner's refusal travels back to the node the publish came through.
func TestTopicClassesTravel(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "classes", 2)
	a, b := nodes[0], nodes[1]
	rooms := func(topic string) (string, int) {
		if strings.HasPrefix(topic, "room.") {
			return "rooms", 1
		}
		return "", 0
	}
	if err := b.Node.SetTopicClasses(rooms); err != nil {
		t.Fatal(err)
	}
	first := topicOwnedBy(t, b, "room.")
	if _, err := a.Node.Append(t.Context(), first, []byte(`1`), ""); err != nil {
		t.Fatal(err)
	}
	second := ""
	for i := 0; second == ""; i++ {
		if topic := fmt.Sprintf("room.x%d", i); b.Node.Partition(topic) == b.Node.Partition(first) {
			second = topic
		}
	}
	if _, err := a.Node.Append(t.Context(), second, []byte(`1`), ""); !errors.Is(err, broker.ErrTooManyTopics) {
		t.Fatalf("a second room forwarded to its owner: %v, want ErrTooManyTopics", err)
	}
	if _, ok, _ := b.Store.Topic(second); ok {
		t.Fatal("the refused topic was created")
	}
	if _, err := a.Node.Append(t.Context(), topicOwnedBy(t, b, "other."), []byte(`1`), ""); err != nil {
		t.Fatalf("another class: %v", err)
	}
}
