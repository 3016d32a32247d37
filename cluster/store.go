package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// AppendAsync appends to topic's log on the owner of its partition: here
// when this node owns it, else forwarded over NATS. While the partition
// has no owner (a failover) it retries for up to RequestTimeout, then
// fails with ErrUnavailable. A forwarded append that got no answer is not
// retried (it may have been stored): it fails with ErrUnavailable.
func (n *Node) AppendAsync(topic string, data []byte, key string, done func(broker.Appended, error)) {
	n.appendTry(topic, data, key, done, time.Now().Add(n.cfg.RequestTimeout), 0)
}

func (n *Node) appendTry(topic string, data []byte, key string, done func(broker.Appended, error), deadline time.Time, attempt int) {
	if n.closed.Load() {
		go done(broker.Appended{}, broker.ErrClosed)
		return
	}
	p := n.partition(topic)
	owner, term, local := n.where(p)
	again := func() { n.appendTry(topic, data, key, done, deadline, attempt+1) }
	fail := func(err error) { done(broker.Appended{}, err) }
	if local {
		n.appendLocal(p, term, topic, data, key, done)
		return
	}
	if owner == "" || owner == n.cfg.Node {
		n.retry(deadline, attempt, again, fail)
		return
	}
	b := make([]byte, 0, 16+len(topic)+len(key)+len(data))
	b = append(b, opAppend)
	b = putString(b, topic)
	b = putString(b, key)
	b = append(b, data...)
	n.send(owner, b, func(r *reader, err error) {
		if err == errRetry {
			n.retry(deadline, attempt, again, fail)
			return
		}
		if err != nil {
			done(broker.Appended{}, err)
			return
		}
		a := broker.Appended{Topic: topic, Epoch: r.string(), Offset: r.uvarint(), Time: r.varint(), Dup: r.bool()}
		if r.err == nil && len(r.b) > 0 {
			a.Created = r.bool() // absent from a node of an earlier release
		}
		if r.err != nil {
			done(broker.Appended{}, r.err)
			return
		}
		done(a, nil)
	})
}

// appendLocal appends to the local store as the owner of p in term. An
// append that becomes durable after the lease was lost is reported as
// ErrUnavailable: its offset belongs to a history the new owner does not
// have.
func (n *Node) appendLocal(p int, term uint64, topic string, data []byte, key string, done func(broker.Appended, error)) {
	st, eph, err := n.data(p, term, topic)
	if err != nil {
		go done(broker.Appended{}, err)
		return
	}
	repl := n.cfg.replicated() && !eph // an ephemeral topic has no copies
	if repl {
		n.markBeforeAppend(topic)
	}
	n.inflight.Add(1)
	st.AppendAsync(topic, data, key, func(a broker.Appended, err error) {
		n.inflight.Add(-1)
		if err == nil && !n.holds(p, term) {
			err = fmt.Errorf("%w: the lease of partition %d was lost during the append", ErrUnavailable, p)
		}
		if err == nil && repl {
			n.awaitRepl(a, done)
			return
		}
		done(a, err)
	})
}

// Append is AppendAsync waiting for done or ctx.
func (n *Node) Append(ctx context.Context, topic string, data []byte, key string) (broker.Appended, error) {
	type result struct {
		a   broker.Appended
		err error
	}
	ch := make(chan result, 1)
	n.AppendAsync(topic, data, key, func(a broker.Appended, err error) { ch <- result{a, err} })
	select {
	case r := <-ch:
		return r.a, r.err
	case <-ctx.Done():
		return broker.Appended{}, ctx.Err()
	}
}

// Ensure creates topic's log on its owner when it does not exist.
func (n *Node) Ensure(ctx context.Context, topic string) (ti broker.TopicInfo, err error) {
	body := putString([]byte{opEnsure}, topic)
	err = n.request(ctx, topic, body, func() error {
		ti, err = n.ensureLocal(ctx, topic)
		return err
	}, func(r *reader) error {
		ti = r.info()
		return r.err
	})
	return ti, err
}

// ensureLocal creates topic on this node, its owner, and an empty one on
// the followers too.
func (n *Node) ensureLocal(ctx context.Context, topic string) (broker.TopicInfo, error) {
	st, eph, err := n.ownedData(topic)
	if err != nil {
		return broker.TopicInfo{}, err
	}
	ti, err := st.Ensure(ctx, topic)
	if err == nil && ti.Head == 0 && n.cfg.replicated() && !eph {
		n.ensureFollowers(ti)
	}
	return ti, err
}

// Read reads topic's log on its owner, one page (a page from another node
// is bounded by the NATS message size too).
func (n *Node) Read(topic string, from uint64, max, maxBytes int) (recs []broker.Record, err error) {
	body := putString([]byte{opRead}, topic)
	body = putUvarint(body, from)
	body = putUvarint(body, uint64(max))
	body = putUvarint(body, uint64(maxBytes))
	err = n.request(context.Background(), topic, body, func() error {
		st, _, err := n.ownedData(topic)
		if err != nil {
			return err
		}
		recs, err = st.Read(topic, from, max, maxBytes)
		recs = n.capRecs(topic, recs)
		return err
	}, func(r *reader) error {
		k := r.uvarint()
		if k > uint64(len(r.b)) {
			return errShort
		}
		recs = make([]broker.Record, 0, min(k, 1024))
		for range k {
			if rec := r.record(); r.err == nil {
				recs = append(recs, rec)
			} else {
				break
			}
		}
		return r.err
	})
	return recs, err
}

// Topic returns topic's metadata from its owner.
func (n *Node) Topic(topic string) (ti broker.TopicInfo, ok bool, err error) {
	body := putString([]byte{opTopic}, topic)
	err = n.request(context.Background(), topic, body, func() error {
		st, _, err := n.ownedData(topic)
		if err != nil {
			return err
		}
		ti, ok, err = st.Topic(topic)
		ti = n.capInfo(ti)
		return err
	}, func(r *reader) error {
		ok = r.bool()
		ti = r.info()
		return r.err
	})
	return ti, ok, err
}

// OffsetAt finds the first offset of topic at or after a time on its
// owner.
func (n *Node) OffsetAt(topic string, ms int64) (off uint64, earliestTime int64, err error) {
	body := putString([]byte{opOffsetAt}, topic)
	body = putVarint(body, ms)
	err = n.request(context.Background(), topic, body, func() error {
		off, earliestTime, err = n.offsetAtLocal(topic, ms)
		return err
	}, func(r *reader) error {
		off = r.uvarint()
		earliestTime = r.varint()
		return r.err
	})
	return off, earliestTime, err
}

// offsetAtLocal is OffsetAt on the owner: records not yet copied as
// configured are not visible (as in Read).
func (n *Node) offsetAtLocal(topic string, ms int64) (uint64, int64, error) {
	st, _, err := n.ownedData(topic)
	if err != nil {
		return 0, 0, err
	}
	off, et, err := st.OffsetAt(topic, ms)
	if c, ok := n.replCap(topic); ok && off > c+1 {
		off = c + 1
	}
	return off, et, err
}

// CommitAsync stores a consumer's offset with the topic's owner.
func (n *Node) CommitAsync(consumer, topic, epoch string, offset uint64, done func(broker.ConsumerOffset, error)) {
	n.commitTry(consumer, topic, epoch, offset, done, time.Now().Add(n.cfg.RequestTimeout), 0)
}

func (n *Node) commitTry(consumer, topic, epoch string, offset uint64, done func(broker.ConsumerOffset, error), deadline time.Time, attempt int) {
	if n.closed.Load() {
		go done(broker.ConsumerOffset{}, broker.ErrClosed)
		return
	}
	p := n.partition(topic)
	owner, term, local := n.where(p)
	again := func() { n.commitTry(consumer, topic, epoch, offset, done, deadline, attempt+1) }
	fail := func(err error) { done(broker.ConsumerOffset{}, err) }
	if local {
		n.commitLocal(p, term, consumer, topic, epoch, offset, done)
		return
	}
	if owner == "" || owner == n.cfg.Node {
		n.retry(deadline, attempt, again, fail)
		return
	}
	b := putString([]byte{opCommit}, topic)
	b = putString(b, consumer)
	b = putString(b, epoch)
	b = putUvarint(b, offset)
	n.send(owner, b, func(r *reader, err error) {
		if err == errRetry {
			n.retry(deadline, attempt, again, fail)
			return
		}
		if err != nil {
			fail(err)
			return
		}
		co := r.consumer()
		if r.err != nil {
			fail(r.err)
			return
		}
		done(co, nil)
	})
}

func (n *Node) commitLocal(p int, term uint64, consumer, topic, epoch string, offset uint64, done func(broker.ConsumerOffset, error)) {
	n.inflight.Add(1)
	n.local.CommitAsync(consumer, topic, epoch, offset, func(co broker.ConsumerOffset, err error) {
		n.inflight.Add(-1)
		if err == nil && !n.holds(p, term) {
			err = fmt.Errorf("%w: the lease of partition %d was lost during the commit", ErrUnavailable, p)
		}
		if err == nil && n.cfg.replicated() {
			n.replicateConsumer(p, term, co, done)
			return
		}
		done(co, err)
	})
}

// Consumer returns a consumer's position from the topic's owner.
func (n *Node) Consumer(consumer, topic string) (co broker.ConsumerOffset, ok bool, err error) {
	body := putString([]byte{opConsumer}, topic)
	body = putString(body, consumer)
	err = n.request(context.Background(), topic, body, func() error {
		co, ok, err = n.local.Consumer(consumer, topic)
		return err
	}, func(r *reader) error {
		ok = r.bool()
		co = r.consumer()
		return r.err
	})
	return co, ok, err
}

// Topics lists topics across the cluster: every live node answers for the
// partitions it serves, and the answers are merged in name order. The list
// is complete or an error: a node that does not answer in time, or a
// partition nobody serves (a take-over under way), fails the listing with
// ErrUnavailable, never a part passed off as the whole.
func (n *Node) Topics(after string, max int) ([]broker.TopicInfo, error) {
	body := putString([]byte{opTopics}, after)
	body = putUvarint(body, uint64(max))
	var all []broker.TopicInfo
	err := n.gather(body, func(served []byte) error {
		list, err := n.ownedTopics(after, max, served)
		all = append(all, list...)
		return err
	}, func(r *reader) {
		k := r.uvarint()
		for i := uint64(0); i < k && r.err == nil; i++ {
			all = append(all, r.info())
		}
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(all, func(a, b broker.TopicInfo) int { return strings.Compare(a.Topic, b.Topic) })
	all = slices.CompactFunc(all, func(a, b broker.TopicInfo) bool { return a.Topic == b.Topic })
	return all[:min(len(all), max)], nil
}

// Consumers lists a consumer's positions across the cluster, complete or
// an error as Topics.
func (n *Node) Consumers(consumer string) ([]broker.ConsumerOffset, error) {
	body := putString([]byte{opConsumers}, "")
	body = putString(body, consumer)
	var all []broker.ConsumerOffset
	err := n.gather(body, func(served []byte) error {
		list, err := n.ownedConsumers(consumer, served)
		all = append(all, list...)
		return err
	}, func(r *reader) {
		k := r.uvarint()
		for i := uint64(0); i < k && r.err == nil; i++ {
			all = append(all, r.consumer())
		}
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(all, func(a, b broker.ConsumerOffset) int { return strings.Compare(a.Topic, b.Topic) })
	return all, nil
}

// gather asks every live node, this one through local, and hands each
// answer to add, one at a time. Each node answers for the partitions it
// serves and, after its list, says which they are (a bit set, see
// servedParts): gather fails with ErrUnavailable unless every live node
// answered and together they served every partition. An answer without the
// set comes from a node of an earlier release (a rolling upgrade): the
// listing is then taken as complete when every live node answered, as
// those releases did.
func (n *Node) gather(body []byte, local func(served []byte) error, add func(r *reader)) error {
	if n.closed.Load() {
		return broker.ErrClosed
	}
	nodes, err := n.liveNodesErr()
	if err != nil {
		return fmt.Errorf("%w: the live nodes could not be read for a listing: %v", ErrUnavailable, err)
	}
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		covered = make([]byte, (n.cfg.Partitions+7)/8)
		unknown bool     // an answer without its partitions
		missing []string // nodes that did not answer
	)
	cover := func(set []byte) {
		for i := range min(len(set), len(covered)) {
			covered[i] |= set[i]
		}
	}
	for _, node := range nodes {
		if node == n.cfg.Node {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), n.cfg.RequestTimeout)
			defer cancel()
			m, err := n.nc.RequestWithContext(ctx, n.rpcSubject(node), body)
			var r *reader
			if err == nil {
				r, err = answer(m)
			}
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				add(r)
				switch {
				case r.err != nil:
					err = r.err
				case len(r.b) == 0:
					unknown = true
				default:
					set := r.bytes()
					if err = r.err; err == nil {
						cover(set)
					}
				}
			}
			if err != nil {
				n.log.Warn("cluster: a node did not answer a listing", "node", node, "err", err)
				missing = append(missing, node)
			}
		}()
	}
	served := n.servedParts()
	mu.Lock()
	err = local(served)
	cover(served)
	mu.Unlock()
	wg.Wait()
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("%w: %s did not answer the listing", ErrUnavailable, strings.Join(missing, ", "))
	}
	if unknown {
		return nil
	}
	var gaps int
	for p := range n.cfg.Partitions {
		if covered[p/8]&(1<<(p%8)) == 0 {
			gaps++
		}
	}
	if gaps > 0 {
		return fmt.Errorf("%w: %d of %d partitions are served by no node (a take-over under way)", ErrUnavailable, gaps, n.cfg.Partitions)
	}
	return nil
}

// servedParts returns the partitions this node serves, as a bit set (bit p
// of byte p/8).
func (n *Node) servedParts() []byte {
	set := make([]byte, (n.cfg.Partitions+7)/8)
	for p := range n.cfg.Partitions {
		if _, _, ok := n.where(p); ok {
			set[p/8] |= 1 << (p % 8)
		}
	}
	return set
}

// inSet reports whether partition p is in set (see servedParts).
func inSet(set []byte, p int) bool { return p/8 < len(set) && set[p/8]&(1<<(p%8)) != 0 }

// ownedTopics lists local topics of the partitions in served.
func (n *Node) ownedTopics(after string, max int, served []byte) ([]broker.TopicInfo, error) {
	var all broker.Store = n.local
	if e := n.eph.Load(); e != nil {
		all = e.st // the ephemeral topics too, of the current terms
		n.refreshEphemeral(served)
	}
	var out []broker.TopicInfo
	for len(out) < max {
		list, err := all.Topics(after, 1000)
		if err != nil {
			return nil, err
		}
		for _, ti := range list {
			if inSet(served, n.partition(ti.Topic)) && len(out) < max {
				out = append(out, ti)
			}
		}
		if len(list) < 1000 {
			break
		}
		after = list[len(list)-1].Topic
	}
	return out, nil
}

func (n *Node) ownedConsumers(consumer string, served []byte) ([]broker.ConsumerOffset, error) {
	list, err := n.local.Consumers(consumer)
	if err != nil {
		return nil, err
	}
	out := list[:0]
	for _, co := range list {
		if inSet(served, n.partition(co.Topic)) {
			out = append(out, co)
		}
	}
	return out, nil
}
