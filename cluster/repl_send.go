package cluster

import (
	"fmt"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// replOutLoop sends the batches replicate queued.
func (n *Node) replOutLoop() {
	defer n.liveWG.Done()
	for {
		select {
		case s := <-n.replOut:
			n.sendSplit(s.node, s.entries)
		case <-n.liveQuit:
			return
		}
	}
}

func recBytes(r *broker.Record) int { return 32 + len(r.Key) + len(r.Data) }

// sendSplit sends es to node in requests that fit a NATS message.
func (n *Node) sendSplit(node string, es []replEntry) {
	limit := n.pageBytes()
	var cur []replEntry
	size := 0
	flush := func() {
		if len(cur) == 0 {
			return
		}
		batch := cur
		n.sendRepl(node, batch, func(res []replResult, err error) { n.onReplied(node, batch, res, err) })
		cur, size = nil, 0
	}
	for _, e := range es {
		over := 64 + len(e.topic) + len(e.epoch)
		recs := e.recs
		for len(recs) > 0 {
			k, sz := 0, 0
			for k < len(recs) && size+over+sz+recBytes(&recs[k]) <= limit {
				sz += recBytes(&recs[k])
				k++
			}
			if k == 0 {
				if len(cur) > 0 {
					flush()
					continue
				}
				k, sz = 1, recBytes(&recs[0])
			}
			pe := e
			pe.recs = recs[:k:k]
			cur = append(cur, pe)
			size += over + sz
			if recs = recs[k:]; len(recs) > 0 {
				flush()
			}
		}
	}
	flush()
}

// onReplied handles a follower's answers to a batch.
func (n *Node) onReplied(node string, es []replEntry, res []replResult, err error) {
	if err != nil {
		n.log.Debug("cluster: replicating to a follower", "node", node, "err", err)
		return
	}
	n.rmu.Lock()
	defer n.rmu.Unlock()
	for i := range es {
		e := &es[i]
		rt := n.repl[e.topic]
		if rt == nil || rt.epoch != e.epoch || rt.term != e.term {
			continue
		}
		switch res[i].st {
		case rsOK:
			rt.setConf(node, res[i].off)
			n.advanceLocked(e.topic, rt)
		case rsGap:
			n.startFetchLocked(e.topic, rt, node, res[i].off)
		case rsVerify:
			n.startFetchLocked(e.topic, rt, node, 0)
		default:
			n.log.Warn("cluster: a follower refused records", "node", node, "topic", e.topic, "err", res[i].msg)
		}
	}
}

// startFetchLocked sends node what it misses of topic from from on, unless
// that is under way already.
func (n *Node) startFetchLocked(topic string, rt *replTopic, node string, from uint64) {
	if again, ok := rt.fetch[node]; ok {
		*again = true
		return
	}
	again := new(bool)
	rt.fetch[node] = again
	go func() {
		for {
			next, err := n.catchUp(topic, node, rt.p, rt.term, rt.epoch, from, 0)
			n.rmu.Lock()
			if err == nil && *again && n.repl[topic] == rt {
				*again = false
				from = next
				n.rmu.Unlock()
				continue
			}
			delete(rt.fetch, node)
			n.rmu.Unlock()
			if err != nil {
				n.log.Debug("cluster: catching a follower up", "node", node, "topic", topic, "err", err)
			}
			return
		}
	}()
}

// catchUp sends node topic's records from from on, read from the local log
// in pages, until node holds all the log holds (or, with until > 0, the
// records up to until), and returns the offset after it. from 0 first
// agrees with node on a common prefix (agree).
func (n *Node) catchUp(topic, node string, p int, term uint64, epoch string, from, until uint64) (uint64, error) {
	stuck := 0
	for {
		if n.closed.Load() {
			return from, broker.ErrClosed
		}
		if until > 0 && from > until {
			return from, nil
		}
		if !n.holds(p, term) {
			return from, fmt.Errorf("%w: the lease of partition %d was lost", ErrUnavailable, p)
		}
		ti, ok, err := n.local.Topic(topic)
		if err != nil {
			return from, err
		}
		if !ok || ti.Epoch != epoch {
			return from, fmt.Errorf("cluster: topic %s is no longer in epoch %s", topic, epoch)
		}
		if from == 0 {
			if from, err = n.agree(topic, node, term, ti); err != nil {
				return from, err
			}
			continue
		}
		e := replEntry{topic: topic, term: term, epoch: epoch}
		recs, err := n.local.Read(topic, from, 1000, n.pageBytes()/2)
		if err != nil {
			return from, err
		}
		if len(recs) == 0 {
			return from, nil
		}
		e.recs = recs
		if recs[0].Offset > from || recs[0].Offset == 1 {
			e.base = true
		}
		res, err := n.replCall(node, e)
		if err != nil {
			return from, err
		}
		switch res.st {
		case rsOK:
			n.confirm(topic, epoch, term, node, res.off)
			from = res.off + 1
			stuck = 0
		case rsGap:
			if res.off == from {
				if stuck++; stuck > 3 {
					return from, fmt.Errorf("cluster: follower %s keeps missing offset %d of %s", node, from, topic)
				}
			}
			from = res.off
		case rsVerify:
			from = 0
			if stuck++; stuck > 3 {
				return from, fmt.Errorf("cluster: follower %s keeps asking to verify %s", node, topic)
			}
		default:
			return from, fmt.Errorf("cluster: follower %s refused %s: %s", node, topic, res.msg)
		}
	}
}

// agree finds the longest prefix of topic that node's copy shares with
// the local log, makes node drop what follows it, and returns the offset
// after it. A copy can differ from the owner's only past some offset: the
// records an earlier owner (or a follower of it) held and never had
// acknowledged, which a later owner replaced. So the copy's last record
// is compared first (one round trip when nothing differs), then a binary
// search finds where the two logs part.
func (n *Node) agree(topic, node string, term uint64, ti broker.TopicInfo) (uint64, error) {
	probe := replEntry{topic: topic, term: term, epoch: ti.Epoch, kind: kindProbe, head: ti.Head}
	res, err := n.replCall(node, probe)
	if err != nil {
		return 0, err
	}
	var h uint64 // the last offset both may hold
	switch res.st {
	case rsOK:
		h = res.off
	case rsGap:
		h = res.off - 1
	default:
		return 0, fmt.Errorf("cluster: follower %s refused %s: %s", node, topic, res.msg)
	}
	same := func(off uint64) (bool, error) {
		recs, err := n.local.Read(topic, off, 1, n.pageBytes()/2)
		if err != nil || len(recs) == 0 || recs[0].Offset != off {
			return false, err // below the owner's earliest: cannot compare
		}
		res, err := n.replCall(node, replEntry{topic: topic, term: term, epoch: ti.Epoch, kind: kindCheck, recs: recs[:1]})
		return err == nil && res.st == rsOK, err
	}
	if h > 0 {
		ok, err := same(h)
		if err != nil {
			return 0, err
		}
		if !ok {
			lo, hi := uint64(0), h // lo: the same (0 trivially), hi: different
			for hi-lo > 1 {
				mid := lo + (hi-lo)/2
				if ok, err = same(mid); err != nil {
					return 0, err
				}
				if ok {
					lo = mid
				} else {
					hi = mid
				}
			}
			n.log.Info("cluster: follower copy diverged; dropping its suffix", "topic", topic, "node", node, "after", lo, "its_head", h)
			h = lo
		}
	}
	probe.kind, probe.head = kindAgree, h
	if res, err = n.replCall(node, probe); err != nil {
		return 0, err
	}
	if res.st != rsOK {
		return 0, fmt.Errorf("cluster: follower %s refused to agree on %s at %d: %s", node, topic, h, res.msg)
	}
	n.confirm(topic, ti.Epoch, term, node, h)
	return h + 1, nil
}

// replCall sends one entry to node and waits for its answer.
func (n *Node) replCall(node string, e replEntry) (replResult, error) {
	type answer struct {
		res []replResult
		err error
	}
	ch := make(chan answer, 1)
	n.sendRepl(node, []replEntry{e}, func(res []replResult, err error) { ch <- answer{res, err} })
	a := <-ch
	if a.err != nil {
		return replResult{}, a.err
	}
	return a.res[0], nil
}

// sendRepl sends es to follower node; done gets one result per entry.
func (n *Node) sendRepl(node string, es []replEntry, done func([]replResult, error)) {
	n.sendTo(n.replSubject(node), node, encodeRepl(n.cfg.Node, es), func(r *reader, err error) {
		if err != nil {
			done(nil, err)
			return
		}
		res := make([]replResult, len(es))
		for i := range res {
			res[i] = replResult{st: r.byte(), off: r.uvarint(), msg: r.string()}
		}
		if r.err != nil {
			done(nil, r.err)
			return
		}
		done(res, nil)
	})
}

// replTickLoop fails the publishers whose records did not get their copies
// within RequestTimeout, sends again what a follower in sync has not
// confirmed when a topic's acknowledgements stall (a request or its answer
// lost, a batch dropped from a full queue), and forgets idle topics.
func (n *Node) replTickLoop() {
	defer n.liveWG.Done()
	tick := time.NewTicker(min(n.cfg.RequestTimeout/10, 100*time.Millisecond))
	defer tick.Stop()
	resend := min(n.cfg.RequestTimeout/4, time.Second)
	pruned := time.Now()
	for {
		select {
		case <-tick.C:
		case <-n.liveQuit:
			return
		}
		now := time.Now()
		if now.Sub(pruned) > time.Minute {
			pruned = now
			n.pruneVerified()
		}
		var expired []replWait
		n.rmu.Lock()
		for t, rt := range n.repl {
			if rt.acked < rt.head && now.Sub(rt.moved) > resend && now.Sub(rt.resent) > resend {
				rt.resent = now
				n.resendLocked(t, rt, resend)
			}
			keep := rt.waits[:0]
			for _, w := range rt.waits {
				if now.After(w.deadline) {
					expired = append(expired, w)
				} else {
					keep = append(keep, w)
				}
			}
			clear(rt.waits[len(keep):])
			rt.waits = keep
			if rt.acked >= rt.head && len(rt.waits) == 0 && len(rt.fetch) == 0 && now.Sub(rt.idle) > time.Minute && !n.syncing(rt.p) {
				delete(n.repl, t)
				n.marks[t] = replMark{rt.epoch, rt.acked}
			}
		}
		n.rmu.Unlock()
		if len(expired) > 0 {
			failWaits(expired, fmt.Errorf("%w: the copies were not confirmed in %v; the record may still be stored: retry with the same key", ErrUnavailable, n.cfg.RequestTimeout))
		}
	}
}

// resendLocked sends the followers in sync of topic what they have not
// confirmed, from the log, unless a catch-up to them is under way or they
// confirmed something within quiet. A follower being brought up to date
// is left to syncFollower.
func (n *Node) resendLocked(topic string, rt *replTopic, quiet time.Duration) {
	term, _, insync, _ := n.wantOf(rt.p)
	if term != rt.term {
		return
	}
	now := time.Now()
	for _, f := range insync {
		if now.Sub(rt.confAt[f]) < quiet {
			continue // confirming still, only slowly: not lost
		}
		if c := rt.conf[f]; c < rt.head && rt.fetch[f] == nil {
			n.resends.Add(1)
			n.log.Debug("cluster: records not confirmed; sending them again", "topic", topic, "node", f, "from", max(c, rt.acked)+1)
			n.startFetchLocked(topic, rt, f, max(c, rt.acked)+1)
		}
	}
}
