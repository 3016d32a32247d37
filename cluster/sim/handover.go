package sim

import (
	"maps"
	"slices"

	"github.com/brokerd/brokerd/cluster/core"
)

// drain is SIGTERM (cluster.Node.Drain): the node leaves the node bucket
// and hands every partition back, naming itself and its followers, then
// stops.
func (n *node) drain(done func()) {
	w := n.w
	n.draining = true
	w.kvOp(n, func() any {
		delete(w.beats, n.name)
		return w.live()
	}, func(res any, err error) {
		others := false
		if err == nil {
			for _, m := range res.([]string) {
				others = others || m != n.name
			}
		}
		if !others {
			done()
			return
		}
		var ps []int
		for p := range n.parts {
			if n.parts[p].mine {
				ps = append(ps, p)
			}
		}
		n.release(ps, done)
	})
}

// release hands partitions back (cluster.Node.release): it stops serving
// them, waits a little for their records to be acknowledged, and writes
// each lease as handed back, naming this node and its followers: the
// nodes that hold the history.
func (n *node) release(ps []int, done func()) {
	w := n.w
	for _, p := range ps {
		n.parts[p].ready, n.parts[p].releasing = false, true
	}
	deadline := n.clock() + core.Time(w.cfg.TTL/3)
	gen := n.gen
	var wait func()
	wait = func() {
		if n.gen != gen {
			return
		}
		if n.unacked(ps) && n.clock() < deadline {
			w.after(2*ms, func() { n.run(wait) })
			return
		}
		left := 0
		for _, p := range ps {
			st := n.parts[p]
			if !st.mine {
				continue
			}
			left++
			w.kvOp(n, func() any {
				if _, err := w.kvUpdate(p, core.EncodeLease(core.FreeMark+n.name, st.term, st.listed), st.w.Rev); err != nil {
					return false
				}
				return true
			}, func(res any, err error) {
				w.tracef("%s hands p%d back (term %d, listed %v): %v %v", n.name, p, st.term, st.listed, res, err)
				n.parts[p] = part{}
				if left--; left == 0 && done != nil {
					done()
				}
			})
		}
		if left == 0 && done != nil {
			done()
		}
	}
	wait()
}

// unacked tells whether a partition of ps has records not yet
// acknowledged.
func (n *node) unacked(ps []int) bool {
	for _, p := range ps {
		if rs := n.repl[p]; rs != nil && rs.acked < uint64(len(n.logs[p].recs)) && rs.epoch == n.logs[p].epoch {
			return true
		}
	}
	return false
}

// rebalance hands partitions over past this node's share
// (cluster.Node.rebalance, core.Balance).
func (n *node) rebalance(live []string, share int) {
	parts := make([]core.Held, len(n.parts))
	for p := range n.parts {
		st := &n.parts[p]
		parts[p] = core.Held{Mine: st.mine, Owner: st.owner, Ready: st.ready, Listed: st.listed, Extra: st.extra}
	}
	release, extra := core.Balance(n.name, parts, live, share, n.w.rng.Perm(len(parts)))
	for _, p := range slices.Sorted(maps.Keys(extra)) {
		if n.parts[p].mine {
			n.parts[p].extra = extra[p]
			n.setFollowers(p)
		}
	}
	if len(release) > 0 {
		n.w.tracef("%s hands %v over for balance", n.name, release)
		n.release(release, nil)
	}
}
