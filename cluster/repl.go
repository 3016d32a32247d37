package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster/core"
	"github.com/brokerd/brokerd/store"
)

// Replication, with Config.Replicas = R ≥ 2, or ReplicasAuto (R = 2 while
// another node is alive).
//
// Followers. The followers of a partition are the R-1 live nodes after
// the owner in the sorted list of live nodes rotated by the partition
// number (followersFor), recomputed at every lease pass, plus part.extra,
// a node the partition is being handed to for balance. A new follower is
// sent every record at once and brought up to date in the background
// (syncFollower: every topic, then every consumer position). A copy holds
// a contiguous run of the owner's log: a record past what it holds is
// answered "gap", and a copy that holds nothing yet starts only at the
// owner's first (or earliest retained) record, so catch-up streams the
// log from there in pages while live records wait for it. It is in
// sync once it holds every record acknowledged meanwhile, decided under
// rmu so that no acknowledgement slips past. Make before break: a
// follower no longer wanted stays until every new one is in sync.
//
// Acknowledgement. A topic's acknowledged offset (acked) is the highest
// offset that every follower in sync holds and at least R-1 followers
// hold: so a dead follower holds publishes up (they fail with
// ErrUnavailable) until its heartbeat expires and the next live node
// replaces it, and a new follower catching up holds up only the topics it
// is needed for. With ReplicasAuto only followers in sync count (wantOf):
// a new follower is sent the history up to the head it had when its copy
// began, then counts (part.counted) while it catches up with what came
// meanwhile, and is named once it holds every acknowledged record.
//
// Owner path. The local store's commit hook hands each batch of the
// partitions this node owns to replicate: the records go, one request per
// follower per batch (split to fit a NATS message), to
// brokerd.<cluster>.repl.<follower>, with the topic's epoch and the
// partition's term. A follower answers per topic with the offset it now
// holds durably, "gap at N" (the owner then sends from N, read from its
// local log in pages: catchUp), or "verify": its copy is not known to
// agree with this term's owner. When a topic's acknowledgements stall (a
// request or its answer lost, a batch dropped from a full queue), its
// followers in sync are sent what they have not confirmed again, from the
// log (resendLocked).
//
// Agreement. Logs of one epoch can differ only past some offset: records
// an owner committed and never had acknowledged, which a later owner
// replaced. Before a follower takes records of a term into a copy it
// already holds, the owner compares the copy's last record with its own
// and, when they differ, finds by binary search where the logs part; the
// follower drops what follows (agree). A copy verified in a term holds
// only that term's owner's records and is never cut by one of its probes
// (records sent after a probe can overtake it).
//
// Ordering. The records of a batch are on the owner's disk before they are
// sent, but they are neither handed to the broker's hook, nor published
// live to the other nodes, nor answered ok, before they are acknowledged:
// a subscriber never sees a record that a failover could lose. Deliveries
// (records, then the publishers' answers, as the store's contract wants)
// go through one queue read by replDeliverLoop, in the order the topics'
// acked offsets move, so each topic's records reach the hook in offset
// order. Read and Topic on the owner do not show records above acked
// either, so that a replay cannot get ahead of the live stream: from the
// commit on, not from the commit hook on (replCap, markBeforeAppend).
//
// A publish not acknowledged within RequestTimeout fails with
// ErrUnavailable, but its record stays in the owner's log and is
// replicated and delivered later: a publisher that retries with the same
// key gets the first offset back (dup).
//
// Failover. The lease names the followers in sync (part.listed): a
// follower is named only once in sync, and removed from the lease before
// acknowledgements stop waiting for it. A node named in a stale (or
// handed back) lease that last followed that very term takes it over
// keeping its data and epochs; the others leave it to such a node while
// one is alive (takeCase.decide). Fencing: a follower refuses records of
// a term lower than the highest it has seen (from the lease or from
// records), and a node refuses records of a partition it holds; since the
// new owner was one of the old owner's followers, an old owner can never
// have a record acknowledged again.
//
// Lost partitions. An owner that sees a later owner's term in the lease
// (it was cut off from NATS, or paused past its lease) cuts each topic it
// was replicating back to what it had acknowledged (dropUnacked): the
// rest was never answered ok nor delivered. A node whose copies of a
// partition are of an earlier term than the lease's, and which the lease
// does not name, asks the owner to check them (checkCopies, opAgree): the
// owner runs the agreement with it, so a node killed while it owned a
// partition drops the records it stored and never had acknowledged even
// when it does not follow the partition again.
//
// A new owner's lease names no follower until one is in sync with it
// (syncFollower sends a follower everything the owner's log holds, its
// records beyond what the old owner acknowledged included). Records past
// the old owner's acknowledged offset are served at once, and that is
// safe: if the new owner dies before naming a follower, nobody can keep
// the history and the partition starts a new epoch (visible to clients as
// epoch_mismatch, never a changed record at a seen offset). With R ≥ 3
// that makes a second failure inside that short window cost the history
// although another copy holds every acknowledged record.
//
// Not done: catch-up reads pages of at most 1000 records; followers apply
// one request at a time.

// Per-topic answers of a follower.
const (
	rsOK    byte = iota // off: the offset the follower holds durably up to
	rsGap               // off: the first offset the follower misses
	rsStale             // the term is older than one the follower has seen
	rsError
	rsVerify // the follower's copy is not known to agree with the owner's in this term: agree first
)

// Flags of a replicated run of records.
const (
	rfBase     byte = 1 << iota // the run starts at the owner's earliest retained offset
	rfProbe                     // no records: the owner's head, to compare with
	rfAgree                     // with rfProbe: head is where the copies agree; the follower drops what follows and accepts records
	rfCheck                     // one record: does the follower hold the very same at its offset?
	rfConsumer                  // no records: consumer's position in topic is head
	rfCreate                    // no records: create the topic, empty, in epoch where the follower has no copy of that epoch; nothing else
)

// replEntry is one topic's run of records in a replication request. An
// entry without topic is a probe of the partition head.
type replEntry struct {
	topic string
	term  uint64
	epoch string
	flags byte
	head  uint64 // rfProbe: the owner's head; rfConsumer: the offset
	recs  []broker.Record

	consumer string // rfConsumer
}

type replResult struct {
	st  byte
	off uint64
	msg string
}

type replSend struct {
	node    string
	entries []replEntry
}

// replWait is a publisher's answer waiting for its record's copies.
type replWait struct {
	a        broker.Appended
	done     func(broker.Appended, error)
	deadline time.Time
}

// replDelivery is a topic's records acknowledged from..to (recs, or nil
// to read them from the log) and the answers to give after them.
type replDelivery struct {
	topic, epoch string
	from, to     uint64
	recs         []broker.Record
	waits        []replWait
}

// replTopic is the replication state of a topic this node owns. p, term
// and epoch do not change; the rest is guarded by Node.rmu.
type replTopic struct {
	p      int
	term   uint64
	epoch  string
	acked  uint64               // every follower holds the records up to here; delivered
	head   uint64               // the last offset committed locally
	recs   []broker.Record      // when held: the records acked+1..head
	held   bool                 // recs holds every record above acked
	conf   map[string]uint64    // follower → offset it confirmed
	confAt map[string]time.Time // follower → when its confirmed offset last moved
	waits  []replWait
	fetch  map[string]*bool // follower → catch-up running; true: a gap was reported meanwhile
	idle   time.Time        // when the last record was committed
	moved  time.Time        // when acked last moved (or the state was made)
	resent time.Time        // when the tick last sent unconfirmed records again
	bytes  int              // the size of recs
}

// replMark is the acknowledged offset of an owned topic without
// replication state: forgotten while idle, or not written to since the
// partition was taken. Reads of the owner stop there too.
type replMark struct {
	epoch string // "" when the topic had no log yet
	acked uint64
}

// of tells whether the mark is of history epoch.
func (m replMark) of(epoch string) bool { return m.epoch == epoch || m.epoch == "" }

// setConf records that follower f holds the records up to off.
func (rt *replTopic) setConf(f string, off uint64) {
	if off > rt.conf[f] {
		rt.conf[f] = off
		if rt.confAt == nil {
			rt.confAt = map[string]time.Time{}
		}
		rt.confAt[f] = time.Now()
	}
}

// maxHeldRecords and maxHeldBytes bound the records of a topic kept in
// memory while they wait for their copies; past them they are read back
// from the log.
const (
	maxHeldRecords = 1 << 14
	maxHeldBytes   = 8 << 20
)

func (n *Node) replSubject(node string) string { return n.prefix + "repl." + node }

// updateFollowers recomputes the followers of every held partition from
// the live nodes. Called by the lease pass.
func (n *Node) updateFollowers(live []string) {
	members := slices.Sorted(slices.Values(live))
	var ps []int
	n.mu.Lock()
	n.members = members
	for p := range n.parts {
		if n.parts[p].mine {
			ps = append(ps, p)
		}
	}
	n.mu.Unlock()
	for _, p := range ps {
		n.setFollowers(p, members)
	}
}

// setFollowers makes the followers of held partition p those of members
// (plus part.extra, a node the partition is being handed to). Make before
// break: a new follower is sent every record at once and brought up to
// date in the background (syncFollower); acknowledgements wait for it only
// once it is in sync, and the lease names it then. A follower that is no
// longer wanted keeps receiving records, and acknowledgements keep waiting
// for it, until every new one is in sync; then it is first removed from
// the lease, and only then dropped. A follower that died (it left
// members) is dropped at once, the same way.
func (n *Node) setFollowers(p int, members []string) {
	n.mu.Lock()
	st := &n.parts[p]
	if !st.mine {
		n.mu.Unlock()
		return
	}
	target := core.FollowersFor(p, n.cfg.Node, members, n.cfg.followerCount(len(members)))
	if st.extra != "" && st.extra != n.cfg.Node && slices.Contains(members, st.extra) && !slices.Contains(target, st.extra) {
		target = append(target, st.extra)
	}
	if st.synced == nil {
		st.synced, st.syncing, st.counted = map[string]bool{}, map[string]bool{}, map[string]bool{}
	}
	want, drop := core.Want(target, st.want, st.synced, members, st.listed)
	term, rev := st.term, st.rev
	// The lease names the followers of the new want that are in sync: a
	// follower no longer wanted leaves it, and one that has just come in
	// sync enters it in the same write, so it never names nobody meanwhile.
	nl := safe.Listing(want, st.synced)
	n.mu.Unlock()
	if drop && !n.renew(p, term, rev, nl) {
		return
	}
	var start []string
	n.mu.Lock()
	st = &n.parts[p]
	if !st.mine || st.term != term {
		n.mu.Unlock()
		return
	}
	st.want = want
	for f := range st.synced {
		if !slices.Contains(want, f) {
			delete(st.synced, f)
		}
	}
	for f := range st.counted {
		if !slices.Contains(want, f) {
			delete(st.counted, f)
		}
	}
	for _, f := range want {
		if !st.synced[f] && !st.syncing[f] {
			st.syncing[f] = true
			start = append(start, f)
		}
	}
	n.mu.Unlock()
	for _, f := range start {
		go n.syncFollower(p, term, f)
	}
	n.rmu.Lock()
	for t, rt := range n.repl {
		if rt.p == p {
			n.advanceLocked(t, rt)
		}
	}
	n.rmu.Unlock()
}

// wantOf returns the term of p when this node holds it, the followers
// records are sent to, those of them in sync (or counted: finishing their
// catch-up), and how many copies an acknowledgement needs besides the
// owner's. With ReplicasAuto that is only the followers in sync: a
// follower still copying the partition's history could not take it over
// (the lease does not name it), so a copy on it would protect nothing,
// and waiting for it would hold publishes up for the whole copy.
func (n *Node) wantOf(p int) (term uint64, want, insync []string, need int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := &n.parts[p]
	if !st.mine {
		return 0, nil, nil, 0
	}
	for _, f := range st.want {
		if st.synced[f] || st.counted[f] {
			insync = append(insync, f)
		}
	}
	need = n.cfg.followerCount(len(n.members))
	if n.cfg.Replicas == ReplicasAuto {
		need = min(need, len(insync))
	}
	return st.term, st.want, insync, need
}

// followed returns the term of the owner whose records this node last
// accepted for p.
func (n *Node) followed(p int) uint64 {
	n.tmu.Lock()
	defer n.tmu.Unlock()
	return n.terms.Followed[p]
}

// syncFollower brings follower f up to date with every local topic of p
// and every consumer position in it, then puts it in sync: the lease names
// it. Acknowledgements wait for it from the moment it holds the history
// (counted), and consumer positions are sent after that moment.
func (n *Node) syncFollower(p int, term uint64, f string) {
	err := n.syncTopics(p, term, f)
	if err == nil {
		// f holds the history as it was a moment ago: from now on
		// acknowledgements wait for f too, so that what it still misses
		// stops growing and the check below comes true.
		n.mu.Lock()
		if st := &n.parts[p]; st.mine && st.term == term && slices.Contains(st.want, f) {
			if st.counted == nil {
				st.counted = map[string]bool{}
			}
			st.counted[f] = true
		}
		n.mu.Unlock()
		err = n.syncConsumers(p, term, f)
	}
	for round := 0; err == nil; round++ {
		// Records acknowledged while f was catching up, which it may
		// have missed: in sync only when it holds every one of them.
		// Deciding under rmu keeps an acknowledgement from slipping
		// between the check and the change.
		type lag struct {
			topic string
			acked uint64
		}
		var behind []lag
		n.rmu.Lock()
		for t, rt := range n.repl {
			if rt.p == p && rt.term == term && rt.conf[f] < rt.acked {
				behind = append(behind, lag{t, rt.acked})
			}
		}
		if len(behind) == 0 {
			n.mu.Lock()
			st := &n.parts[p]
			// Counted without a break: else consumer positions
			// acknowledged while f was out of want may have passed
			// it by (syncConsumers ran before them): start over.
			inSync := st.mine && st.term == term && slices.Contains(st.want, f) && st.counted[f]
			if inSync {
				st.synced[f] = true
			}
			n.mu.Unlock()
			n.rmu.Unlock()
			if !inSync {
				err = fmt.Errorf("cluster: follower %s left the partition's followers while it was brought up to date", f)
			}
			break
		}
		n.rmu.Unlock()
		if round == 20 {
			err = fmt.Errorf("cluster: follower %s still behind on %d topics", f, len(behind))
			break
		}
		for _, l := range behind {
			ep := n.topicEpoch(l.topic)
			if ep == "" {
				continue // forgotten: acknowledged and idle
			}
			// Up to what was acknowledged: f counts, so nothing
			// is acknowledged past what it holds any more, and
			// chasing a busy log's head might never end.
			if _, err = n.catchUp(l.topic, f, p, term, ep, 0, l.acked); err != nil {
				break
			}
		}
	}
	n.mu.Lock()
	st := &n.parts[p]
	ok := st.mine && st.term == term
	if st.owner == n.cfg.Node && st.term == term {
		// Even while the lease is in doubt: a lease taken back in the
		// same term keeps syncing, and a follower left in it would
		// never be brought up to date again.
		delete(st.syncing, f)
		delete(st.counted, f)
	}
	n.mu.Unlock()
	if err != nil {
		n.log.Debug("cluster: bringing a follower up to date", "partition", p, "node", f, "err", err)
		return
	}
	if ok {
		n.log.Debug("cluster: follower in sync", "partition", p, "node", f, "term", term)
		n.poke() // the next pass names it in the lease
	}
}

// topicEpoch returns the epoch of topic's replication state, "" if none.
func (n *Node) topicEpoch(topic string) string {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	if rt := n.repl[topic]; rt != nil {
		return rt.epoch
	}
	return ""
}

func (n *Node) syncTopics(p int, term uint64, f string) error {
	// First the partition alone, so that a follower of a partition
	// without topics records the term it follows too.
	res, err := n.replCall(f, replEntry{term: term, flags: rfProbe, head: uint64(p)})
	if err == nil && res.st != rsOK {
		err = fmt.Errorf("cluster: follower %s refused partition %d: %s", f, p, res.msg)
	}
	if err != nil {
		return err
	}
	return n.eachLocalTopic(p, func(ti broker.TopicInfo) error {
		// Up to the head as it is now: what is appended meanwhile
		// reaches f live, or at the check after the copy, once
		// acknowledgements wait for f (with automatic replicas they do
		// not before, and the copy would chase a growing log).
		_, err := n.catchUp(ti.Topic, f, p, term, ti.Epoch, 0, max(ti.Head, 1))
		return err
	})
}

// syncConsumers sends f every consumer position of p. Called once f
// counts: a position acknowledged from then on has reached f, and one
// acknowledged before is read here, so f ends holding every acknowledged
// position (a position sent to it live before it counted may have failed
// without holding the acknowledgement up).
func (n *Node) syncConsumers(p int, term uint64, f string) error {
	return n.eachLocalConsumer(p, func(co broker.ConsumerOffset) error {
		return n.sendConsumer(f, p, term, co)
	})
}

// eachLocalConsumer calls fn for every consumer position of a topic of
// partition p in the local store, a page at a time.
func (n *Node) eachLocalConsumer(p int, fn func(broker.ConsumerOffset) error) error {
	var after broker.ConsumerOffset
	for {
		list, err := n.local.AllConsumers(after.Consumer, after.Topic, 1000)
		if err != nil {
			return err
		}
		for _, co := range list {
			if n.partition(co.Topic) != p {
				continue
			}
			if err := fn(co); err != nil {
				return err
			}
		}
		if len(list) < 1000 {
			return nil
		}
		after = list[len(list)-1]
	}
}

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

// checkCopies asks the owners of partitions ps to check this node's
// copies of their topics against their logs. Such a copy is of an earlier
// term: this node owned or followed the partition before, and may hold
// records an owner stored but never had acknowledged, which the present
// owner's log holds others in place of (a node killed while it owned the
// partition). The owner's agreement makes it drop them, as it would if
// this node followed the partition again; a copy of another epoch is
// dropped whole. Copies are never served, but none is left disagreeing
// with what was acknowledged. A partition whose check failed is checked
// again at the next lease pass.
func (n *Node) checkCopies(ps []int) {
	failed := map[int]bool{}
	err := n.eachLocalTopicOf(func(p int) bool { return slices.Contains(ps, p) && !failed[p] }, func(ti broker.TopicInfo) error {
		if n.closed.Load() {
			return broker.ErrClosed
		}
		body := putString(putString([]byte{opAgree}, ti.Topic), n.cfg.Node)
		err := n.request(context.Background(), ti.Topic, body, func() error { return nil }, func(*reader) error { return nil })
		if err != nil && !errors.Is(err, broker.ErrTopicNotFound) {
			n.log.Debug("cluster: checking a copy with its owner", "topic", ti.Topic, "err", err)
			failed[n.partition(ti.Topic)] = true
		}
		return nil
	})
	for _, p := range ps {
		if err != nil || failed[p] {
			n.checked[p].Store(0)
		}
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
			e.flags = rfBase
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
	probe := replEntry{topic: topic, term: term, epoch: ti.Epoch, flags: rfProbe, head: ti.Head}
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
		res, err := n.replCall(node, replEntry{topic: topic, term: term, epoch: ti.Epoch, flags: rfCheck, recs: recs[:1]})
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
	probe.flags, probe.head = rfProbe|rfAgree, h
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

func encodeRepl(from string, es []replEntry) []byte {
	size := 16 + len(from)
	for i := range es {
		size += 64 + len(es[i].topic) + len(es[i].epoch) + len(es[i].consumer)
		for j := range es[i].recs {
			size += recBytes(&es[i].recs[j])
		}
	}
	b := make([]byte, 0, size)
	b = putString(b, from)
	b = putUvarint(b, uint64(len(es)))
	for i := range es {
		e := &es[i]
		b = putString(b, e.topic)
		b = putUvarint(b, e.term)
		b = putString(b, e.epoch)
		b = append(b, e.flags)
		b = putUvarint(b, e.head)
		if e.flags&rfConsumer != 0 {
			b = putString(b, e.consumer)
		}
		b = putUvarint(b, uint64(len(e.recs)))
		for j := range e.recs {
			b = putRecord(b, &e.recs[j])
		}
	}
	return b
}

// decodeRepl reads a request encodeRepl made. It never panics and never
// allocates much more than the message holds, whatever the bytes.
func decodeRepl(b []byte) ([]replEntry, error) {
	r := &reader{b: b}
	_ = r.string() // the sender, for debugging
	k := r.uvarint()
	if k > uint64(len(r.b)) {
		r.fail()
	}
	var es []replEntry
	for i := uint64(0); i < k && r.err == nil; i++ {
		e := replEntry{topic: r.string(), term: r.uvarint(), epoch: r.string(), flags: r.byte(), head: r.uvarint()}
		if e.flags&rfConsumer != 0 {
			e.consumer = r.string()
		}
		c := r.uvarint()
		if c > uint64(len(r.b)) {
			r.fail()
			break
		}
		e.recs = make([]broker.Record, 0, min(c, 1024)) // c is a claim: grow past it only as records decode
		for range c {
			if rec := r.record(); r.err == nil {
				e.recs = append(e.recs, rec)
			} else {
				break
			}
		}
		es = append(es, e)
	}
	if r.err != nil {
		return nil, r.err
	}
	return es, nil
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

// syncing tells whether a follower of held partition p is being brought
// up to date: its topics' replication state is kept meanwhile, for
// syncFollower's last check.
func (n *Node) syncing(p int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.parts[p].syncing) > 0
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
	if e.flags&rfConsumer != 0 {
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
	switch {
	case e.flags&rfCreate != 0:
		if !ok {
			if err := n.local.AppendAt(e.topic, e.epoch, nil); err != nil {
				return fail(err)
			}
		}
		return replResult{st: rsOK}
	case e.flags&rfCheck != 0:
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
	case e.flags&rfProbe != 0:
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
		if e.flags&rfAgree != 0 {
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
	fresh := empty && (first == 1 || e.flags&rfBase != 0)
	if !fresh && !n.isVerified(e.topic, e.term) {
		// A copy of an earlier term may hold records the owner replaced.
		return replResult{st: rsVerify}
	}
	if empty && first > 1 && e.flags&rfBase == 0 {
		return gap(1)
	}
	err = n.local.AppendAt(e.topic, e.epoch, e.recs)
	switch {
	case errors.Is(err, store.ErrGap) && e.flags&rfBase != 0:
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

// sendConsumer sends a consumer position to follower f and waits for it.
func (n *Node) sendConsumer(f string, p int, term uint64, co broker.ConsumerOffset) error {
	res, err := n.replCall(f, replEntry{topic: co.Topic, term: term, epoch: co.Epoch, flags: rfConsumer, head: co.Offset, consumer: co.Consumer})
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
	e := replEntry{topic: co.Topic, term: term, epoch: co.Epoch, flags: rfConsumer, head: co.Offset, consumer: co.Consumer}
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

// ensureFollowers creates an empty topic, just created here, on the
// followers too, so that a failover before its first record keeps its
// epoch (subscribers hold it already). Best effort: a follower that does
// not answer gets it with its next sync.
func (n *Node) ensureFollowers(ti broker.TopicInfo) {
	p := n.partition(ti.Topic)
	term, want, _, _ := n.wantOf(p)
	if term == 0 {
		return
	}
	e := replEntry{topic: ti.Topic, term: term, epoch: ti.Epoch, flags: rfCreate}
	var wg sync.WaitGroup
	for _, f := range want {
		wg.Add(1)
		n.sendRepl(f, []replEntry{e}, func([]replResult, error) { wg.Done() })
	}
	wg.Wait()
}
