package cluster_test

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestConsumerTakeOverAcrossNodes subscribes one durable consumer to a
// topic on one node, then on another: the first subscription ends with
// unsubbed taken_over and receives nothing more, the second gets every
// record published afterwards; and back again.
func TestConsumerTakeOverAcrossNodes(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startClusterR(t, url, "claims", 2, 0)
	const topic = "claims.t"
	pub := connect(t, nodes[0])
	for i := range 3 {
		mustOK(t, pub.pub(topic, fmt.Sprint(i), ""))
	}
	sub := func(c *client) {
		t.Helper()
		mustOK(t, c.do(map[string]any{"op": "sub", "topic": topic, "consumer": "worker", "from": "earliest"}))
	}
	takenOver := func(c *client, who string) {
		t.Helper()
		c.wait(who+" taken over", func(evs []map[string]any) bool {
			for _, ev := range evs {
				if ev["op"] == "unsubbed" && ev["topic"] == topic && ev["code"] == "taken_over" {
					return true
				}
			}
			return false
		})
	}
	// Each move: the new subscription on the other node takes over.
	order := []int{0, 1, 0, 1}
	clients := make([]*client, len(order))
	for i, ni := range order {
		clients[i] = connect(t, nodes[ni])
		sub(clients[i])
		if i > 0 {
			takenOver(clients[i-1], fmt.Sprintf("subscription %d (on %s)", i-1, nodes[order[i-1]].name))
		}
		off := num(mustOK(t, pub.pub(topic, fmt.Sprintf(`"after move %d"`, i), ""))["offset"])
		clients[i].wait(fmt.Sprintf("offset %d on subscription %d", off, i), func(evs []map[string]any) bool {
			return slices.Contains(msgs(evs, topic), off)
		})
	}
	// Only the last subscription is live: a record published now reaches
	// it and no earlier one.
	off := num(mustOK(t, pub.pub(topic, `"last"`, ""))["offset"])
	last := clients[len(clients)-1]
	last.wait("the last record on the live subscription", func(evs []map[string]any) bool {
		return slices.Contains(msgs(evs, topic), off)
	})
	time.Sleep(200 * time.Millisecond) // a record sent to an ended subscription would arrive meanwhile
	for i, c := range clients[:len(clients)-1] {
		c.mu.Lock()
		got := msgs(c.evs, topic)
		c.mu.Unlock()
		if slices.Contains(got, off) {
			t.Errorf("subscription %d (taken over) also received offset %d", i, off)
		}
	}
}
