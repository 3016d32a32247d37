package cluster

import "testing"

// TestTakeCaseDecide checks who takes a stale or handed-back lease. With
// replication only a node holding the partition's history takes it; no
// heartbeat, live or expired, makes a node without the history take it,
// unless the operator allowed an unclean takeover.
func TestTakeCaseDecide(t *testing.T) {
	live := []string{"n1", "n2"} // n3 looks dead: its heartbeat expired
	for _, tc := range []struct {
		name       string
		c          takeCase
		take, keep bool
	}{
		{"a listed follower takes a stale owner's lease with its history",
			takeCase{owner: "n3", listed: []string{"n1"}, keep: true, replicated: true}, true, true},
		{"... even past its share",
			takeCase{owner: "n3", listed: []string{"n1"}, keep: true, replicated: true, under: false}, true, true},
		{"a node without the history never takes a stale lease, though every holder looks dead (NATS was away)",
			takeCase{owner: "n3", listed: []string{"n4"}, under: true, waited: true, replicated: true}, false, false},
		{"... nor one naming no follower",
			takeCase{owner: "n3", under: true, waited: true, replicated: true}, false, false},
		{"... nor one handed back by a node gone since",
			takeCase{free: true, prev: "n3", under: true, waited: true, replicated: true}, false, false},
		{"a listed follower whose copy was wiped does not take it either",
			takeCase{owner: "n3", listed: []string{"n1"}, under: true, waited: true, replicated: true}, false, false},
		{"an unclean takeover, when allowed and due, takes it within the share in a new epoch",
			takeCase{owner: "n3", listed: []string{"n4"}, under: true, unclean: true, replicated: true}, true, false},
		{"... but not past the share",
			takeCase{owner: "n3", listed: []string{"n4"}, under: false, unclean: true, replicated: true}, false, false},
		{"prev takes back its handed-back lease within its share",
			takeCase{free: true, prev: "n1", keep: true, under: true, replicated: true}, true, true},
		{"a listed follower takes a handed-back lease within its share",
			takeCase{free: true, prev: "n2", listed: []string{"n1"}, keep: true, under: true, replicated: true}, true, true},
		{"a listed follower over its share leaves a handed-back lease to others while prev lives",
			takeCase{free: true, prev: "n2", listed: []string{"n1"}, keep: true, replicated: true}, false, true},
		{"... and takes it when prev died",
			takeCase{free: true, prev: "n3", listed: []string{"n1"}, keep: true, replicated: true}, true, true},
		{"... or when nobody took it for a while",
			takeCase{free: true, prev: "n2", listed: []string{"n1"}, keep: true, waited: true, replicated: true}, true, true},
		{"without replication a node takes a stale lease within its share",
			takeCase{owner: "n3", under: true}, true, false},
		{"... not past it",
			takeCase{owner: "n3"}, false, false},
		{"... and leaves a handed-back lease to prev while prev lives",
			takeCase{free: true, prev: "n2", under: true}, false, false},
		{"... or takes it when prev died",
			takeCase{free: true, prev: "n3", under: true}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			take, keep := tc.c.decide("n1", live)
			if take != tc.take || take && keep != tc.keep {
				t.Fatalf("decide(%+v) = take %v keep %v, want take %v keep %v", tc.c, take, keep, tc.take, tc.keep)
			}
		})
	}
}
