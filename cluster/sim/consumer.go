package sim

import "slices"

// A durable consumer per partition: clients acknowledge offsets of
// acknowledged records through the owner, which stores the position and
// copies it to the followers before answering ok
// (cluster.Node.replicateConsumer); a position never moves backwards in
// one epoch (the store ignores a lower one).

// cpos is a node's stored position of the partition's consumer.
type cpos struct {
	epoch int
	off   uint64
}

// commit stores off as the consumer's position in epoch unless it would
// move backwards.
func (c *cpos) commit(epoch int, off uint64) {
	if c.epoch != epoch {
		*c = cpos{epoch: epoch}
	}
	c.off = max(c.off, off)
}

// ackConsumer is a client acknowledging up to off on p through this node.
func (n *node) ackConsumer(p int, off uint64) {
	if !n.serves(p) {
		return
	}
	st := &n.parts[p]
	term := st.term
	epoch := n.logs[p].epoch
	insync, need := n.wantOf(p)
	if len(st.want) < need || !n.holds(p, term) {
		return
	}
	n.cons[p].commit(epoch, off)
	want := slices.Clone(st.want)
	if len(want) == 0 {
		n.w.recordConsumerAck(p, epoch, off, n.name)
		return
	}
	left, got, missing, answered := len(want), 0, len(insync), false
	for _, f := range want {
		in := slices.Contains(insync, f)
		fn := n.w.node(f)
		replied := false
		reply := func(ok bool) {
			if replied {
				return // a request has one answer: a duplicate is not another
			}
			replied = true
			left--
			if ok {
				got++
				if in {
					missing--
				}
			}
			if answered {
				return
			}
			if missing == 0 && got >= need {
				answered = true
				n.w.recordConsumerAck(p, epoch, off, n.name)
			} else if left == 0 {
				answered = true // unavailable: the client acks again
			}
		}
		n.w.send(n, fn, "consumer", func() {
			ok := fn.followConsumer(p, term, epoch, off)
			n.w.send(fn, n, "consumer ok", func() { reply(ok) })
		})
	}
}

// followConsumer stores a consumer position the owner of term sent.
func (n *node) followConsumer(p int, term uint64, epoch int, off uint64) bool {
	fence, ok := n.w.cfg.Rules.Admit(n.fence[p], term, n.parts[p].mine)
	n.fence[p] = fence
	if !ok || n.verified[p] != term || n.logs[p].epoch != epoch {
		return false
	}
	n.followed[p] = term
	n.cons[p].commit(epoch, off)
	return true
}

// recordConsumerAck notes a consumer position answered ok.
func (w *world) recordConsumerAck(p int, epoch int, off uint64, by string) {
	if c := &w.consAcked[p]; c.epoch == epoch {
		c.off = max(c.off, off)
	} else {
		*c = cpos{epoch: epoch, off: off}
	}
	w.tracef("%s: consumer of p%d acked at %d (epoch %d)", by, p, off, epoch)
}

// scheduleAcks makes consumers acknowledge now and then, through a node
// that serves the partition, an offset it has acknowledged.
func (w *world) scheduleAcks() {
	w.every(23*ms, func() {
		p := w.rng.IntN(w.cfg.Partitions)
		var to []*node
		for _, n := range w.nodes {
			if n.up && n.serves(p) && n.repl[p] != nil && n.repl[p].acked > 0 {
				to = append(to, n)
			}
		}
		if len(to) == 0 {
			return
		}
		n := to[w.rng.IntN(len(to))]
		off := 1 + w.rng.Uint64N(n.repl[p].acked)
		n.run(func() { n.ackConsumer(p, off) })
	})
}

// checkConsumer checks that node n holds the consumer's position of p at
// least where it was answered ok.
func (w *world) checkConsumer(n *node, p int, who string) {
	c := w.consAcked[p]
	if c.off == 0 || n.logs[p].epoch != c.epoch {
		return
	}
	if have := n.cons[p]; have.epoch != c.epoch || have.off < c.off {
		w.violate("partition %d: %s %s holds the consumer at %d (epoch %d), but %d was answered ok: the consumer went backwards", p, who, n.name, have.off, have.epoch, c.off)
	}
}

// syncConsumer sends follower f the consumer's position once f is
// counted: every later position goes to it as well.
func (n *node) syncConsumer(p int, term uint64, f string) {
	fn := n.w.node(f)
	c := n.cons[p]
	n.w.send(n, fn, "consumer sync", func() {
		ok := fn.followConsumer(p, term, c.epoch, c.off)
		n.w.send(fn, n, "consumer synced", func() {
			st := &n.parts[p]
			if !ok || !st.mine || st.term != term || !st.counted[f] {
				return
			}
			st.csync[f] = true
			if rs := n.repl[p]; rs != nil {
				n.confirm(p, term, rs.epoch, f, rs.conf[f], false)
			} else {
				st.synced[f] = true // nothing appended in the term: the copy holds it all
			}
		})
	})
}
