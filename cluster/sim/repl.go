package sim

import (
	"slices"

	"github.com/brokerd/brokerd/cluster/core"
)

// followerCount is how many followers a partition has
// (cluster.Config.followerCount).
func (n *node) followerCount() int {
	if n.w.cfg.Auto {
		return min(1, max(len(n.members)-1, 0))
	}
	return n.w.cfg.Replicas - 1
}

// setFollowers makes the followers of held partition p those of the
// members (cluster.Node.setFollowers): make before break, a follower no
// longer wanted leaving the lease before acknowledgements stop waiting
// for it.
func (n *node) setFollowers(p int) {
	st := &n.parts[p]
	if !st.mine || st.renew {
		return
	}
	target := core.FollowersFor(p, n.name, n.members, n.followerCount())
	if st.extra != "" && st.extra != n.name && slices.Contains(n.members, st.extra) && !slices.Contains(target, st.extra) {
		target = append(target, st.extra)
	}
	if st.synced == nil {
		st.synced, st.syncing, st.counted, st.csync = map[string]bool{}, map[string]bool{}, map[string]bool{}, map[string]bool{}
	}
	want, drop := core.Want(target, st.want, st.synced, n.members, st.listed)
	term := st.term
	apply := func() {
		st := &n.parts[p]
		if !st.mine || st.term != term {
			return
		}
		st.want = want
		for _, m := range []map[string]bool{st.synced, st.counted, st.csync} {
			for f := range m {
				if !slices.Contains(want, f) {
					delete(m, f)
				}
			}
		}
		for _, f := range want {
			if !st.synced[f] && !st.syncing[f] {
				st.syncing[f] = true
				n.syncFollower(p, term, f)
			}
		}
		n.advance(p)
	}
	if drop {
		nl := n.w.cfg.Rules.Listing(want, st.synced)
		n.renewLease(p, term, st.w.Rev, nl, func(ok bool) {
			if ok {
				apply()
			}
		})
		return
	}
	apply()
}

// syncFollower sends follower f a copy of the partition's log and puts it
// in sync once it holds every acknowledged record (cluster.Node.syncFollower
// and agree, reduced to "the follower's copy becomes the owner's").
func (n *node) syncFollower(p int, term uint64, f string) {
	fn := n.w.node(f)
	lg := n.logs[p]
	snap := plog{epoch: lg.epoch, recs: slices.Clone(lg.recs)}
	n.w.tracef("%s syncs %s on p%d term %d (%d records)", n.name, f, p, term, len(snap.recs))
	fail := func() {
		if st := &n.parts[p]; st.term == term {
			st.syncing[f] = false
		}
	}
	n.w.send(n, fn, "sync", func() {
		held, ok := fn.takeCopy(p, term, snap)
		late := fn.late
		n.w.send(fn, n, "synced", func() {
			st := &n.parts[p]
			if !st.mine || st.term != term || st.syncing == nil {
				return
			}
			if !ok {
				fail()
				return
			}
			st.syncing[f] = false
			if slices.Contains(st.want, f) {
				// It holds the history: acknowledgements wait for it
				// from now on, and the consumer positions go to it
				// after this moment (cluster.Node.syncConsumers).
				st.counted[f] = true
				n.confirm(p, term, snap.epoch, f, held, late)
				n.syncConsumer(p, term, f)
			}
		})
	})
	// A lost sync or answer is retried by the next lease pass.
	n.w.after(n.w.cfg.TTL, func() {
		if st := &n.parts[p]; n.up && st.mine && st.term == term && st.syncing[f] && !st.counted[f] {
			fail()
		}
	})
}

// takeCopy makes this node's copy of p the owner's log snap, of term.
func (n *node) takeCopy(p int, term uint64, snap plog) (uint64, bool) {
	n.late = n.fence[p] > term
	fence, ok := n.w.cfg.Rules.Admit(n.fence[p], term, n.parts[p].mine)
	n.fence[p] = fence
	if !ok {
		return 0, false
	}
	n.followed[p] = term
	lg := &n.logs[p]
	if lg.epoch == snap.epoch && len(lg.recs) > len(snap.recs) && n.verified[p] == term {
		// Records sent after the copy was taken overtook it.
		return uint64(len(lg.recs)), true
	}
	*lg = plog{epoch: snap.epoch, recs: snap.recs}
	n.verified[p] = term
	return uint64(len(lg.recs)), true
}

// publish appends a client's record to p, which this node owns, and
// sends it to the followers (the store's commit hook and replicate).
func (n *node) publish(p int, val uint64) {
	if !n.serves(p) {
		return // the client is told unavailable
	}
	st := &n.parts[p]
	rs := n.replState(p)
	lg := &n.logs[p]
	lg.recs = append(lg.recs, rec{val: val, term: st.term})
	off := uint64(len(lg.recs))
	rs.waits = append(rs.waits, off)
	for _, f := range st.want {
		n.sendRecords(p, f, off)
	}
	n.advance(p)
}

// replState returns the replication state of owned p, made at its first
// record of the term: what the log holds then is acknowledged.
func (n *node) replState(p int) *rstate {
	st := &n.parts[p]
	rs := n.repl[p]
	if rs == nil || rs.term != st.term || rs.epoch != n.logs[p].epoch {
		rs = &rstate{term: st.term, epoch: n.logs[p].epoch, conf: map[string]uint64{}}
		rs.acked = uint64(len(n.logs[p].recs))
		n.repl[p] = rs
	}
	return rs
}

// sendRecords sends follower f the records of p from offset from on.
func (n *node) sendRecords(p int, f string, from uint64) {
	st := &n.parts[p]
	lg := n.logs[p]
	if from < 1 || from > uint64(len(lg.recs)) {
		return
	}
	recs := slices.Clone(lg.recs[from-1:])
	term, epoch := st.term, lg.epoch
	fn := n.w.node(f)
	n.w.send(n, fn, "records", func() {
		res, off := fn.follow(p, term, epoch, from, recs)
		late := fn.late
		n.w.send(fn, n, "confirm", func() {
			switch res {
			case rsOK:
				n.confirm(p, term, epoch, f, off, late)
			case rsGap:
				if st := &n.parts[p]; st.mine && st.term == term {
					n.sendRecords(p, f, off)
				}
			}
		})
	})
}

const (
	rsOK = iota
	rsGap
	rsStale
	rsVerify
)

// follow stores records of p from the owner of term (cluster.Node.follow).
func (n *node) follow(p int, term uint64, epoch int, from uint64, recs []rec) (int, uint64) {
	n.late = n.fence[p] > term
	fence, ok := n.w.cfg.Rules.Admit(n.fence[p], term, n.parts[p].mine)
	n.fence[p] = fence
	if !ok {
		return rsStale, 0
	}
	n.followed[p] = term
	lg := &n.logs[p]
	if n.verified[p] != term || lg.epoch != epoch {
		return rsVerify, 0
	}
	have := uint64(len(lg.recs))
	if from > have+1 {
		return rsGap, have + 1
	}
	for i, r := range recs {
		if from+uint64(i) > have {
			lg.recs = append(lg.recs, r)
		}
	}
	return rsOK, uint64(len(lg.recs))
}

// confirm records that follower f holds p up to off in term. late: f
// stored the records after it had seen a later term than this one.
func (n *node) confirm(p int, term uint64, epoch int, f string, off uint64, late bool) {
	st := &n.parts[p]
	rs := n.repl[p]
	if rs == nil || rs.term != term || rs.epoch != epoch || !st.mine || st.term != term {
		return
	}
	if off > rs.conf[f] {
		rs.conf[f] = off
		if late {
			if rs.late == nil {
				rs.late = map[string]uint64{}
			}
			if _, ok := rs.late[f]; !ok {
				rs.late[f] = off
			}
		}
	}
	if st.counted[f] && st.csync[f] && !st.synced[f] && rs.conf[f] >= rs.acked {
		st.synced[f] = true // the next renewal names it
	}
	n.advance(p)
}

// wantOf returns the followers of owned p in sync (or counted: holding
// the history) and how many copies an acknowledgement needs besides the
// owner's (cluster.Node.wantOf).
func (n *node) wantOf(p int) (insync []string, need int) {
	st := &n.parts[p]
	for _, f := range st.want {
		if st.synced[f] || st.counted[f] {
			insync = append(insync, f)
		}
	}
	need = n.followerCount()
	if n.w.cfg.Auto {
		need = min(need, len(insync))
	}
	return insync, need
}

// advance moves p's acknowledged offset and answers the clients
// (cluster.Node.advanceLocked).
func (n *node) advance(p int) {
	st := &n.parts[p]
	rs := n.repl[p]
	if rs == nil || !st.mine || rs.term != st.term {
		return
	}
	insync, need := n.wantOf(p)
	if len(st.want) < need || !n.holds(p, rs.term) {
		return
	}
	head := uint64(len(n.logs[p].recs))
	m := n.w.cfg.Rules.Acked(rs.acked, head, st.want, insync, need, rs.conf)
	if m <= rs.acked {
		return
	}
	for _, f := range st.want {
		if lf, ok := rs.late[f]; ok && lf <= m && rs.conf[f] >= m {
			n.w.violate("partition %d: %s, an owner fenced by a later term, counted an acknowledgement up to offset %d on the copy of %s, stored after %s had seen the later term", p, n.name, m, f, f)
		}
	}
	rs.acked = m
	keep := rs.waits[:0]
	for _, off := range rs.waits {
		if off <= m {
			n.w.recordAck(p, rs.term, rs.epoch, off, n.logs[p].recs[off-1].val, n.name)
		} else {
			keep = append(keep, off)
		}
	}
	rs.waits = keep
}

// resendTick sends the followers what they have not confirmed of the
// topics whose acknowledgements stall (cluster.Node.replTickLoop).
func (n *node) resendTick() {
	for p := range n.parts {
		st := &n.parts[p]
		rs := n.repl[p]
		if rs == nil || !st.mine || rs.term != st.term {
			continue
		}
		head := uint64(len(n.logs[p].recs))
		if rs.acked >= head {
			continue
		}
		for _, f := range st.want {
			if c := rs.conf[f]; c < head && (st.synced[f] || st.counted[f]) {
				n.sendRecords(p, f, c+1)
			}
		}
	}
}

// dropUnacked cuts what this node replicated in a term older than term
// back to what it acknowledged (cluster.Node.dropUnacked).
func (n *node) dropUnacked(p int, term uint64) {
	rs := n.repl[p]
	if rs == nil || rs.term >= term {
		return
	}
	n.repl[p] = nil
	lg := &n.logs[p]
	if n.followed[p] <= rs.term && lg.epoch == rs.epoch && uint64(len(lg.recs)) > rs.acked {
		n.w.tracef("%s: p%d lost; drops %d unacknowledged records", n.name, p, uint64(len(lg.recs))-rs.acked)
		lg.recs = lg.recs[:rs.acked]
	}
}

// checkCopy asks the owner of l to check this node's copy of p: where it
// differs from the owner's log, the copy is cut back (cluster.Node.checkCopies).
func (n *node) checkCopy(p int, l core.Lease) {
	o := n.w.node(l.Owner)
	if o == nil {
		return
	}
	n.w.send(n, o, "agree?", func() {
		st := &o.parts[p]
		if !st.mine || st.term != l.Term {
			return
		}
		lg := o.logs[p]
		snap := plog{epoch: lg.epoch, recs: slices.Clone(lg.recs)}
		o.w.send(o, n, "agree", func() {
			if n.fence[p] > l.Term || n.parts[p].mine || n.verified[p] == l.Term {
				return // a copy verified in the term is never cut by its probes
			}
			mine := &n.logs[p]
			if mine.epoch != snap.epoch {
				return
			}
			k := 0
			for k < len(mine.recs) && k < len(snap.recs) && mine.recs[k] == snap.recs[k] {
				k++
			}
			if k < len(mine.recs) && k < len(snap.recs) {
				n.w.tracef("%s: p%d copy cut back to %d by %s", n.name, p, k, o.name)
				mine.recs = mine.recs[:k]
			}
		})
	})
}
