package cluster_test

import (
	"flag"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

var presenceScale = flag.Int("presence.scale", 0, "run TestPresenceScale with N members on one topic and N topics of 3 members over three nodes (the issue's measure: 10000)")

func heapNow() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestPresenceScale measures presence on three in-process nodes (one
// process: the heap figures are the three nodes' together): the memory a
// member costs, the NATS messages a join costs, and how long after a node
// is killed its members have left the others. Run with
// -presence.scale=10000.
func TestPresenceScale(t *testing.T) {
	n := *presenceScale
	if n <= 0 {
		t.Skip("a measurement: run with -presence.scale=10000")
	}
	url := startNATS(t)
	nodes := startCluster(t, url, "pscale", 3)
	watch, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	var msgs, bytes atomic.Int64
	sub, err := watch.Subscribe("brokerd.pscale.presence", func(m *nats.Msg) {
		msgs.Add(1)
		bytes.Add(int64(len(m.Data)))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	// count waits until every live node counts n members in topic.
	count := func(live []int, topic string, n int) {
		t.Helper()
		for _, i := range live {
			waitFor(t, fmt.Sprintf("%s to count %d in %s", nodes[i].name, n, topic), func() bool {
				_, c := nodes[i].Broker.Presence(topic)
				return c == n
			})
		}
	}

	run := func(label string, topics, perTopic int) {
		total := topics * perTopic
		clients := make([]*client, total)
		for i := range clients {
			clients[i] = connect(t, nodes[i%3])
		}
		// The same subscriptions without presence first: the difference
		// is what presence costs.
		h0 := heapNow()
		for i, c := range clients {
			mustOK(t, c.do(map[string]any{"op": "sub", "topic": fmt.Sprintf("%s.plain.%d", label, i/perTopic)}))
		}
		h1 := heapNow()
		m0, b0 := msgs.Load(), bytes.Load()
		start := time.Now()
		for i, c := range clients {
			mustOK(t, c.do(map[string]any{"op": "sub", "topic": fmt.Sprintf("%s.%d", label, i/perTopic), "presence": true,
				"presence_info": map[string]any{"name": fmt.Sprintf("member %d", i)}}))
		}
		for k := 0; k < topics; k += max(1, topics/10) {
			count([]int{0, 1, 2}, fmt.Sprintf("%s.%d", label, k), perTopic)
		}
		count([]int{0, 1, 2}, fmt.Sprintf("%s.%d", label, topics-1), perTopic)
		took := time.Since(start)
		for _, c := range clients { // the events the test clients keep are no part of the broker
			c.mu.Lock()
			c.evs = append([]map[string]any(nil), c.evs[0])
			c.mu.Unlock()
		}
		time.Sleep(2 * time.Second) // beats only from here on
		h2 := heapNow()
		m1, b1 := msgs.Load()-m0, bytes.Load()-b0
		sub1 := float64(int64(h1)-int64(h0)) / float64(total)
		pres := float64(int64(h2)-int64(h1)) / float64(total)
		t.Logf("%s: %d members in %d topics over 3 nodes: joined and listed everywhere in %v; heap per member: %.0f B for the subscription, %.0f B more with presence (every node holds every member; info ~20 B); NATS: %d presence messages, %d bytes (%.3f messages and %.0f bytes per join, beats included)",
			label, total, topics, took.Round(time.Millisecond), sub1, pres, m1, b1, float64(m1)/float64(total), float64(b1)/float64(total))
	}
	run("one", 1, n)
	run("many", n, 3)

	// Kill node 3 without a goodbye: how long until the others have
	// dropped its members.
	nodes[2].nc.Close()
	killed := time.Now()
	nodes[2].kill()
	count([]int{0, 1}, "one.0", n-n/3)
	count([]int{0, 1}, fmt.Sprintf("many.%d", n-1), 2)
	t.Logf("after node 3 was killed: its %d + %d members left the others' lists in %v (lease TTL %v)", n/3, n, time.Since(killed).Round(time.Millisecond), leaseTTL)
}
