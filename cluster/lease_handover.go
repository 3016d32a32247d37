package cluster

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster/core"
)

// rebalance hands partitions over past this node's share, with
// replication: a partition goes only to a node that holds its history.
// Where a node under its share is a listed follower already, the lease is
// handed back naming it and it takes the partition; otherwise such a node
// is made an extra follower first (part.extra), brought up to date, named
// in the lease, and handed the partition at a later pass.
func (n *Node) rebalance(live []string, share int) {
	n.mu.Lock()
	parts := make([]core.Held, len(n.parts))
	for p := range n.parts {
		st := &n.parts[p]
		parts[p] = core.Held{Mine: st.mine, Owner: st.owner, Ready: st.ready, Listed: st.listed, Extra: st.extra}
	}
	order := rand.Perm(len(parts))
	release, extra := core.Balance(n.cfg.Node, parts, live, share, order)
	var changed []int
	for p, e := range extra {
		if n.parts[p].mine {
			n.parts[p].extra = e
			changed = append(changed, p)
		}
	}
	members := n.members
	n.mu.Unlock()
	for _, p := range changed {
		n.setFollowers(p, members)
	}
	if len(release) > 0 {
		n.log.Debug("cluster: handing partitions to their followers for balance", "count", len(release))
		n.release(release)
	}
}

// pick returns up to k partitions this node holds, chosen at random.
func (n *Node) pick(k int) []int {
	n.mu.Lock()
	var list []int
	for i := range n.parts {
		if n.parts[i].mine {
			list = append(list, i)
		}
	}
	n.mu.Unlock()
	rand.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
	return list[:min(k, len(list))]
}

// release hands partitions over: it stops serving them, waits (briefly)
// for local appends in flight, and frees their leases so that another
// node takes them at once. With replication a lease is handed back, not
// deleted, naming this node and the followers: the nodes that hold the
// history, one of which must take it. Only a partition of which this node
// holds no topic, so that there is no history to keep, is deleted.
func (n *Node) release(ps []int) {
	if len(ps) == 0 {
		return
	}
	n.mu.Lock()
	for _, p := range ps {
		n.parts[p].ready = false
		n.parts[p].releasing = true
	}
	n.mu.Unlock()
	// Let the writes already taken finish, and their copies be confirmed:
	// once handed over, they would be answered unavailable.
	for deadline := time.Now().Add(n.cfg.LeaseTTL / 3); (n.inflight.Load() > 0 || n.unacked(ps)) && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
	}
	var hasTopics map[int]bool
	if n.cfg.replicated() {
		hasTopics = map[int]bool{}
		err := n.eachLocalTopicOf(func(p int) bool { return slices.Contains(ps, p) }, func(ti broker.TopicInfo) error {
			hasTopics[n.partition(ti.Topic)] = true
			return nil
		})
		if err != nil {
			for _, p := range ps {
				hasTopics[p] = true // unsure: keep what may be history
			}
		}
	}
	// A renewal in flight lands first (renewDue holds renewMu for its
	// round); later rounds skip these partitions (releasing).
	n.renewMu.Lock()
	n.renewMu.Unlock() //nolint:staticcheck // a barrier, not a critical section
	for _, p := range ps {
		n.mu.Lock()
		st := n.parts[p]
		n.mu.Unlock()
		if !st.mine {
			continue
		}
		ctx, cancel := n.opCtx()
		var err error
		if len(st.listed) > 0 || hasTopics[p] {
			// Handed back naming the nodes that hold the history.
			_, err = n.leases.Update(ctx, leaseKey(p), leaseValue(core.FreeMark+n.cfg.Node, st.term, st.listed), st.rev)
		} else {
			err = n.leases.Delete(ctx, leaseKey(p), jetstream.LastRevision(st.rev))
		}
		cancel()
		n.mu.Lock()
		n.parts[p] = part{}
		n.mu.Unlock()
		if err != nil {
			n.log.Warn("cluster: releasing lease", "partition", p, "err", err)
		}
	}
	n.log.Debug("cluster: partitions released", "count", len(ps))
}
