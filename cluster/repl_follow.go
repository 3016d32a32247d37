package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/store"
)

// serveRepl takes records of another owner as a follower. It runs on the
// subscription's goroutine, so requests are handled in arrival order.
func (n *Node) serveRepl(m *nats.Msg) {
	n.followMu.Lock()
	defer n.followMu.Unlock()
	es, err := decodeRepl(m.Data)
	if err != nil {
		respondErr(m, err)
		return
	}
	res := make([]replResult, len(es))
	var wg sync.WaitGroup
	for i := range es {
		p := n.partition(es[i].topic)
		if es[i].topic == "" {
			if es[i].head >= uint64(n.cfg.Partitions) {
				res[i] = replResult{st: rsError, msg: "no such partition"}
				continue
			}
			p = int(es[i].head)
		}
		if !n.admit(p, es[i].term) {
			res[i] = replResult{st: rsStale, msg: fmt.Sprintf("term %d of partition %d is stale here", es[i].term, p)}
			continue
		}
		if es[i].topic == "" {
			continue // rsOK
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = n.follow(&es[i])
		}()
	}
	wg.Wait()
	b := []byte{stOK}
	for _, x := range res {
		b = append(b, x.st)
		b = putUvarint(b, x.off)
		b = putString(b, x.msg)
	}
	_ = m.Respond(b)
}

// admit checks a term of p against the highest this node has seen, and
// records it as the term this node follows.
func (n *Node) admit(p int, term uint64) bool {
	n.mu.Lock()
	fence, ok := safe.Admit(n.fence[p], term, n.parts[p].mine)
	n.fence[p] = fence
	n.mu.Unlock()
	if !ok {
		return false
	}
	n.tmu.Lock()
	defer n.tmu.Unlock()
	if n.terms.Followed[p] != term {
		n.terms.Followed[p] = term
		if err := n.terms.save(n.termsPath); err != nil {
			n.log.Error("cluster: recording the term followed", "partition", p, "err", err)
			return false
		}
	}
	return true
}

// follow applies one entry to the local store and says what this node now
// holds.
func (n *Node) follow(e *replEntry) replResult {
	fail := func(err error) replResult { return replResult{st: rsError, msg: err.Error()} }
	gap := func(off uint64) replResult { return replResult{st: rsGap, off: off} }
	if e.kind == kindConsumer {
		return n.followConsumer(e)
	}
	ti, ok, err := n.local.Topic(e.topic)
	if err != nil {
		return fail(err)
	}
	if ok && ti.Epoch != e.epoch {
		// The owner's history of the topic is another: this copy is of no use.
		if err := n.local.DeleteTopic(e.topic); err != nil {
			return fail(err)
		}
		n.log.Info("cluster: follower copy of another epoch dropped", "topic", e.topic, "epoch", ti.Epoch, "owner_epoch", e.epoch)
		ok = false
	}
	switch e.kind {
	case kindCreate:
		if !ok {
			if err := n.local.AppendAt(e.topic, e.epoch, nil); err != nil {
				return fail(err)
			}
		}
		return replResult{st: rsOK}
	case kindCheck:
		if len(e.recs) != 1 || !ok {
			return gap(1)
		}
		r := &e.recs[0]
		got, err := n.local.Read(e.topic, r.Offset, 1, 1<<30)
		if err != nil {
			return fail(err)
		}
		if len(got) == 0 || got[0].Offset != r.Offset || got[0].Time != r.Time || got[0].Key != r.Key || !bytes.Equal(got[0].Data, r.Data) {
			return gap(r.Offset)
		}
		return replResult{st: rsOK, off: r.Offset}
	case kindProbe, kindAgree:
		switch {
		case !ok && e.head == 0:
			if err := n.local.AppendAt(e.topic, e.epoch, nil); err != nil {
				return fail(err)
			}
		case !ok:
			return gap(1)
		case ti.Head < e.head:
			return gap(ti.Head + 1)
		case ti.Head > e.head && !n.isVerified(e.topic, e.term):
			// Records the owner does not have were never acknowledged.
			// (A copy verified in this term holds only this owner's
			// records: it is ahead of the probe because records sent
			// after the probe was made overtook it, and keeps them.)
			if err := n.local.TruncateAfter(e.topic, e.head); err != nil {
				return fail(err)
			}
		}
		if e.kind == kindAgree {
			n.setVerified(e.topic, e.term)
		}
		return replResult{st: rsOK, off: e.head}
	}
	if len(e.recs) == 0 {
		return fail(errors.New("no records"))
	}
	first, last := e.recs[0].Offset, e.recs[len(e.recs)-1].Offset
	if first == 0 {
		return fail(errors.New("a record at offset 0"))
	}
	for i := 1; i < len(e.recs); i++ {
		if e.recs[i].Offset != e.recs[i-1].Offset+1 {
			return fail(fmt.Errorf("records at offsets %d then %d", e.recs[i-1].Offset, e.recs[i].Offset))
		}
	}
	// A copy that never held a record (none, or the empty one an agreement
	// on nothing created) takes its first record at any offset: it must be
	// the owner's first or earliest, or the copy would start past a hole
	// that a later page below it could never fill.
	empty := !ok || ti.Head == 0
	fresh := empty && (first == 1 || e.base)
	if !fresh && !n.isVerified(e.topic, e.term) {
		// A copy of an earlier term may hold records the owner replaced.
		return replResult{st: rsVerify}
	}
	if empty && first > 1 && !e.base {
		return gap(1)
	}
	err = n.local.AppendAt(e.topic, e.epoch, e.recs)
	switch {
	case errors.Is(err, store.ErrGap) && e.base:
		// The owner's retention removed what this copy misses: start
		// again from the owner's earliest record.
		if err = n.local.DeleteTopic(e.topic); err == nil {
			err = n.local.AppendAt(e.topic, e.epoch, e.recs)
		}
	case errors.Is(err, store.ErrGap):
		ti, _, err := n.local.Topic(e.topic)
		if err != nil {
			return fail(err)
		}
		return gap(ti.Head + 1)
	case errors.Is(err, store.ErrConflict):
		// A suffix of an older term, never acknowledged: the owner's wins.
		if err = n.local.TruncateAfter(e.topic, first-1); err == nil {
			err = n.local.AppendAt(e.topic, e.epoch, e.recs)
		}
	}
	if err != nil {
		return fail(err)
	}
	if fresh {
		n.setVerified(e.topic, e.term)
	}
	return replResult{st: rsOK, off: last}
}

// followConsumer stores a consumer position sent by the owner.
func (n *Node) followConsumer(e *replEntry) replResult {
	ch := make(chan error, 1)
	n.local.CommitAsync(e.consumer, e.topic, e.epoch, e.head, func(_ broker.ConsumerOffset, err error) { ch <- err })
	if err := <-ch; err != nil {
		return replResult{st: rsError, msg: err.Error()}
	}
	return replResult{st: rsOK, off: e.head}
}

// setVerified records that this node's copy of topic agrees with the
// owner's of term, so that it takes its records.
func (n *Node) setVerified(topic string, term uint64) {
	n.vmu.Lock()
	n.verified[topic] = term
	n.vmu.Unlock()
}

// pruneVerified forgets the copies verified in a term older than the
// latest one seen for their partition: no owner sends records of it.
func (n *Node) pruneVerified() {
	n.mu.Lock()
	fence := slices.Clone(n.fence)
	n.mu.Unlock()
	n.vmu.Lock()
	defer n.vmu.Unlock()
	for t, term := range n.verified {
		if term < fence[n.partition(t)] {
			delete(n.verified, t)
		}
	}
}

func (n *Node) isVerified(topic string, term uint64) bool {
	n.vmu.Lock()
	defer n.vmu.Unlock()
	return n.verified[topic] == term
}
