package core

import "testing"

// TestDecide checks who takes a stale or handed-back lease. With
// replication only a node holding the partition's history takes it; no
// heartbeat, live or expired, makes a node without the history take it,
// unless the operator allowed an unclean takeover.
func TestDecide(t *testing.T) {
	live := []string{"n1", "n2"} // n3 looks dead: its heartbeat expired
	for _, tc := range []struct {
		name       string
		c          TakeCase
		take, keep bool
	}{
		{"a listed follower takes a stale owner's lease with its history",
			TakeCase{Owner: "n3", Listed: []string{"n1"}, Keep: true, Replicated: true}, true, true},
		{"... even past its share",
			TakeCase{Owner: "n3", Listed: []string{"n1"}, Keep: true, Replicated: true, Under: false}, true, true},
		{"a node without the history never takes a stale lease, though every holder looks dead (NATS was away)",
			TakeCase{Owner: "n3", Listed: []string{"n4"}, Under: true, Waited: true, Replicated: true}, false, false},
		{"... nor one naming no follower",
			TakeCase{Owner: "n3", Under: true, Waited: true, Replicated: true}, false, false},
		{"... nor one handed back by a node gone since",
			TakeCase{Free: true, Prev: "n3", Under: true, Waited: true, Replicated: true}, false, false},
		{"a listed follower whose copy was wiped does not take it either",
			TakeCase{Owner: "n3", Listed: []string{"n1"}, Under: true, Waited: true, Replicated: true}, false, false},
		{"an unclean takeover, when allowed and due, takes it within the share in a new epoch",
			TakeCase{Owner: "n3", Listed: []string{"n4"}, Under: true, Unclean: true, Replicated: true}, true, false},
		{"... but not past the share",
			TakeCase{Owner: "n3", Listed: []string{"n4"}, Under: false, Unclean: true, Replicated: true}, false, false},
		{"prev takes back its handed-back lease within its share",
			TakeCase{Free: true, Prev: "n1", Keep: true, Under: true, Replicated: true}, true, true},
		{"a listed follower takes a handed-back lease within its share",
			TakeCase{Free: true, Prev: "n2", Listed: []string{"n1"}, Keep: true, Under: true, Replicated: true}, true, true},
		{"a listed follower over its share leaves a handed-back lease to others while prev lives",
			TakeCase{Free: true, Prev: "n2", Listed: []string{"n1"}, Keep: true, Replicated: true}, false, true},
		{"... and takes it when prev died",
			TakeCase{Free: true, Prev: "n3", Listed: []string{"n1"}, Keep: true, Replicated: true}, true, true},
		{"... or when nobody took it for a while",
			TakeCase{Free: true, Prev: "n2", Listed: []string{"n1"}, Keep: true, Waited: true, Replicated: true}, true, true},
		{"without replication a node takes a stale lease within its share",
			TakeCase{Owner: "n3", Under: true}, true, false},
		{"... not past it",
			TakeCase{Owner: "n3"}, false, false},
		{"... and leaves a handed-back lease to prev while prev lives",
			TakeCase{Free: true, Prev: "n2", Under: true}, false, false},
		{"... or takes it when prev died",
			TakeCase{Free: true, Prev: "n3", Under: true}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			take, keep := Safe().Decide(tc.c, "n1", live)
			if take != tc.take || take && keep != tc.keep {
				t.Fatalf("decide(%+v) = take %v keep %v, want take %v keep %v", tc.c, take, keep, tc.take, tc.keep)
			}
		})
	}
}
