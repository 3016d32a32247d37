package core

import "slices"

// Held is what a node knows of one partition when it balances.
type Held struct {
	Mine   bool     // this node holds the lease
	Owner  string   // not Mine: the owner as last seen ("" when free or unknown)
	Ready  bool     // Mine: the data is ready and requests are served
	Listed []string // Mine: the followers the lease names
	Extra  string   // Mine: a node under its share being made a follower, to hand the partition to once listed
}

// Balance hands partitions over past self's share of the live nodes, with
// replication: a partition goes only to a node that holds its history.
// Where a node under its share is a listed follower already, the lease is
// handed back naming it (Release) and it takes the partition; otherwise
// such a node is made an extra follower first (Extra), brought up to
// date, named in the lease, and handed the partition at a later pass.
// order is the order in which to consider self's partitions (a shuffle:
// no partition is always the first to move). Extra maps each partition
// whose extra follower changes to the new one ("": none).
func Balance(self string, parts []Held, live []string, share int, order []int) (release []int, extra map[int]string) {
	count := map[string]int{}
	for _, h := range parts {
		switch {
		case h.Mine:
			count[self]++
		case h.Owner != "":
			count[h.Owner]++
		}
	}
	room := map[string]int{}
	for _, m := range live {
		if m != self && count[m] < share {
			room[m] = share - count[m]
		}
	}
	excess := count[self] - share
	extra = map[int]string{}
	// Transfers under way, and partitions a follower under its share
	// holds already.
	for _, p := range order {
		h := parts[p]
		if !h.Mine {
			continue
		}
		if h.Extra != "" {
			if excess <= 0 || room[h.Extra] <= 0 || !h.Ready {
				extra[p] = ""
				continue
			}
			room[h.Extra]--
			excess--
			if slices.Contains(h.Listed, h.Extra) {
				release = append(release, p)
			}
			continue
		}
		if excess <= 0 || !h.Ready {
			continue
		}
		for _, f := range h.Listed {
			if room[f] > 0 {
				room[f]--
				excess--
				release = append(release, p)
				break
			}
		}
	}
	// New transfers, to the nodes with the most room.
	for _, p := range order {
		h := parts[p]
		if excess <= 0 {
			break
		}
		cur := h.Extra
		if e, changed := extra[p]; changed {
			cur = e
		}
		if !h.Mine || cur != "" || !h.Ready || slices.Contains(release, p) {
			continue
		}
		best := ""
		for _, m := range slices.Sorted(func(yield func(string) bool) {
			for k := range room {
				if !yield(k) {
					return
				}
			}
		}) {
			if r := room[m]; r > 0 && (best == "" || r > room[best]) {
				best = m
			}
		}
		if best == "" {
			break
		}
		extra[p] = best
		room[best]--
		excess--
	}
	return release, extra
}
