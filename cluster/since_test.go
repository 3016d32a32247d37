package cluster_test

import (
	"fmt"
	"testing"
)

// TestOffsetAtAnywhere: a since lookup on a node that does not own the
// topic is answered by the owner, and a sub with since works there.
func TestOffsetAtAnywhere(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "since", 2)
	a, b := nodes[0], nodes[1]
	topic := topicOwnedBy(t, a, "since.")
	var times []int64
	for i := range 10 {
		ap, err := b.Broker.Publish(t.Context(), topic, []byte(fmt.Sprint(i)), "")
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, ap.Time)
	}
	for _, ms := range append(times, 0, times[9]+1) {
		want, wantET, err := a.Store.OffsetAt(topic, ms)
		if err != nil {
			t.Fatal(err)
		}
		for _, tn := range nodes {
			got, et, err := tn.Node.OffsetAt(topic, ms)
			if err != nil || got != want || et != wantET {
				t.Errorf("%s: OffsetAt(%d) = %d, %d, %v; the owner's store says %d, %d", tn.name, ms, got, et, err, want, wantET)
			}
		}
	}
	cc := connect(t, b)
	want, _, _ := a.Store.OffsetAt(topic, times[5])
	ok := mustOK(t, cc.do(map[string]any{"op": "sub", "topic": topic, "since": times[5]}))
	if num(ok["from"]) != want {
		t.Fatalf("sub since on %s: ok %v, want from %d", b.name, ok, want)
	}
	cc.wait("replay", func(evs []map[string]any) bool { return len(msgs(evs, topic)) >= int(11-want) })
	if got := msgs(cc.wait("replay", func([]map[string]any) bool { return true }), topic); got[0] != want || got[len(got)-1] != 10 {
		t.Fatalf("replayed %v, want %d..10", got, want)
	}
}
