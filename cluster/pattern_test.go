package cluster_test

import (
	"fmt"
	"testing"
)

// patternMsgs returns the offsets each topic delivered through pattern,
// and each topic's topic events.
func patternMsgs(evs []map[string]any, pattern string) (offs map[string][]uint64, topics map[string][]map[string]any) {
	offs, topics = map[string][]uint64{}, map[string][]map[string]any{}
	for _, ev := range evs {
		if ev["sub"] != pattern {
			continue
		}
		topic := fmt.Sprint(ev["topic"])
		switch ev["op"] {
		case "msg":
			offs[topic] = append(offs[topic], num(ev["offset"]))
		case "topic":
			topics[topic] = append(topics[topic], ev)
		}
	}
	return offs, topics
}

func checkRun(t *testing.T, who string, got []uint64, from, to uint64) {
	t.Helper()
	if uint64(len(got)) != to-from+1 {
		t.Errorf("%s: %d msgs %v, want %d..%d", who, len(got), got, from, to)
		return
	}
	for i, off := range got {
		if off != from+uint64(i) {
			t.Errorf("%s: msg %d has offset %d, want %d..%d without gap or duplicate", who, i, off, from, to)
			return
		}
	}
}

// TestPatternReplayAcrossNodes: a pattern subscription on one node
// replays topics owned by others (listed through their owners), follows
// them live, and resumes with positions on yet another node with no gap
// and no duplicate per topic.
func TestPatternReplayAcrossNodes(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "pat", 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	var topics []string
	for i, owner := range []*testNode{a, b, c, a, b} {
		topics = append(topics, topicOwnedBy(t, owner, fmt.Sprintf("px.%d.", i)))
	}
	for i, topic := range topics {
		fill(t, nodes[i%3], topic, 10+i)
	}
	cc := connect(t, c)
	mustOK(t, cc.do(map[string]any{"op": "sub", "topic": "px.>", "since": 0}))
	total := 0
	for i := range topics {
		total += 10 + i
	}
	evs := cc.wait("replay", func(evs []map[string]any) bool { return len(msgs(evs, "px.>")) >= total })
	offs, tev := patternMsgs(evs, "px.>")
	positions := map[string]any{}
	for i, topic := range topics {
		checkRun(t, "replay "+topic, offs[topic], 1, uint64(10+i))
		if len(tev[topic]) != 1 || num(tev[topic][0]["from"]) != 1 {
			t.Errorf("%s: topic events %v", topic, tev[topic])
		}
		positions[topic] = map[string]any{"from": 11 + i, "epoch": tev[topic][0]["epoch"]}
	}
	// Live, published on every node.
	for i, topic := range topics {
		fill(t, nodes[(i+1)%3], topic, 2)
	}
	evs = cc.wait("live", func(evs []map[string]any) bool { return len(msgs(evs, "px.>")) >= total+2*len(topics) })
	offs, _ = patternMsgs(evs, "px.>")
	for i, topic := range topics {
		checkRun(t, "live "+topic, offs[topic], 1, uint64(12+i))
	}
	// Resume on another node from the positions before the live ones.
	ac := connect(t, a)
	mustOK(t, ac.do(map[string]any{"op": "sub", "topic": "px.>", "positions": positions}))
	evs = ac.wait("resume", func(evs []map[string]any) bool { return len(msgs(evs, "px.>")) >= 2*len(topics) })
	offs, tev = patternMsgs(evs, "px.>")
	for i, topic := range topics {
		checkRun(t, "resumed "+topic, offs[topic], uint64(11+i), uint64(12+i))
		if len(tev[topic]) != 1 || num(tev[topic][0]["from"]) != uint64(11+i) {
			t.Errorf("%s: topic events %v", topic, tev[topic])
		}
	}
}
