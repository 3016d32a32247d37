package cluster

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// Ephemeral topics in a cluster (a policy with storage: ephemeral). The
// node that owns a topic's partition keeps its log in memory, in the
// broker's ephemeral layer over its local store, and is its only copy:
// publishes are acknowledged without a disk write and without waiting for
// a follower, and followers hold nothing. Other nodes reach the log through
// the owner as for any topic, and get its records live as for any topic.
//
// A log belongs to the term in which its owner served it. Before it serves
// an ephemeral topic in a later term, a node drops what it kept of the
// partition's ephemeral topics: another node may have served them since,
// and a log from before would go back in time. So a take-over, or an owner
// coming back, starts a new epoch for them, and a client resuming with the
// old epoch gets epoch_mismatch, never a gap passed off as none.

// ephemeral is the state of a node that hosts ephemeral topics.
type ephemeral struct {
	st   broker.EphemeralStore
	mu   sync.Mutex
	term []uint64 // per partition: the term its ephemeral logs belong to
}

// HostEphemeral makes this node keep the ephemeral topics of the
// partitions it owns (see broker.EphemeralHost). The broker calls it once,
// before SetCommitHook.
func (n *Node) HostEphemeral(policy func(topic string) *broker.Policy, now func() time.Time) error {
	e := &ephemeral{st: broker.NewEphemeralStore(n.local, policy, now), term: make([]uint64, n.cfg.Partitions)}
	if !n.eph.CompareAndSwap(nil, e) {
		e.st.Close()
		return errors.New("cluster: HostEphemeral called twice")
	}
	e.st.SetCommitHook(n.onLocalCommit)
	return nil
}

// EphemeralUse returns the ephemeral topics this node keeps and the
// memory of their records.
func (n *Node) EphemeralUse() (topics int, bytes int64) {
	if e := n.eph.Load(); e != nil {
		return e.st.Use()
	}
	return 0, 0
}

// isEphemeral reports whether topic is ephemeral under its policy.
func (n *Node) isEphemeral(topic string) bool {
	e := n.eph.Load()
	return e != nil && e.st.Ephemeral(topic)
}

// data returns the store that keeps topic on this node, the owner of its
// partition p in term: the ephemeral layer for an ephemeral topic (eph
// set; see above), the local store for the others.
func (n *Node) data(p int, term uint64, topic string) (st broker.Store, eph bool, err error) {
	e := n.eph.Load()
	if e == nil || !e.st.Ephemeral(topic) {
		return n.local, false, nil
	}
	if err := n.enterTerm(e, p, term); err != nil {
		return nil, true, err
	}
	return e.st, true, nil
}

// enterTerm makes p's ephemeral logs those of term: it drops those of an
// earlier term, and refuses a caller that looked up the owner before a
// later term began here.
func (n *Node) enterTerm(e *ephemeral, p int, term uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch t := e.term[p]; {
	case term < t:
		return fmt.Errorf("%w: partition %d is served in a later term", ErrUnavailable, p)
	case term > t:
		e.st.DropTopics(func(topic string) bool { return n.partition(topic) == p })
		e.term[p] = term
	}
	return nil
}

// refreshEphemeral brings the ephemeral logs of the partitions in served
// (see servedParts) to their current terms, so that a listing shows none
// from an earlier one.
func (n *Node) refreshEphemeral(served []byte) {
	e := n.eph.Load()
	if e == nil {
		return
	}
	for p := range n.cfg.Partitions {
		if !inSet(served, p) {
			continue
		}
		if _, term, local := n.where(p); local {
			_ = n.enterTerm(e, p, term)
		}
	}
}

// dropEphemeral forgets the ephemeral topics of partition p, which
// another node owns in term: they would be kept for nothing, and count
// against the node's bounds. Once per term: lease passes call it every
// time they see the lease.
func (n *Node) dropEphemeral(p int, term uint64) {
	e := n.eph.Load()
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.term[p] < term {
		e.st.DropTopics(func(topic string) bool { return n.partition(topic) == p })
		e.term[p] = term
	}
}

// ownedData is data for a topic of a partition this node serves now;
// errRetry when it does not.
func (n *Node) ownedData(topic string) (broker.Store, bool, error) {
	p := n.partition(topic)
	_, term, local := n.where(p)
	if !local {
		return nil, false, errRetry
	}
	return n.data(p, term, topic)
}

// splitEphemeral moves the ephemeral topics' records of batch to eph.
func (n *Node) splitEphemeral(batch []broker.Committed) (durable, eph []broker.Committed) {
	if n.eph.Load() == nil {
		return batch, nil
	}
	for i := range batch {
		if n.isEphemeral(batch[i].Topic) {
			eph = append(eph, batch[i])
		} else {
			durable = append(durable, batch[i])
		}
	}
	return durable, eph
}

// Idle ephemeral topics. The broker deletes idle topics through a
// Reclaimer; in a cluster only ephemeral ones are (a durable topic's
// copies would need a replicated delete). The owner of a topic deletes it
// once it holds no record, has had none for the idle time, and no node has
// a subscription to it: the broker's pass sees this node's subscriptions,
// and DeleteIdle asks the other nodes, every live one of which must
// answer, or nothing is deleted. A subscription another node sets up in
// the moment between that question and the deletion ends with
// epoch_mismatch at the topic's next record, as after a failover: never a
// gap passed off as none.

// maxInterestQuery bounds the topics one DeleteIdle asks about, and so the
// request's size: a page of the broker's pass (1,024 topics).
const maxInterestQuery = 1024

// IdleTopics lists the idle ephemeral topics of the partitions this node
// serves (see broker.Reclaimer); none without ephemeral policies.
func (n *Node) IdleTopics(after string, max int, before time.Time) ([]broker.TopicInfo, string, error) {
	e := n.eph.Load()
	if e == nil {
		return nil, "", nil
	}
	idle, last, err := e.st.Reclaimer().IdleTopics(after, max, before)
	if err != nil {
		return nil, "", err
	}
	served := n.servedParts()
	out := idle[:0]
	for _, ti := range idle {
		if inSet(served, n.partition(ti.Topic)) {
			out = append(out, ti)
		}
	}
	return out, last, nil
}

// DeleteIdle deletes those of topics (from IdleTopics) that are still
// idle and to which no live node has a subscription, and returns their
// names (see broker.Reclaimer).
func (n *Node) DeleteIdle(topics []broker.TopicInfo, before time.Time) ([]string, error) {
	e := n.eph.Load()
	if e == nil || len(topics) == 0 {
		return nil, nil
	}
	topics = topics[:min(len(topics), maxInterestQuery)]
	names := make([]string, len(topics))
	for i := range topics {
		names[i] = topics[i].Topic
	}
	wanted := map[string]bool{}
	body := putNames(putString([]byte{opInterest}, ""), names)
	err := n.gather(body, func([]byte) error {
		for _, t := range n.interestedIn(names) {
			wanted[t] = true
		}
		return nil
	}, func(r *reader) {
		list, err := readNames(r)
		if err != nil {
			r.err = err
			return
		}
		for _, t := range list {
			wanted[t] = true
		}
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: idle ephemeral topics kept: %w", err)
	}
	idle := make([]broker.TopicInfo, 0, len(topics))
	for _, ti := range topics {
		if !wanted[ti.Topic] {
			idle = append(idle, ti)
		}
	}
	return e.st.Reclaimer().DeleteIdle(idle, before)
}

// interestedIn returns those of names this node has a topic subscription
// to (its broker's clients').
func (n *Node) interestedIn(names []string) []string {
	n.imu.Lock()
	defer n.imu.Unlock()
	var out []string
	for _, t := range names {
		if n.interest[t] != nil {
			out = append(out, t)
		}
	}
	return out
}

// putNames appends a count and the names.
func putNames(b []byte, names []string) []byte {
	b = putUvarint(b, uint64(len(names)))
	for _, s := range names {
		b = putString(b, s)
	}
	return b
}

// readNames reads what putNames wrote, at most maxInterestQuery names.
func readNames(r *reader) ([]string, error) {
	k := r.uvarint()
	if r.err == nil && k > maxInterestQuery {
		return nil, fmt.Errorf("cluster: %d names, more than %d", k, maxInterestQuery)
	}
	names := make([]string, 0, k)
	for i := uint64(0); i < k && r.err == nil; i++ {
		names = append(names, r.string())
	}
	return names, r.err
}
