package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/brokerd/brokerd/broker"
)

// Requests between nodes go to brokerd.<cluster>.rpc.<node>. A request is
// an op byte and the op's fields (see codec.go); an answer is a status
// byte, a message when the status is not ok, and the op's results.
const (
	opAppend byte = iota + 1
	opEnsure
	opRead
	opTopic
	opTopics
	opCommit
	opConsumer
	opConsumers
	opAgree    // the requester's copy of topic is to be checked against the owner's (checkCopies)
	opOffsetAt // the first offset of topic at or after a time (Store.OffsetAt)
	opInterest // which of the topics listed this node has subscriptions to (DeleteIdle)
)

const (
	stOK byte = iota
	stNotOwner
	stNotFound
	stTooLarge
	stClosed
	stError
	stTooManyTopics // the owner's store holds as many topics as it may (added last: the values are on the wire)
)

// call is a request in flight awaiting its answer on the node's inbox.
type call struct {
	node  string
	sent  time.Time
	done  func(r *reader, err error)
	timer *time.Timer
}

// send publishes a request to node and calls done once with its answer,
// errRetry, or an error, never from the caller's goroutine. Requests sent
// to one node from one goroutine arrive in order.
func (n *Node) send(node string, body []byte, done func(r *reader, err error)) {
	n.sendTo(n.rpcSubject(node), node, body, done)
}

// sendTo is send to subject, a subject of node.
func (n *Node) sendTo(subject, node string, body []byte, done func(r *reader, err error)) {
	n.pmu.Lock()
	if n.closed.Load() {
		n.pmu.Unlock()
		go done(nil, broker.ErrClosed)
		return
	}
	n.nextID++
	id := n.nextID
	c := &call{node: node, sent: time.Now(), done: done}
	c.timer = time.AfterFunc(n.cfg.RequestTimeout, func() {
		if c := n.popCall(id); c != nil {
			c.done(nil, fmt.Errorf("%w: node %s did not answer in %v", ErrUnavailable, node, n.cfg.RequestTimeout))
		}
	})
	n.pending[id] = c
	n.pmu.Unlock()
	err := n.nc.PublishMsg(&nats.Msg{Subject: subject, Reply: n.inbox + "." + strconv.FormatUint(id, 10), Data: body})
	if err != nil {
		if c := n.popCall(id); c != nil {
			c.timer.Stop()
			go c.done(nil, fmt.Errorf("%w: %v", ErrUnavailable, err))
		}
	}
}

// failCallsTo ends the calls in flight to nodes that are not live (their
// heartbeat expired: dead, or cut off) with ErrUnavailable rather than at
// their timeout, so that a client retries (with the same key) on the
// partition's next owner as soon as there is one. Only calls older than
// half a lease TTL: a draining node leaves the live list first and still
// answers what it has taken.
func (n *Node) failCallsTo(live []string) {
	var gone []*call
	old := time.Now().Add(-n.cfg.LeaseTTL / 2)
	n.pmu.Lock()
	for id, c := range n.pending {
		if c.sent.Before(old) && !slices.Contains(live, c.node) {
			delete(n.pending, id)
			gone = append(gone, c)
		}
	}
	n.pmu.Unlock()
	for _, c := range gone {
		c.timer.Stop()
		go c.done(nil, fmt.Errorf("%w: node %s left the cluster (its heartbeat expired) before it answered", ErrUnavailable, c.node))
	}
}

func (n *Node) popCall(id uint64) *call {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	c := n.pending[id]
	delete(n.pending, id)
	return c
}

func (n *Node) onReply(m *nats.Msg) {
	i := strings.LastIndexByte(m.Subject, '.')
	id, err := strconv.ParseUint(m.Subject[i+1:], 10, 64)
	if err != nil {
		return
	}
	c := n.popCall(id)
	if c == nil {
		return // timed out already
	}
	c.timer.Stop()
	r, err := answer(m)
	c.done(r, err)
}

// answer decodes the status of an answer.
func answer(m *nats.Msg) (*reader, error) {
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		return nil, errRetry // no responders: the node is gone
	}
	r := &reader{b: m.Data}
	st := r.byte()
	if st == stOK {
		return r, r.err
	}
	msg := r.string()
	switch st {
	case stNotOwner:
		return nil, errRetry
	case stNotFound:
		return nil, fmt.Errorf("%w: %s", broker.ErrTopicNotFound, msg)
	case stTooLarge:
		return nil, fmt.Errorf("%w: %s", broker.ErrTooLarge, msg)
	case stClosed:
		return nil, fmt.Errorf("%w: %s", ErrUnavailable, msg)
	case stTooManyTopics:
		return nil, fmt.Errorf("%w: %s", broker.ErrTooManyTopics, msg)
	default:
		return nil, fmt.Errorf("cluster: remote: %s", msg)
	}
}

// request sends body to the owner of topic's partition and waits for the
// answer, retrying while the partition has no owner or the node asked is
// not its owner, for up to RequestTimeout. local serves the request when
// this node is the owner.
func (n *Node) request(ctx context.Context, topic string, body []byte, local func() error, handle func(r *reader) error) error {
	deadline := time.Now().Add(n.cfg.RequestTimeout)
	p := n.partition(topic)
	for attempt := 0; ; attempt++ {
		if n.closed.Load() {
			return broker.ErrClosed
		}
		owner, _, isLocal := n.where(p)
		if isLocal {
			if err := local(); !errors.Is(err, errRetry) {
				return err
			}
		} else if owner != "" && owner != n.cfg.Node {
			rctx, cancel := context.WithDeadline(ctx, deadline)
			m, err := n.nc.RequestMsgWithContext(rctx, &nats.Msg{Subject: n.rpcSubject(owner), Data: body})
			cancel()
			if errors.Is(err, nats.ErrNoResponders) {
				err = errRetry
			} else if err == nil {
				var r *reader
				if r, err = answer(m); err == nil {
					return handle(r)
				}
			}
			if !errors.Is(err, errRetry) {
				if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
					err = fmt.Errorf("%w: node %s did not answer", ErrUnavailable, owner)
				}
				return err
			}
		}
		n.poke()
		if time.Now().Add(backoff(attempt)).After(deadline) {
			return fmt.Errorf("%w (partition %d)", ErrUnavailable, p)
		}
		select {
		case <-time.After(backoff(attempt)):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// retry runs again after a backoff, or fail once the deadline has passed.
func (n *Node) retry(deadline time.Time, attempt int, again func(), fail func(error)) {
	n.poke()
	if n.closed.Load() {
		go fail(broker.ErrClosed)
		return
	}
	if time.Now().Add(backoff(attempt)).After(deadline) {
		go fail(ErrUnavailable)
		return
	}
	time.AfterFunc(backoff(attempt), again)
}

// serve answers a request of another node.
func (n *Node) serve(m *nats.Msg) {
	r := &reader{b: m.Data}
	op := r.byte()
	topic := r.string()
	switch op {
	case opAppend, opCommit:
		// Queued to the store in arrival order; answered from its done.
		n.serveWrite(m, op, topic, r)
	default:
		n.sem <- struct{}{}
		go func() {
			defer func() { <-n.sem }()
			n.serveRead(m, op, topic, r)
		}()
	}
}

func respondErr(m *nats.Msg, err error) {
	st := stError
	switch {
	case errors.Is(err, errRetry):
		st = stNotOwner
	case errors.Is(err, broker.ErrTopicNotFound):
		st = stNotFound
	case errors.Is(err, broker.ErrTooLarge):
		st = stTooLarge
	case errors.Is(err, broker.ErrTooManyTopics):
		st = stTooManyTopics
	case errors.Is(err, broker.ErrClosed), errors.Is(err, broker.ErrUnavailable):
		st = stClosed // the requester retries later: unavailable
	}
	_ = m.Respond(putString([]byte{st}, err.Error()))
}

func (n *Node) serveWrite(m *nats.Msg, op byte, topic string, r *reader) {
	p := n.partition(topic)
	_, term, local := n.where(p)
	switch op {
	case opAppend:
		key := r.string()
		data := r.rest()
		if r.err != nil {
			respondErr(m, r.err)
			return
		}
		if !local {
			respondErr(m, errRetry)
			return
		}
		n.appendLocal(p, term, topic, data, key, func(a broker.Appended, err error) {
			if err != nil {
				respondErr(m, err)
				return
			}
			b := []byte{stOK}
			b = putString(b, a.Epoch)
			b = putUvarint(b, a.Offset)
			b = putVarint(b, a.Time)
			b = putBool(b, a.Dup)
			b = putBool(b, a.Created) // added last: an earlier release ends before it
			_ = m.Respond(b)
		})
	case opCommit:
		consumer, epoch, off := r.string(), r.string(), r.uvarint()
		if r.err != nil {
			respondErr(m, r.err)
			return
		}
		if !local {
			respondErr(m, errRetry)
			return
		}
		n.commitLocal(p, term, consumer, topic, epoch, off, func(co broker.ConsumerOffset, err error) {
			if err != nil {
				respondErr(m, err)
				return
			}
			_ = m.Respond(putConsumer([]byte{stOK}, &co))
		})
	}
}

func (n *Node) serveRead(m *nats.Msg, op byte, topic string, r *reader) {
	var owned bool
	if op != opTopics && op != opConsumers && op != opInterest {
		_, _, owned = n.where(n.partition(topic))
		if !owned {
			respondErr(m, errRetry)
			return
		}
	}
	b := []byte{stOK}
	var err error
	switch op {
	case opAgree:
		// Another node holds a copy of topic from an earlier term: make
		// it drop what the owner's log does not hold (agree).
		node := r.string()
		if err = r.err; err != nil {
			break
		}
		ti, ok, e := n.local.Topic(topic)
		_, term, _ := n.where(n.partition(topic))
		switch {
		case e != nil:
			err = e
		case !ok:
			err = broker.ErrTopicNotFound
		case node == n.cfg.Node || term == 0:
			err = errRetry
		default:
			_, err = n.agree(topic, node, term, ti)
		}
	case opEnsure:
		var ti broker.TopicInfo
		if ti, err = n.ensureLocal(context.Background(), topic); err == nil {
			b = putInfo(b, &ti)
		}
	case opTopic:
		var st broker.Store
		if st, _, err = n.ownedData(topic); err != nil {
			break
		}
		ti, ok, e := st.Topic(topic)
		ti = n.capInfo(ti)
		err = e
		b = putBool(b, ok)
		b = putInfo(b, &ti)
	case opRead:
		from, max, maxBytes := r.uvarint(), int(r.uvarint()), int(r.uvarint())
		if err = r.err; err != nil {
			break
		}
		var recs []broker.Record
		var st broker.Store
		if st, _, err = n.ownedData(topic); err != nil {
			break
		}
		if recs, err = st.Read(topic, from, max, min(maxBytes, n.pageBytes())); err == nil {
			recs = n.capRecs(topic, recs)
			b = putUvarint(b, uint64(len(recs)))
			for i := range recs {
				b = putRecord(b, &recs[i])
			}
		}
	case opTopics:
		max := int(r.uvarint())
		served := n.servedParts()
		var list []broker.TopicInfo
		if list, err = n.ownedTopics(topic, max, served); err == nil {
			b = putUvarint(b, uint64(len(list)))
			for i := range list {
				b = putInfo(b, &list[i])
			}
			b = putString(b, string(served))
		}
	case opOffsetAt:
		ms := r.varint()
		if err = r.err; err != nil {
			break
		}
		var off uint64
		var et int64
		if off, et, err = n.offsetAtLocal(topic, ms); err == nil {
			b = putUvarint(b, off)
			b = putVarint(b, et)
		}
	case opConsumer:
		consumer := r.string()
		co, ok, e := n.local.Consumer(consumer, topic)
		err = e
		b = putBool(b, ok)
		b = putConsumer(b, &co)
	case opInterest:
		served := n.servedParts()
		var names []string
		if names, err = readNames(r); err == nil {
			b = putNames(b, n.interestedIn(names))
			b = putString(b, string(served))
		}
	case opConsumers:
		served := n.servedParts()
		var list []broker.ConsumerOffset
		if list, err = n.ownedConsumers(r.string(), served); err == nil {
			b = putUvarint(b, uint64(len(list)))
			for i := range list {
				b = putConsumer(b, &list[i])
			}
			b = putString(b, string(served))
		}
	default:
		err = fmt.Errorf("unknown op %d", op)
	}
	if err != nil {
		respondErr(m, err)
		return
	}
	if err := m.Respond(b); err != nil {
		respondErr(m, err)
	}
}

// pageBytes bounds the data of one page of records sent between nodes, so
// that the answer fits in a NATS message.
func (n *Node) pageBytes() int {
	return max(int(n.nc.MaxPayload())-64<<10, 64<<10)
}
