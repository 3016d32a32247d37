package core

import "slices"

// FollowersFor returns the k followers of partition p owned by owner among
// members (sorted): the members after the owner, starting at position p.
func FollowersFor(p int, owner string, members []string, k int) []string {
	var out []string
	for i := range members {
		m := members[(p+i)%len(members)]
		if m != owner && len(out) < k {
			out = append(out, m)
		}
	}
	return out
}

// Want returns the followers an owned partition's records go to, given
// its target followers, the followers it had (want) and those of them in
// sync. Make before break: a follower no longer wanted stays, and
// acknowledgements keep waiting for it, until every new one is in sync.
// Drop tells whether the lease names a follower not in the result: the
// lease must be written without it before acknowledgements stop waiting
// for it.
func Want(target, want []string, synced map[string]bool, members, listed []string) (next []string, drop bool) {
	done := true
	for _, f := range target {
		done = done && synced[f]
	}
	next = slices.Clone(target)
	if !done {
		for _, f := range want {
			if synced[f] && slices.Contains(members, f) && !slices.Contains(next, f) {
				next = append(next, f)
			}
		}
	}
	for _, f := range listed {
		drop = drop || !slices.Contains(next, f)
	}
	return next, drop
}

// Listing returns the followers a lease names: those of want in sync,
// sorted. With ListSynced off, every follower of want, in sync or not.
func (r Rules) Listing(want []string, synced map[string]bool) []string {
	var l []string
	for _, f := range want {
		if synced[f] || !r.On(ListSynced) {
			l = append(l, f)
		}
	}
	slices.Sort(l)
	return l
}

// Acked returns how far a topic's records are acknowledged: the highest
// offset up to head that every follower in sync holds (the lease names
// them as holding every acknowledged record) and at least need followers
// of want hold, never below acked. conf is what each follower confirmed
// it holds durably.
func (r Rules) Acked(acked, head uint64, want, insync []string, need int, conf map[string]uint64) uint64 {
	m := head
	if r.On(WaitCopies) {
		for _, f := range insync {
			m = min(m, conf[f])
		}
		if need > 0 {
			if len(want) < need {
				return acked
			}
			c := make([]uint64, 0, len(want))
			for _, f := range want {
				c = append(c, conf[f])
			}
			slices.Sort(c)
			m = min(m, c[len(c)-need])
		}
	}
	return max(m, acked)
}

// Admit tells whether a follower takes records of term for a partition
// whose highest term seen is fence, and what the fence becomes. An owner
// never takes records of its own partition from another node.
func (r Rules) Admit(fence, term uint64, owner bool) (uint64, bool) {
	if owner || term < fence && r.On(TermCheck) {
		return fence, false
	}
	return max(fence, term), true
}
