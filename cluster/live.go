package cluster

import (
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster/core"
	"github.com/brokerd/brokerd/subproto"
)

// Live records travel on brokerd.<cluster>.live.<topic>, one NATS message
// per record: the origin node, the epoch, the offset, the time, then the
// data. Topic patterns are NATS subject patterns already, so a pattern
// subscription maps onto a NATS wildcard subscription as it is.

// interest is one NATS subscription shared by the broker's subscriptions
// to a topic or pattern. Guarded by Node.imu.
type interest struct {
	sub  *nats.Subscription
	refs int
}

// liveMark is the last live record of a topic handed to the hook, so that
// a record that arrives through two subscriptions (a topic and a pattern
// covering it) is delivered once.
type liveMark struct {
	epoch string
	off   uint64
	at    time.Time
}

func (n *Node) liveSubject(topicOrPattern string) string { return n.prefix + "live." + topicOrPattern }

// Interest subscribes on NATS to the live records of topicOrPattern that
// other nodes commit (first call), or drops the subscription (last call).
// A call with on returns once the subscription is in place on the NATS
// server this node is connected to.
func (n *Node) Interest(topicOrPattern string, on bool) error {
	if n.closed.Load() {
		return broker.ErrClosed
	}
	n.imu.Lock()
	in := n.interest[topicOrPattern]
	if !on {
		if in != nil {
			if in.refs--; in.refs == 0 {
				delete(n.interest, topicOrPattern)
				_ = in.sub.Unsubscribe()
			}
		}
		n.imu.Unlock()
		return nil
	}
	if in == nil {
		// Every interest feeds one channel read by one goroutine: the
		// records then reach the hook in the order NATS read them, so a
		// record arriving through a topic and a pattern subscription
		// comes twice in a row and the second copy is recognised.
		sub, err := n.nc.ChanSubscribe(n.liveSubject(topicOrPattern), n.liveCh)
		if err != nil {
			n.imu.Unlock()
			return fmt.Errorf("cluster: subscribing to %s: %w", topicOrPattern, err)
		}
		in = &interest{sub: sub}
		n.interest[topicOrPattern] = in
	}
	in.refs++
	n.imu.Unlock()
	if err := n.nc.FlushTimeout(n.cfg.RequestTimeout); err != nil {
		// Keep the count paired: the broker calls Interest(x, false) only
		// for a successful Interest(x, true).
		_ = n.Interest(topicOrPattern, false)
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// liveLoop hands the records of every interest to onLive, in the order
// NATS delivered them.
func (n *Node) liveLoop() {
	defer n.liveWG.Done()
	for {
		select {
		case m := <-n.liveCh:
			n.onLive(m)
		case <-n.liveQuit:
			return
		}
	}
}

// onLive hands a record committed on another node to the broker's hook.
// It runs on liveLoop only; the records of one topic come from its one
// owner, in offset order.
func (n *Node) onLive(m *nats.Msg) {
	topic, ok := strings.CutPrefix(m.Subject, n.prefix+"live.")
	if !ok {
		return
	}
	r := &reader{b: m.Data}
	origin := r.string()
	epoch := r.string()
	rec := broker.Record{Offset: r.uvarint(), Time: r.varint()}
	rec.Data = r.rest()
	if r.err != nil || origin == n.cfg.Node {
		return
	}
	if _, _, local := n.where(n.partition(topic)); local {
		return // a former owner's late record: this node's log is the topic's now
	}
	n.deliverLive(topic, epoch, []broker.Record{rec})
}

// deliverLive hands records of another owner to the broker's hook, past
// the topic's mark only, and moves the mark.
func (n *Node) deliverLive(topic, epoch string, recs []broker.Record) {
	fp := n.hook.Load()
	if fp == nil {
		return
	}
	n.hookMu.Lock()
	defer n.hookMu.Unlock()
	if mk, ok := n.lastLive[topic]; ok && mk.epoch == epoch {
		i := 0
		for i < len(recs) && recs[i].Offset <= mk.off {
			i++
		}
		recs = recs[i:]
	}
	if len(recs) == 0 {
		return
	}
	n.lastLive[topic] = liveMark{epoch: epoch, off: recs[len(recs)-1].Offset, at: time.Now()}
	(*fp)([]broker.Committed{{Topic: topic, Epoch: epoch, Records: recs}})
	// Sweep old marks now and then, not on every record: a sweep walks
	// the whole map.
	if len(n.lastLive) > 4096 && time.Since(n.liveSwept) > 10*time.Second {
		n.forgetLiveLocked()
		n.liveSwept = time.Now()
	}
}

// repairLive runs after a reconnect to NATS: records other owners
// committed while this node was cut off never arrived. For every topic of
// interest it reads what the owner holds past the last record delivered
// and hands it to the hook, so live subscriptions of a topic that went
// quiet since do not wait for its next record. Topics of a pattern of
// interest are repaired the same way when this node delivered one of
// their records recently (it holds their last offset); others announce
// themselves with their next record, whose offset tells a pattern
// subscription to read the log.
func (n *Node) repairLive() {
	n.imu.Lock()
	var topics, patterns []string
	for x := range n.interest {
		if strings.ContainsAny(x, "*>") {
			patterns = append(patterns, x)
		} else {
			topics = append(topics, x)
		}
	}
	n.imu.Unlock()
	if len(patterns) > 0 {
		exact := make(map[string]bool, len(topics))
		for _, t := range topics {
			exact[t] = true
		}
		n.hookMu.Lock()
		for t := range n.lastLive {
			if exact[t] {
				continue
			}
			for _, pat := range patterns {
				if subproto.Match(pat, t) {
					topics = append(topics, t)
					break
				}
			}
		}
		n.hookMu.Unlock()
	}
	for _, topic := range topics {
		if n.closed.Load() {
			return
		}
		if _, _, local := n.where(n.partition(topic)); local {
			continue
		}
		n.hookMu.Lock()
		mk, ok := n.lastLive[topic]
		n.hookMu.Unlock()
		if !ok {
			continue
		}
		info, exists, err := n.Topic(topic)
		if err != nil || !exists || info.Epoch != mk.epoch {
			continue // a new epoch announces itself with its first record
		}
		for from := mk.off + 1; from <= info.Head; {
			recs, err := n.Read(topic, from, 1000, 1<<20)
			if err != nil || len(recs) == 0 {
				break
			}
			n.deliverLive(topic, info.Epoch, recs)
			from = recs[len(recs)-1].Offset + 1
		}
	}
}

// forgetLiveLocked drops the marks not updated for a minute.
func (n *Node) forgetLiveLocked() {
	cut := time.Now().Add(-time.Minute)
	for t, mk := range n.lastLive {
		if mk.at.Before(cut) {
			delete(n.lastLive, t)
		}
	}
}

// onLocalCommit is the local store's commit hook: the records of the
// partitions this node owns go to the broker and, on NATS, to the other
// nodes (with replication, once they have their copies: see repl.go).
// Records committed after their partition's lease was lost are neither:
// they were not acknowledged and belong to no one's history. Records a
// follower stores for other owners are not this node's to announce.
func (n *Node) onLocalCommit(batch []broker.Committed) {
	keep := batch[:0:0]
	for i := range batch {
		if n.ownsNow(batch[i].Topic) {
			keep = append(keep, batch[i])
		}
	}
	if len(keep) == 0 {
		return
	}
	if n.cfg.replicated() {
		durable, eph := n.splitEphemeral(keep)
		if len(eph) > 0 { // no copies to wait for
			n.deliver(eph)
			n.publishLive(eph)
		}
		if len(durable) > 0 {
			n.replicate(durable)
		}
		return
	}
	n.deliver(keep)
	n.publishLive(keep)
}

// publishLive queues committed records of this node for the other nodes.
func (n *Node) publishLive(keep []broker.Committed) {
	// The hook must not block, and a NATS write can (a stalled socket):
	// the records go to a bounded queue that liveOutLoop publishes. When
	// it is full they are dropped for the other nodes, whose exact
	// subscriptions see the gap at the next record and read the log.
	for i := range keep {
		size := committedBytes(&keep[i])
		if n.liveOutBytes.Add(size) > maxLiveOutBytes {
			n.liveOutBytes.Add(-size)
			n.log.Warn("cluster: live queue full, records not sent to other nodes", "topic", keep[i].Topic, "records", len(keep[i].Records))
			continue
		}
		select {
		case n.liveOut <- keep[i]:
		default:
			n.liveOutBytes.Add(-size)
			n.log.Warn("cluster: live queue full, records not sent to other nodes", "topic", keep[i].Topic, "records", len(keep[i].Records))
		}
	}
}

// maxLiveOutBytes bounds the record data waiting to be published to the
// other nodes.
const maxLiveOutBytes = 64 << 20

func committedBytes(c *broker.Committed) int64 {
	var n int64
	for i := range c.Records {
		n += int64(len(c.Records[i].Data)) + 32
	}
	return n
}

// liveOutLoop publishes this node's committed records for the other nodes.
func (n *Node) liveOutLoop() {
	defer n.liveWG.Done()
	var b []byte
	for {
		var c broker.Committed
		select {
		case c = <-n.liveOut:
		case <-n.liveQuit:
			return
		}
		n.liveOutBytes.Add(-committedBytes(&c))
		subject := n.liveSubject(c.Topic)
		for j := range c.Records {
			rec := &c.Records[j]
			b = make([]byte, 0, 32+len(n.cfg.Node)+len(c.Epoch)+len(rec.Data))
			b = putString(b, n.cfg.Node)
			b = putString(b, c.Epoch)
			b = putUvarint(b, rec.Offset)
			b = putVarint(b, rec.Time)
			b = append(b, rec.Data...)
			if err := n.nc.Publish(subject, b); err != nil {
				n.log.Warn("cluster: publishing a live record", "topic", c.Topic, "offset", rec.Offset, "err", err)
			}
		}
	}
}

// ownsNow reports whether this node holds the lease of topic's partition
// and may still act on it, by the same rule appendLocal acknowledges with.
func (n *Node) ownsNow(topic string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := &n.parts[n.partition(topic)]
	return st.mine && core.Holds(ct(st.sent), ct(time.Now()), core.Duration(n.cfg.LeaseTTL))
}
