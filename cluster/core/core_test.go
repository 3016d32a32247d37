package core

import (
	"slices"
	"testing"
)

func TestLeaseValue(t *testing.T) {
	for _, tc := range []struct {
		value string
		rev   uint64
		want  Lease
	}{
		{"n1 0", 7, Lease{Owner: "n1", Term: 7, Rev: 7}},
		{"n1 5", 9, Lease{Owner: "n1", Term: 5, Rev: 9}},
		{"n1 5 n2,n3", 9, Lease{Owner: "n1", Term: 5, Listed: []string{"n2", "n3"}, Rev: 9}},
		{"~n1 5 n2", 11, Lease{Free: true, Prev: "n1", Term: 5, Listed: []string{"n2"}, Rev: 11}},
	} {
		got := ParseLease([]byte(tc.value), tc.rev)
		if got.Owner != tc.want.Owner || got.Term != tc.want.Term || got.Rev != tc.want.Rev || got.Free != tc.want.Free ||
			got.Prev != tc.want.Prev || !slices.Equal(got.Listed, tc.want.Listed) {
			t.Errorf("ParseLease(%q, %d) = %+v, want %+v", tc.value, tc.rev, got, tc.want)
		}
	}
	if l := ParseLease(EncodeLease("n2", 4, []string{"n1"}), 8); l.Owner != "n2" || l.Term != 4 || !slices.Equal(l.Listed, []string{"n1"}) {
		t.Errorf("round trip: %+v", l)
	}
}

func FuzzParseLease(f *testing.F) {
	f.Add([]byte("n1 5 n2,n3"), uint64(9))
	f.Add([]byte("~n1 0"), uint64(1))
	f.Fuzz(func(t *testing.T, v []byte, rev uint64) {
		l := ParseLease(v, rev)
		if l.Term == 0 && rev != 0 {
			t.Fatalf("term 0 from %q at %d", v, rev)
		}
		if l.Free && l.Owner != "" {
			t.Fatalf("a free lease with an owner: %+v", l)
		}
	})
}

func TestWatch(t *testing.T) {
	var w Watch
	w.Observe(5, false, 100)
	w.Observe(5, false, 200)
	if w.Seen != 100 {
		t.Fatalf("an unchanged revision moved Seen to %d", w.Seen)
	}
	if u := w.Unchanged(1100, 0); u != 1000 {
		t.Fatalf("unchanged %d, want 1000", u)
	}
	if u := w.Unchanged(1100, 900); u != 200 {
		t.Fatalf("time blind counted: unchanged %d, want 200", u)
	}
	w.Observe(4, true, 300) // a read older than this node's own write
	if w.Rev != 5 || w.Seen != 100 {
		t.Fatalf("an older read of a held lease moved the watch: %+v", w)
	}
	if !Stale(1100, 1000) || Stale(1099, 1000) || !Waited(2100, 1000) || Waited(2099, 1000) {
		t.Fatal("stale after TTL+TTL/10, waited after 2×TTL+TTL/10")
	}
}

func TestPass(t *testing.T) {
	const ttl = Duration(1000)
	held := Lease{Owner: "n3", Term: 10, Listed: []string{"n1"}, Rev: 20}
	for _, tc := range []struct {
		name string
		in   PassIn
		want PassOut
	}{
		{"no lease, under the share: create",
			PassIn{Self: "n1", Under: true}, PassOut{Action: Create}},
		{"no lease, draining: nothing",
			PassIn{Self: "n1", Under: true, Draining: true}, PassOut{}},
		{"a live owner's lease: nothing, and this listed follower has no copy to check",
			PassIn{Self: "n1", Found: true, Lease: held, Followed: 10, TTL: ttl, Unchanged: 500, Replicated: true, Under: true},
			PassOut{}},
		{"a stale lease naming this follower, which followed its term: take it with the data",
			PassIn{Self: "n1", Found: true, Lease: held, Followed: 10, TTL: ttl, Unchanged: 1100, Replicated: true},
			PassOut{Action: Take, Keep: true, Rev: 20, Stale: true, Dead: true}},
		{"a stale lease not naming this node: wait for a holder, check the copies",
			PassIn{Self: "n2", Found: true, Lease: held, Followed: 3, TTL: ttl, Unchanged: 5000, Replicated: true, Under: true},
			PassOut{Waiting: true, Check: true, Stale: true, Dead: true}},
		{"... unless the unclean delay has passed",
			PassIn{Self: "n2", Found: true, Lease: held, Followed: 3, TTL: ttl, Unchanged: 5000, Unclean: 4000, Replicated: true, Under: true},
			PassOut{Action: Take, Rev: 20, Unclean: true, Check: true, Stale: true, Dead: true}},
		{"this node's lease from an earlier run, its data of that term: claim it",
			PassIn{Self: "n3", Found: true, Lease: held, Held: 10, TTL: ttl, Replicated: true},
			PassOut{Action: Claim, Term: 10, Rev: 20}},
		{"this node's lease from an earlier run, its data of another term: nothing",
			PassIn{Self: "n3", Found: true, Lease: held, Held: 4, TTL: ttl, Replicated: true},
			PassOut{}},
		{"a later owner holds what this node replicated: drop the unacknowledged",
			PassIn{Self: "n2", Found: true, Lease: held, Followed: 10, ReplTerm: 8, TTL: ttl, Replicated: true},
			PassOut{DropUnacked: true}},
		{"this node held it and another holds it now: lost",
			PassIn{Self: "n2", Mine: true, Found: true, Lease: held, Followed: 10, TTL: ttl, Replicated: true},
			PassOut{Lost: true}},
		{"handed back by this node with its data, within its share: take it back",
			PassIn{Self: "n3", Found: true, Lease: Lease{Free: true, Prev: "n3", Term: 10, Rev: 21}, Held: 10, TTL: ttl, Replicated: true, Under: true},
			PassOut{Action: Take, Keep: true, Rev: 21, Stale: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Safe().Pass(tc.in); got != tc.want {
				t.Fatalf("Pass = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestAcked(t *testing.T) {
	conf := map[string]uint64{"a": 7, "b": 4, "c": 9}
	for _, tc := range []struct {
		name         string
		want, insync []string
		need         int
		acked, head  uint64
		out          uint64
	}{
		{"every follower in sync holds it", []string{"a", "c"}, []string{"a", "c"}, 2, 0, 10, 7},
		{"one copy of three is enough, but b is in sync", []string{"a", "b", "c"}, []string{"b"}, 1, 0, 10, 4},
		{"one copy of three, nobody in sync: the best one", []string{"a", "b", "c"}, nil, 1, 0, 10, 9},
		{"never past head", []string{"c"}, []string{"c"}, 1, 0, 8, 8},
		{"never backwards", []string{"b"}, []string{"b"}, 1, 6, 10, 6},
		{"too few followers: nothing moves", []string{"a"}, nil, 2, 3, 10, 3},
		{"no follower needed", nil, nil, 0, 0, 10, 10},
	} {
		if got := Safe().Acked(tc.acked, tc.head, tc.want, tc.insync, tc.need, conf); got != tc.out {
			t.Errorf("%s: Acked = %d, want %d", tc.name, got, tc.out)
		}
	}
	if got := Safe().Without(WaitCopies).Acked(0, 10, []string{"b"}, []string{"b"}, 1, conf); got != 10 {
		t.Errorf("without WaitCopies: %d, want 10", got)
	}
}

func TestAdmit(t *testing.T) {
	if f, ok := Safe().Admit(5, 7, false); !ok || f != 7 {
		t.Errorf("a later term: %d %v", f, ok)
	}
	if f, ok := Safe().Admit(7, 7, false); !ok || f != 7 {
		t.Errorf("the same term: %d %v", f, ok)
	}
	if f, ok := Safe().Admit(7, 5, false); ok || f != 7 {
		t.Errorf("an older term admitted: %d %v", f, ok)
	}
	if _, ok := Safe().Admit(0, 9, true); ok {
		t.Error("an owner took records of its own partition")
	}
	if f, ok := Safe().Without(TermCheck).Admit(7, 5, false); !ok || f != 7 {
		t.Errorf("without TermCheck: %d %v", f, ok)
	}
}

func TestFollowers(t *testing.T) {
	members := []string{"n1", "n2", "n3", "n4"}
	if got := FollowersFor(1, "n2", members, 2); !slices.Equal(got, []string{"n3", "n4"}) {
		t.Errorf("FollowersFor = %v", got)
	}
	synced := map[string]bool{"n1": true}
	// n1 is no longer a target but stays until n3 is in sync.
	want, drop := Want([]string{"n3"}, []string{"n1"}, synced, members, []string{"n1"})
	if !slices.Equal(want, []string{"n3", "n1"}) || drop {
		t.Errorf("make before break: %v %v", want, drop)
	}
	synced["n3"] = true
	want, drop = Want([]string{"n3"}, []string{"n3", "n1"}, synced, members, []string{"n1", "n3"})
	if !slices.Equal(want, []string{"n3"}) || !drop {
		t.Errorf("break once the new one is in sync: %v %v", want, drop)
	}
	if got := Safe().Listing([]string{"n3", "n1", "n4"}, synced); !slices.Equal(got, []string{"n1", "n3"}) {
		t.Errorf("Listing = %v", got)
	}
}

// TestPassIntent: a lease naming this node in a term its data was never
// made ready for is its own take cut short; it takes it up as it set out
// to, and without the record the partition would wait for good.
func TestPassIntent(t *testing.T) {
	const ttl = Duration(1000)
	mine := Lease{Owner: "n1", Term: 30, Rev: 30}
	in := PassIn{Self: "n1", Found: true, Lease: mine, Held: 12, Followed: 12, TTL: ttl, Unchanged: 5000, Replicated: true}
	if got := Safe().Pass(in); got.Action != None || !got.Waiting {
		t.Fatalf("without the intent: %+v, want waiting", got)
	}
	in.Intent = &Intent{Rev: 25, Keep: true}
	if got := Safe().Pass(in); got.Action != Claim || !got.Keep || got.Term != 30 {
		t.Fatalf("with a keep intent: %+v, want a claim with the data", got)
	}
	in.Intent = &Intent{Rev: 0}
	if got := Safe().Pass(in); got.Action != Claim || got.Keep {
		t.Fatalf("with a create intent: %+v, want a claim in new epochs", got)
	}
	in.Intent = &Intent{Rev: 31, Keep: true}
	if got := Safe().Pass(in); got.Action == Claim {
		t.Fatalf("an intent older than the lease's take: %+v", got)
	}
	// Handed back by a drain before the data was ready.
	in.Lease = Lease{Free: true, Prev: "n1", Term: 30, Rev: 33}
	in.Intent = &Intent{Rev: 25, Keep: true}
	in.Under = true
	if got := Safe().Pass(in); got.Action != Take || !got.Keep || got.Unclean {
		t.Fatalf("handed back before ready: %+v, want a take with the data", got)
	}
}

func TestBalance(t *testing.T) {
	live := []string{"n1", "n2", "n3"}
	// n1 holds four partitions of six (share 2); n2 holds one, n3 none.
	parts := []Held{
		{Mine: true, Ready: true, Listed: []string{"n2"}},
		{Mine: true, Ready: true, Listed: []string{"n3"}},
		{Mine: true, Ready: true},
		{Mine: true, Ready: false, Listed: []string{"n3"}},
		{Owner: "n2"},
		{},
	}
	release, extra := Balance("n1", parts, live, 2, []int{0, 1, 2, 3, 4, 5})
	// n2 has room for one, n3 for two; n1 has two too many: partition 0
	// goes to its listed n2, partition 1 to its listed n3; the one not
	// ready never moves.
	if !slices.Equal(release, []int{0, 1}) || len(extra) != 0 {
		t.Fatalf("release %v extra %v", release, extra)
	}
	// Nobody listed under its share: an extra follower first, the node
	// with the most room.
	parts = []Held{{Mine: true, Ready: true}, {Mine: true, Ready: true}, {Mine: true, Ready: true}, {Owner: "n2"}}
	release, extra = Balance("n1", parts, live, 2, []int{0, 1, 2, 3})
	if len(release) != 0 || len(extra) != 1 || extra[0] != "n3" {
		t.Fatalf("release %v extra %v, want partition 0 to get n3 as an extra follower", release, extra)
	}
	// Once the extra is listed, the partition is handed back.
	parts[0].Extra, parts[0].Listed = "n3", []string{"n3"}
	release, extra = Balance("n1", parts, live, 2, []int{0, 1, 2, 3})
	if !slices.Equal(release, []int{0}) || len(extra) != 0 {
		t.Fatalf("release %v extra %v", release, extra)
	}
	// Within its share: nothing moves, a transfer under way is undone.
	parts = []Held{{Mine: true, Ready: true, Extra: "n2"}, {Owner: "n2"}, {Owner: "n3"}}
	release, extra = Balance("n1", parts, live, 1, []int{0, 1, 2})
	if len(release) != 0 || len(extra) != 1 || extra[0] != "" {
		t.Fatalf("release %v extra %v", release, extra)
	}
}

func TestHoldsServesRenewDue(t *testing.T) {
	const ttl = Duration(900)
	if !Holds(100, 999, ttl) || Holds(100, 1000, ttl) {
		t.Error("Holds: for one TTL from the write")
	}
	if !Serves(true, 100, 909, ttl) || Serves(true, 100, 910, ttl) || Serves(false, 100, 101, ttl) {
		t.Error("Serves: ready, with a tenth of the TTL to spare")
	}
	if RenewDue(100, 399, ttl, nil, nil) || !RenewDue(100, 400, ttl, nil, nil) || !RenewDue(100, 101, ttl, []string{"n2"}, nil) {
		t.Error("RenewDue: a third of the TTL after the write, or the followers changed")
	}
}
