package cluster_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// Presence across nodes: members of every node are listed on every node,
// joins and leaves reach the members of the other nodes, and the members
// of a node that dies, or is cut off from NATS, leave; they come back when
// it is reachable again.

// sessionOf returns the session id of c's welcome.
func (c *client) sessionOf() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.evs[0]["session"].(string)
}

// presenceOf returns the join and leave events of topic c received, as
// "join <session>" and "leave <session>".
func (c *client) presenceOf(topic string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return presenceIn(c.evs, topic)
}

// presenceIn is presenceOf over evs.
func presenceIn(evs []map[string]any, topic string) []string {
	var out []string
	for _, ev := range evs {
		if op := ev["op"]; (op == "join" || op == "leave") && ev["topic"] == topic {
			m := ev["member"].(map[string]any)
			out = append(out, fmt.Sprintf("%s %s", op, m["session"]))
		}
	}
	return out
}

// listed returns the sessions the node of c lists for topic, sorted, and
// the count.
func (c *client) listed(topic string) ([]string, int) {
	c.t.Helper()
	r := mustOK(c.t, c.do(map[string]any{"op": "presence", "topic": topic}))
	var out []string
	for _, x := range r["members"].([]any) {
		out = append(out, x.(map[string]any)["session"].(string))
	}
	sort.Strings(out)
	return out, int(num(r["count"]))
}

func sorted(s ...string) []string { sort.Strings(s); return s }

// waitListed waits until every client's node lists exactly want for
// topic.
func waitMembers(t *testing.T, topic string, want []string, cs ...*client) {
	t.Helper()
	for i, c := range cs {
		waitFor(t, fmt.Sprintf("client %d's node to list %v", i, want), func() bool {
			got, n := c.listed(topic)
			return n == len(want) && strings.Join(got, ",") == strings.Join(want, ",")
		})
	}
}

func TestPresenceAcrossNodes(t *testing.T) {
	url := startNATS(t)
	nodes := startCluster(t, url, "pres", 3)
	a, b, c := connect(t, nodes[0]), connect(t, nodes[1]), connect(t, nodes[2])
	sa, sb, sc := a.sessionOf(), b.sessionOf(), c.sessionOf()
	mustOK(t, a.do(map[string]any{"op": "sub", "topic": "room", "presence": true, "presence_info": map[string]any{"name": "a"}}))
	waitMembers(t, "room", []string{sa}, a, b, c)
	mustOK(t, b.do(map[string]any{"op": "sub", "topic": "room", "presence": true}))
	mustOK(t, c.do(map[string]any{"op": "sub", "topic": "room", "presence": true}))
	all := sorted(sa, sb, sc)
	waitMembers(t, "room", all, a, b, c)
	a.wait("b and c joining", func(evs []map[string]any) bool { return len(presenceIn(evs, "room")) == 2 })
	if got := strings.Join(sorted(a.presenceOf("room")...), ","); got != strings.Join(sorted("join "+sb, "join "+sc), ",") {
		t.Errorf("a saw %s", got)
	}
	// The member of another node carries its node and info.
	r := mustOK(t, b.do(map[string]any{"op": "presence", "topic": "room"}))
	for _, x := range r["members"].([]any) {
		m := x.(map[string]any)
		if m["session"] == sa && (m["node"] != nodes[0].name || fmt.Sprint(m["info"]) != "map[name:a]") {
			t.Errorf("a as b's node lists it: %v", m)
		}
	}

	// b unsubscribes: a and c see it leave.
	mustOK(t, b.do(map[string]any{"op": "unsub", "topic": "room"}))
	for _, x := range []*client{a, c} {
		x.wait("b leaving", func(evs []map[string]any) bool {
			ps := presenceIn(evs, "room")
			return len(ps) > 0 && ps[len(ps)-1] == "leave "+sb
		})
	}
	waitMembers(t, "room", sorted(sa, sc), a, b, c)

	// c's node crashes without a goodbye: its member leaves the others
	// within about the lease TTL.
	start := time.Now()
	nodes[2].nc.Close()
	nodes[2].kill()
	a.wait("c leaving", func(evs []map[string]any) bool {
		ps := presenceIn(evs, "room")
		return len(ps) > 0 && ps[len(ps)-1] == "leave "+sc
	})
	t.Logf("the members of a crashed node left after %v (lease TTL %v)", time.Since(start).Round(time.Millisecond), leaseTTL)
	waitMembers(t, "room", []string{sa}, a, b)
}

// A node whose NATS connection drops stops hearing the others and they
// stop hearing it: each side's members leave the other's lists; once the
// connection is back, both lists converge again, with what changed
// meanwhile.
func TestPresenceConvergesAfterNATSRestart(t *testing.T) {
	nats := startRestartableNATS(t)
	nodes := startCluster(t, nats.url(), "presr", 2)
	a, b := connect(t, nodes[0]), connect(t, nodes[1])
	sa, sb := a.sessionOf(), b.sessionOf()
	for _, x := range []*client{a, b} {
		mustOK(t, x.do(map[string]any{"op": "sub", "topic": "doc", "presence": true}))
	}
	waitMembers(t, "doc", sorted(sa, sb), a, b)
	for round := range 3 {
		// One more member on each side; b's leaves while NATS is away.
		ea, eb := connect(t, nodes[0]), connect(t, nodes[1])
		for _, x := range []*client{ea, eb} {
			mustOK(t, x.do(map[string]any{"op": "sub", "topic": "doc", "presence": true}))
		}
		waitMembers(t, "doc", sorted(sa, sb, ea.sessionOf(), eb.sessionOf()), a, b)
		nats.stop()
		// Each node alone: the other's members leave.
		waitMembers(t, "doc", sorted(sa, ea.sessionOf()), a)
		waitMembers(t, "doc", sorted(sb, eb.sessionOf()), b)
		mustOK(t, eb.do(map[string]any{"op": "unsub", "topic": "doc"}))
		nats.start()
		waitMembers(t, "doc", sorted(sa, sb, ea.sessionOf()), a, b)
		mustOK(t, ea.do(map[string]any{"op": "unsub", "topic": "doc"}))
		waitMembers(t, "doc", sorted(sa, sb), a, b)
		t.Logf("round %d: converged", round+1)
	}
	// For each member, b saw joins and leaves alternate: none counted
	// twice, none missed.
	last := map[string]string{}
	for _, e := range b.presenceOf("doc") {
		op, session, _ := strings.Cut(e, " ")
		if last[session] == op {
			t.Errorf("b saw %s %s twice in a row: %v", op, session, b.presenceOf("doc"))
		}
		last[session] = op
	}
}
