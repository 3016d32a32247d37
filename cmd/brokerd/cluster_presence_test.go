package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/internal/testscale"
)

// presenceJoin subscribes cl to topic with presence, retrying while the
// cluster answers unavailable (partitions still settling).
func presenceJoin(t *testing.T, cl *wsClient, topic string) {
	t.Helper()
	deadline := time.Now().Add(testscale.D(30 * time.Second))
	for id := uint64(1); time.Now().Before(deadline); id++ {
		if err := cl.send(fmt.Sprintf(`{"op":"sub","id":%d,"topic":%q,"presence":true}`, id, topic)); err != nil {
			t.Fatal(err)
		}
		for {
			ev, err := cl.next(testscale.D(10 * time.Second))
			if err != nil {
				t.Fatalf("waiting for the sub's answer: %v", err)
			}
			if ev.ID != id || (ev.Op != "ok" && ev.Op != "err") {
				continue
			}
			if ev.Op == "ok" {
				return
			}
			if ev.Code != "unavailable" {
				t.Fatalf("sub with presence: %s", ev)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no ok for a sub of %s", topic)
}

// presenceListed returns the sessions node n lists for topic over HTTP,
// sorted; ok is false when n does not answer. A node cut from NATS is
// asked too: its clients still see it.
func presenceListed(n *clusterNode, topic string) (sessions []string, ok bool) {
	addr, _ := n.addr()
	if addr == "" {
		return nil, false
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + addr + "/v1/topics/" + topic + "/presence")
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	var body struct {
		Members []struct {
			Session string `json:"session"`
			Node    string `json:"node"`
		} `json:"members"`
		Count int `json:"count"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil || body.Count != len(body.Members) {
		return nil, false
	}
	for _, m := range body.Members {
		sessions = append(sessions, m.Session)
	}
	slices.Sort(sessions)
	return sessions, true
}

// awaitListed waits until every node of on lists exactly want and
// returns how long that took.
func awaitListed(t *testing.T, label, topic string, want []string, on ...*clusterNode) time.Duration {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	start := time.Now()
	for _, n := range on {
		poll(t, testscale.D(30*time.Second), 20*time.Millisecond, fmt.Sprintf("%s: %s to list %v", label, n.name, want), func() bool {
			got, ok := presenceListed(n, topic)
			return ok && slices.Equal(got, want)
		})
	}
	return time.Since(start)
}

// Presence across real processes: one member per node is listed on every
// node; a node killed with SIGKILL has its member leave the others'
// lists within about the lease TTL; a node cut from NATS drops out of the
// others' lists and they out of its, and all lists converge once it is
// healed.
func TestClusterPresence(t *testing.T) {
	c := newTestCluster(t, "presence", 3, true, nil)
	c.startAll()
	sessions := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addr, _ := n.addr()
		cl := mustDial(t, addr)
		t.Cleanup(cl.close)
		presenceJoin(t, cl, "room")
		sessions[i] = cl.welcome.Session
	}
	took := awaitListed(t, "start", "room", sessions, c.nodes...)
	t.Logf("three members listed on every node after %v", took.Round(time.Millisecond))

	c.kill(c.nodes[2])
	killed := time.Now()
	awaitListed(t, "after the kill", "room", sessions[:2], c.nodes[:2]...)
	t.Logf("the killed node's member left the others' lists after %v (lease TTL %v)", time.Since(killed).Round(time.Millisecond), clusterLeaseTTL)

	for round := 1; round <= 2; round++ {
		label := fmt.Sprintf("cut %d", round)
		c.cut(c.nodes[1])
		awaitListed(t, label, "room", sessions[:1], c.nodes[0])
		awaitListed(t, label, "room", sessions[1:2], c.nodes[1])
		c.heal(c.nodes[1])
		took := awaitListed(t, "heal "+strings.TrimPrefix(label, "cut "), "room", sessions[:2], c.nodes[:2]...)
		t.Logf("round %d: lists converged %v after the heal", round, took.Round(time.Millisecond))
	}
}
