package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster/core"
)

// updateFollowers recomputes the followers of every held partition from
// the live nodes. Called by the lease pass.
func (n *Node) updateFollowers(live []string) {
	members := slices.Sorted(slices.Values(live))
	var ps []int
	n.mu.Lock()
	if !slices.Equal(n.members, members) {
		var joined, left []string
		for _, m := range members {
			if !slices.Contains(n.members, m) {
				joined = append(joined, m)
			}
		}
		for _, m := range n.members {
			if !slices.Contains(members, m) {
				left = append(left, m)
			}
		}
		n.log.Info("cluster: live nodes changed", "joined", joined, "left", left, "live", members)
	}
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
	res, err := n.replCall(f, replEntry{term: term, kind: kindProbe, head: uint64(p)})
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

// syncing tells whether a follower of held partition p is being brought
// up to date: its topics' replication state is kept meanwhile, for
// syncFollower's last check.
func (n *Node) syncing(p int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.parts[p].syncing) > 0
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
	e := replEntry{topic: ti.Topic, term: term, epoch: ti.Epoch, kind: kindCreate}
	var wg sync.WaitGroup
	for _, f := range want {
		wg.Add(1)
		n.sendRepl(f, []replEntry{e}, func([]replResult, error) { wg.Done() })
	}
	wg.Wait()
}
