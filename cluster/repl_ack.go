package cluster

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// replicate takes a committed batch of owned topics (the local commit
// hook) and sends it to the followers.
func (n *Node) replicate(batch []broker.Committed) {
	out := map[string][]replEntry{}
	n.rmu.Lock()
	for i := range batch {
		c := &batch[i]
		if len(c.Records) == 0 {
			continue
		}
		p := n.partition(c.Topic)
		term, want, insync, need := n.wantOf(p)
		first, last := c.Records[0].Offset, c.Records[len(c.Records)-1].Offset
		rt := n.repl[c.Topic]
		if rt == nil || rt.epoch != c.Epoch || rt.term != term {
			// What is known acknowledged of this history: records
			// below first that are not are read back from the log.
			acked := first - 1
			if rt != nil {
				n.failLocked(rt)
				if rt.epoch == c.Epoch {
					acked = min(acked, rt.acked)
				}
			} else if m, ok := n.marks[c.Topic]; ok && m.of(c.Epoch) {
				acked = min(acked, m.acked)
			}
			delete(n.marks, c.Topic)
			now := time.Now()
			rt = &replTopic{p: p, term: term, epoch: c.Epoch, acked: acked, head: acked, held: true,
				conf: map[string]uint64{}, fetch: map[string]*bool{}, moved: now}
			n.repl[c.Topic] = rt
		}
		if first != rt.head+1 {
			rt.recs, rt.held, rt.bytes = nil, false, 0
		}
		rt.head, rt.idle = last, time.Now()
		if rt.held {
			rt.recs = append(rt.recs, c.Records...)
			for j := range c.Records {
				rt.bytes += recBytes(&c.Records[j])
			}
			if len(rt.recs) > maxHeldRecords || rt.bytes > maxHeldBytes {
				rt.recs, rt.held, rt.bytes = nil, false, 0
			}
		}
		for _, f := range want {
			out[f] = append(out[f], replEntry{topic: c.Topic, term: term, epoch: c.Epoch, recs: c.Records})
		}
		if len(insync) == 0 && need == 0 {
			// No follower's answer will move it (a node alone, with
			// automatic replicas): the local copy is all it waits for.
			n.advanceLocked(c.Topic, rt)
		}
	}
	n.rmu.Unlock()
	for f, es := range out {
		select {
		case n.replOut <- replSend{f, es}:
		default:
			n.log.Warn("cluster: replication queue full; the follower will fetch the records", "node", f)
		}
	}
}

// failLocked ends a topic's waiting publishers with ErrUnavailable.
func (n *Node) failLocked(rt *replTopic) {
	ws := rt.waits
	rt.waits = nil
	if len(ws) > 0 {
		go failWaits(ws, fmt.Errorf("%w: the partition's term or the topic's epoch changed before the record was replicated", ErrUnavailable))
	}
}

func failWaits(ws []replWait, err error) {
	for _, w := range ws {
		w.done(broker.Appended{}, err)
	}
}

// dropRepl forgets the replication state of p's topics (a new term).
func (n *Node) dropRepl(p int) {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	for t, rt := range n.repl {
		if rt.p == p {
			n.failLocked(rt)
			delete(n.repl, t)
		}
	}
	for t := range n.marks {
		if n.partition(t) == p {
			delete(n.marks, t)
		}
	}
}

// markBeforeAppend gives topic a mark before this node, its owner,
// appends to it, unless it has replication state or a mark already: what
// the log holds now is served (see "A new owner's lease" above), what is
// appended next only once acknowledged, although the local store shows it
// from its commit on, before the commit hook has made its replication
// state. Every append of an owner passes here first, so a topic without
// either has had nothing appended since the partition was taken.
func (n *Node) markBeforeAppend(topic string) {
	n.rmu.Lock()
	_, marked := n.marks[topic]
	marked = marked || n.repl[topic] != nil
	n.rmu.Unlock()
	if marked {
		return
	}
	ti, _, err := n.local.Topic(topic)
	if err != nil {
		ti = broker.TopicInfo{} // nothing shown until acknowledged
	}
	n.rmu.Lock()
	if _, ok := n.marks[topic]; !ok && n.repl[topic] == nil {
		// Nobody marked it meanwhile, so nothing was appended since
		// the read: the head read is still the head.
		n.marks[topic] = replMark{ti.Epoch, ti.Head}
	}
	n.rmu.Unlock()
}

// dropUnacked runs when another node holds p in term, later than the
// term this node owned it in: each topic this node was replicating is cut
// back to what it had acknowledged. The records past that were never
// acknowledged nor delivered, and the new owner's history may hold others
// at their offsets; a node cut off from NATS, or paused past its lease,
// keeps no such suffix when it comes back. Where a newer owner already
// made this node its follower, the owner's agreement does the same, and
// this node only forgets its own replication state.
func (n *Node) dropUnacked(p int, term uint64) {
	type cut struct {
		topic, epoch string
		acked        uint64
	}
	n.followMu.Lock()
	defer n.followMu.Unlock()
	followed := n.followed(p)
	var cuts []cut
	n.rmu.Lock()
	for t, rt := range n.repl {
		if rt.p != p || rt.term >= term {
			continue
		}
		n.failLocked(rt)
		delete(n.repl, t)
		if rt.head > rt.acked && followed <= rt.term {
			cuts = append(cuts, cut{t, rt.epoch, rt.acked})
		}
	}
	n.rmu.Unlock()
	for _, c := range cuts {
		ti, ok, err := n.local.Topic(c.topic)
		if err != nil || !ok || ti.Epoch != c.epoch || ti.Head <= c.acked {
			continue
		}
		if err := n.local.TruncateAfter(c.topic, c.acked); err != nil {
			n.log.Error("cluster: dropping the unacknowledged records of a lost partition", "topic", c.topic, "err", err)
			continue
		}
		n.log.Info("cluster: partition lost; its unacknowledged records dropped", "topic", c.topic, "partition", p, "after", c.acked, "dropped", ti.Head-c.acked)
	}
}

// unacked tells whether a topic of partitions ps has records committed
// and not yet acknowledged.
func (n *Node) unacked(ps []int) bool {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	for _, rt := range n.repl {
		if rt.acked < rt.head && slices.Contains(ps, rt.p) {
			return true
		}
	}
	return false
}

// replTerms returns, per partition with replication state, the oldest
// term of it: a lease pass compares it with the lease's, to see a
// partition lost to a later owner (dropUnacked).
func (n *Node) replTerms() map[int]uint64 {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	m := map[int]uint64{}
	for _, rt := range n.repl {
		if t, ok := m[rt.p]; !ok || rt.term < t {
			m[rt.p] = rt.term
		}
	}
	return m
}

// awaitRepl answers a publisher once its record has its copies.
func (n *Node) awaitRepl(a broker.Appended, done func(broker.Appended, error)) {
	n.rmu.Lock()
	if n.closed.Load() {
		n.rmu.Unlock()
		done(broker.Appended{}, broker.ErrClosed)
		return
	}
	rt := n.repl[a.Topic]
	if rt == nil {
		if m, ok := n.marks[a.Topic]; ok && m.of(a.Epoch) && a.Offset > m.acked {
			if rt = n.unseenLocked(a); rt == nil {
				n.rmu.Unlock()
				done(broker.Appended{}, fmt.Errorf("%w: the lease of the topic's partition was lost", ErrUnavailable))
				return
			}
		}
	} else if rt.epoch == a.Epoch && a.Offset > rt.head {
		// Committed while the commit hook passed this node's records by
		// (the lease in doubt, then kept): never sent; send it now.
		rt.head, rt.recs, rt.held, rt.bytes = a.Offset, nil, false, 0
		rt.resent = time.Now()
		n.resendLocked(a.Topic, rt, 0)
		n.advanceLocked(a.Topic, rt) // no follower to wait for: acknowledged at once
	}
	if rt == nil || rt.epoch != a.Epoch {
		// Not a record of this term's replication: an old record (a
		// duplicate key) that is as safe as it will get.
		n.rmu.Unlock()
		done(a, nil)
		return
	}
	w := replWait{a: a, done: done, deadline: time.Now().Add(n.cfg.RequestTimeout)}
	if a.Offset <= rt.acked {
		// Delivered, or queued for delivery: answer after it.
		n.queueDelivery(replDelivery{waits: []replWait{w}})
	} else {
		rt.waits = append(rt.waits, w)
	}
	n.rmu.Unlock()
}

// unseenLocked makes the replication state of a record that replicate
// never saw although it is past the topic's mark: committed while the
// commit hook passed this node's records by (its lease in doubt, then
// kept), and now the answer to a retry with the same key. It is sent to
// the followers at once, and answered once they hold it.
func (n *Node) unseenLocked(a broker.Appended) *replTopic {
	p := n.partition(a.Topic)
	term, _, _, _ := n.wantOf(p)
	if term == 0 {
		return nil
	}
	m := n.marks[a.Topic]
	delete(n.marks, a.Topic)
	now := time.Now()
	rt := &replTopic{p: p, term: term, epoch: a.Epoch, acked: m.acked, head: a.Offset,
		conf: map[string]uint64{}, fetch: map[string]*bool{}, moved: now, resent: now, idle: now}
	n.repl[a.Topic] = rt
	n.resendLocked(a.Topic, rt, 0)
	n.advanceLocked(a.Topic, rt) // no follower to wait for: acknowledged at once
	return rt
}

// confirm records that follower node holds topic up to off.
func (n *Node) confirm(topic, epoch string, term uint64, node string, off uint64) {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	if rt := n.repl[topic]; rt != nil && rt.epoch == epoch && rt.term == term {
		rt.setConf(node, off)
		n.advanceLocked(topic, rt)
	}
}

// advanceLocked moves topic's acked offset to what every follower holds
// and queues the delivery of the records that became safe.
func (n *Node) advanceLocked(topic string, rt *replTopic) {
	if n.closed.Load() {
		return
	}
	term, want, insync, need := n.wantOf(rt.p)
	if term != rt.term || len(want) < need || !n.holds(rt.p, term) {
		// Not while the lease may have lapsed: a node paused past it
		// (a zombie) must not deliver or answer what a new owner may
		// have given other records.
		return
	}
	// Every follower in sync must hold the record (the lease names them
	// as holding every acknowledged one), and at least need followers.
	m := safe.Acked(rt.acked, rt.head, want, insync, need, rt.conf)
	if m <= rt.acked {
		return
	}
	d := replDelivery{topic: topic, epoch: rt.epoch, from: rt.acked + 1, to: m}
	if rt.held {
		k := 0
		for k < len(rt.recs) && rt.recs[k].Offset <= m {
			k++
		}
		d.recs = rt.recs[:k:k]
		rt.recs = rt.recs[k:]
		for j := range d.recs {
			rt.bytes -= recBytes(&d.recs[j])
		}
		if len(d.recs) == 0 || d.recs[0].Offset != d.from || d.recs[k-1].Offset != m {
			d.recs = nil
		}
	}
	rt.acked, rt.moved = m, time.Now()
	if m >= rt.head {
		rt.recs, rt.held, rt.bytes = nil, true, 0
	}
	keep := rt.waits[:0]
	for _, w := range rt.waits {
		if w.a.Offset <= m {
			d.waits = append(d.waits, w)
		} else {
			keep = append(keep, w)
		}
	}
	clear(rt.waits[len(keep):])
	rt.waits = keep
	n.queueDelivery(d)
}

// queueDelivery hands d to replDeliverLoop; called with rmu held, it waits
// for room unless the node is closing (then d's publishers are failed).
func (n *Node) queueDelivery(d replDelivery) {
	select {
	case n.replDel <- d:
	case <-n.liveQuit:
		if len(d.waits) > 0 {
			go failWaits(d.waits, broker.ErrClosed)
		}
	}
}

// replDeliverLoop hands acknowledged records to the broker and the other
// nodes, then answers their publishers, in the order they were queued.
func (n *Node) replDeliverLoop() {
	defer n.liveWG.Done()
	for {
		select {
		case d := <-n.replDel:
			n.replDeliver(d)
		case <-n.liveQuit:
			return
		}
	}
}

func (n *Node) replDeliver(d replDelivery) {
	if d.topic != "" && d.to >= d.from {
		recs := d.recs
		if recs == nil {
			recs = n.readRange(d.topic, d.from, d.to)
		}
		if len(recs) > 0 {
			batch := []broker.Committed{{Topic: d.topic, Epoch: d.epoch, Records: recs}}
			n.deliver(batch)
			n.publishLive(batch)
		}
	}
	for _, w := range d.waits {
		w.done(w.a, nil)
	}
}

// readRange reads topic's records from..to from the local log.
func (n *Node) readRange(topic string, from, to uint64) []broker.Record {
	var out []broker.Record
	for from <= to {
		recs, err := n.local.Read(topic, from, 1000, 4<<20)
		if err != nil || len(recs) == 0 {
			break
		}
		for _, r := range recs {
			if r.Offset <= to {
				out = append(out, r)
			}
		}
		from = recs[len(recs)-1].Offset + 1
	}
	return out
}

// failReplWaits ends every waiting publisher when the node closes.
func (n *Node) failReplWaits() {
	var ws []replWait
	n.rmu.Lock()
	for _, rt := range n.repl {
		ws = append(ws, rt.waits...)
		rt.waits = nil
	}
	n.rmu.Unlock()
	for {
		select {
		case d := <-n.replDel:
			ws = append(ws, d.waits...)
			continue
		default:
		}
		break
	}
	failWaits(ws, broker.ErrClosed)
}

// replCap returns where reads of topic on its owner stop: its acknowledged
// offset. The local store shows a record as soon as it is committed, before
// the commit hook has handed it to replicate, so the cap does not depend on
// what replicate has seen: markBeforeAppend marks a topic before its first
// append, and a topic with neither replication state nor a mark has had
// nothing appended since this node took its partition.
func (n *Node) replCap(topic string) (uint64, bool) {
	if !n.cfg.replicated() {
		return 0, false
	}
	n.rmu.Lock()
	defer n.rmu.Unlock()
	if rt := n.repl[topic]; rt != nil {
		return rt.acked, true
	}
	if m, ok := n.marks[topic]; ok {
		return m.acked, true
	}
	return 0, false // nothing appended since the partition was taken
}

func (n *Node) capRecs(topic string, recs []broker.Record) []broker.Record {
	if c, ok := n.replCap(topic); ok {
		for i := range recs {
			if recs[i].Offset > c {
				return recs[:i]
			}
		}
	}
	return recs
}

func (n *Node) capInfo(ti broker.TopicInfo) broker.TopicInfo {
	if c, ok := n.replCap(ti.Topic); ok && ti.Head > c {
		ti.Head = c
		ti.Earliest = min(ti.Earliest, c+1)
	}
	return ti
}

// sendConsumer sends a consumer position to follower f and waits for it.
func (n *Node) sendConsumer(f string, p int, term uint64, co broker.ConsumerOffset) error {
	res, err := n.replCall(f, replEntry{topic: co.Topic, term: term, epoch: co.Epoch, kind: kindConsumer, head: co.Offset, consumer: co.Consumer})
	if err == nil && res.st != rsOK {
		err = fmt.Errorf("cluster: follower %s refused consumer %s of %s: %s", f, co.Consumer, co.Topic, res.msg)
	}
	return err
}

// replicateConsumer answers a consumer's commit, stored here, once the
// followers hold it too: every follower in sync, and as many as an
// acknowledgement needs. Positions only move forward within an epoch, so
// commits racing to a follower cannot undo each other.
func (n *Node) replicateConsumer(p int, term uint64, co broker.ConsumerOffset, done func(broker.ConsumerOffset, error)) {
	t, want, insync, need := n.wantOf(p)
	if t != term || len(want) < need || !n.holds(p, term) {
		done(broker.ConsumerOffset{}, fmt.Errorf("%w: partition %d has not the followers to copy the position to", ErrUnavailable, p))
		return
	}
	if len(want) == 0 {
		done(co, nil)
		return
	}
	var (
		mu       sync.Mutex
		left     = len(want)
		got      int
		missing  = len(insync)
		answered bool
	)
	e := replEntry{topic: co.Topic, term: term, epoch: co.Epoch, kind: kindConsumer, head: co.Offset, consumer: co.Consumer}
	for _, f := range want {
		in := slices.Contains(insync, f)
		n.sendRepl(f, []replEntry{e}, func(res []replResult, err error) {
			ok := err == nil && res[0].st == rsOK
			mu.Lock()
			left--
			if ok {
				got++
				if in {
					missing--
				}
			}
			var fin bool
			var ferr error
			switch {
			case answered:
			case missing == 0 && got >= need:
				fin = true
			case left == 0:
				fin, ferr = true, fmt.Errorf("%w: the consumer position did not reach the followers; it may still be stored: ack again", ErrUnavailable)
			}
			answered = answered || fin
			mu.Unlock()
			if fin {
				if ferr != nil {
					done(broker.ConsumerOffset{}, ferr)
				} else {
					done(co, nil)
				}
			}
		})
	}
}
