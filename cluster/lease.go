package cluster

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster/core"
)

// part is this node's view of one partition's lease. Guarded by Node.mu.
type part struct {
	owner string    // the lease holder as last seen; "" when free or unknown
	term  uint64    // the holder's term: the KV revision that created its lease
	rev   uint64    // the lease entry's revision as last seen (ours when mine)
	seen  time.Time // when rev was first seen here: a revision unchanged for LeaseTTL is stale
	mine  bool      // this node holds the lease, and rev is its last write
	ready bool      // mine, and the local data belongs to term: requests are served
	sent  time.Time // mine: when the last successful write of the lease was sent

	// Replication (Replicas ≥ 2, see repl.go).
	listed  []string        // the followers named in the lease: each holds every acknowledged record of term
	want    []string        // mine: the followers whose confirmation an acknowledgement needs
	synced  map[string]bool // mine: followers of want brought up to date with every topic of the partition in term
	syncing map[string]bool // mine: followers being brought up to date
	counted map[string]bool // mine: followers of syncing that hold the history and finish catching up: acknowledgements wait for them, the lease does not name them yet
	extra   string          // mine: a node under its share made a follower, to hand the partition to once it is listed

	releasing bool      // mine, being handed over: not renewed any more
	unsure    time.Time // mine: when the first renewal since the last answered one was sent whose answer did not come
}

// leaseValue and parseLease are the lease's value in the bucket (see
// core.Lease).
func leaseValue(node string, term uint64, listed []string) []byte {
	return core.EncodeLease(node, term, listed)
}

func parseLease(e jetstream.KeyValueEntry) core.Lease {
	return core.ParseLease(e.Value(), e.Revision())
}

// safe are the rules the cluster runs by: all of them.
var safe = core.Safe()

// clock0 is where this process's core.Time starts: times given to the
// core are monotonic readings since then.
var clock0 = time.Now()

// ct returns t on the core's clock; the zero time is before every other.
func ct(t time.Time) core.Time {
	if t.IsZero() {
		return math.MinInt64 / 2
	}
	return core.Time(t.Sub(clock0))
}

func leaseKey(p int) string { return "p" + strconv.Itoa(p) }

// leaseLoop keeps the leases: it takes free and stale ones while the node
// holds less than its share, and releases what is over its share.
// Renewals and heartbeats have loops of their own (renewLoop,
// heartbeatLoop).
func (n *Node) leaseLoop() { n.loop(n.cfg.LeaseTTL/6, n.kick, n.pass) }

// loop calls fn every d, and at once when kick is signalled, until Close.
func (n *Node) loop(d time.Duration, kick <-chan struct{}, fn func()) {
	defer n.wg.Done()
	tick := time.NewTicker(max(d, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-tick.C:
		case <-kick:
		}
		fn()
	}
}

// signal wakes the loop waiting on kick, unless it is woken already.
func signal(kick chan<- struct{}) {
	select {
	case kick <- struct{}{}:
	default:
	}
}

// poke asks the lease loop for an early pass.
func (n *Node) poke() { signal(n.kick) }

func (n *Node) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), n.cfg.LeaseTTL/3)
}

// pass runs one round over every partition. Passes and Drain are
// serialised by passMu. Renewals of held leases and heartbeats are not
// done here but by renewLoop and heartbeatLoop, so that a long pass (many
// partitions taken, a slow NATS) never starves them.
func (n *Node) pass() {
	n.passMu.Lock()
	defer n.passMu.Unlock()
	if n.closed.Load() {
		return
	}
	draining := n.draining.Load()
	live, liveErr := n.liveNodesErr()
	liveOK := liveErr == nil
	if !liveOK {
		n.blindAfter(liveErr)
	}
	live = n.withGrace(live, liveOK)
	if liveOK {
		n.failCallsTo(live)
	}
	if n.cfg.replicated() && liveOK && !draining {
		n.updateFollowers(live)
	}
	share := (n.cfg.Partitions + max(len(live), 1) - 1) / max(len(live), 1)
	ttl := n.cfg.LeaseTTL
	replTerms := n.replTerms()
	var check []int // partitions of another owner's later term, whose local copies to check
	defer func() {
		if len(check) > 0 && !draining {
			go n.checkCopies(check)
		}
	}()
	start := rand.IntN(n.cfg.Partitions)
	reads := n.readLeases()
	failed := 0
	for _, r := range reads {
		if r.err != nil && !errors.Is(r.err, jetstream.ErrKeyNotFound) {
			failed++
			n.blindAfter(r.err)
		}
	}
	if failed == len(reads) {
		n.markBlind() // not one lease could be read: this node sees nothing
	}
	unsettled := false // a lease of a dead owner was seen
	for i := range n.cfg.Partitions {
		if n.closed.Load() {
			return
		}
		p := (start + i) % n.cfg.Partitions
		e, err := reads[p].e, reads[p].err
		now := time.Now()
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			n.mu.Lock()
			st := &n.parts[p]
			if st.mine {
				n.log.Warn("cluster: lease vanished", "partition", p)
			}
			*st = part{}
			n.mu.Unlock()
			if safe.Pass(core.PassIn{Self: n.cfg.Node, Draining: draining, Under: n.owned() < share}).Action == core.Create {
				n.take(p, 0, false)
			}
			continue
		}
		if err != nil {
			n.log.Warn("cluster: reading lease", "partition", p, "err", err)
			continue
		}
		l := parseLease(e)
		followed, held, intent := n.followed(p), n.dataTerm(p), n.intent(p)
		n.mu.Lock()
		st := &n.parts[p]
		w := core.Watch{Rev: st.rev, Seen: ct(st.seen)}
		w.Observe(e.Revision(), st.mine, ct(now))
		if w.Rev != st.rev {
			st.rev, st.seen = w.Rev, now
		}
		in := core.PassIn{Self: n.cfg.Node, Found: true, Lease: l, Mine: st.mine, MyRev: st.rev,
			Followed: followed, Held: held, Intent: intent, TTL: core.Duration(ttl), Unclean: core.Duration(n.cfg.UncleanTakeoverAfter),
			Draining: draining, Replicated: n.cfg.replicated(), Live: live,
			Unchanged: w.Unchanged(ct(now), ct(n.blindAt()))}
		if t, ok := replTerms[p]; ok {
			in.ReplTerm = t
		}
		other := l.Owner != n.cfg.Node
		if other {
			if st.mine {
				n.log.Warn("cluster: lease lost", "partition", p, "to", l.Owner)
			}
			st.mine, st.ready = false, false
			st.owner, st.term, st.listed = l.Owner, l.Term, l.Listed
			n.fence[p] = max(n.fence[p], l.Term)
		}
		n.mu.Unlock()
		if other {
			n.dropEphemeral(p, l.Term)
		}
		in.Under = n.owned() < share
		out := safe.Pass(in)
		if out.DropUnacked {
			n.dropUnacked(p, l.Term)
		}
		if out.Check && n.checked[p].Swap(l.Term) != l.Term {
			check = append(check, p)
		}
		switch out.Action {
		case core.Claim:
			n.claim(p, out.Rev, out.Term, out.Keep)
		case core.Take:
			if out.Unclean {
				n.log.Warn("cluster: unclean takeover: no node holding the partition's history came back within --unclean-takeover-after; its topics start a new epoch",
					"partition", p, "holder", l.Holder(), "followers", l.Listed, "unchanged", time.Duration(in.Unchanged).Round(time.Millisecond))
			}
			if n.take(p, out.Rev, out.Keep) {
				n.tookAt = time.Now()
			}
		}
		if out.Waiting && n.waiting[p].Swap(true) == false {
			n.log.Warn("cluster: partition unavailable until a node holding its history comes back",
				"partition", p, "holder", l.Holder(), "followers", l.Listed)
		}
		if !out.Stale || l.Owner == n.cfg.Node {
			n.waiting[p].Store(false)
		}
		if out.Dead {
			unsettled = true
		}
	}
	if draining || len(live) < 2 {
		return
	}
	if !n.cfg.replicated() {
		if excess := n.owned() - share; excess > 0 {
			n.release(n.pick(excess))
		}
		return
	}
	// With replication, balance waits until a dead owner's partitions
	// have all moved and its heartbeat has expired: a partition handed
	// back meanwhile could find its follower counted as alive but gone.
	if !unsettled && time.Since(n.tookAt) >= ttl {
		n.rebalance(live, share)
	}
}

// leaseRead is one partition's lease as read at the start of a pass.
type leaseRead struct {
	e   jetstream.KeyValueEntry
	err error
}

// readLeases reads every partition's lease, many at a time: a pass
// decides from one recent picture, and reading them one after the other
// would take a round trip per partition.
func (n *Node) readLeases() []leaseRead {
	out := make([]leaseRead, n.cfg.Partitions)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for p := range out {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := n.opCtx()
			defer cancel()
			out[p].e, out[p].err = n.leases.Get(ctx, leaseKey(p))
		}()
	}
	wg.Wait()
	return out
}

func (n *Node) partRev(p int) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.parts[p].rev
}

// owned counts the partitions this node holds.
func (n *Node) owned() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for i := range n.parts {
		if n.parts[i].mine {
			c++
		}
	}
	return c
}

// take creates the lease of a free partition (rev 0), or replaces a stale
// one whose last revision is rev. keep: this node was a follower named in
// the stale lease, so its local data holds every acknowledged record and
// is kept, epochs included. It reports whether the lease was taken.
func (n *Node) take(p int, rev uint64, keep bool) bool {
	// On disk first: should the answer be lost, or the node stop before
	// its data is ready, the lease naming it is known for its own take.
	if err := n.setIntent(p, rev, keep); err != nil {
		n.log.Error("cluster: recording a take", "partition", p, "err", err)
		return false
	}
	ctx, cancel := n.opCtx()
	defer cancel()
	sent := time.Now()
	var (
		nrev uint64
		err  error
	)
	if rev == 0 {
		nrev, err = n.leases.Create(ctx, leaseKey(p), leaseValue(n.cfg.Node, 0, nil))
	} else {
		nrev, err = n.leases.Update(ctx, leaseKey(p), leaseValue(n.cfg.Node, 0, nil), rev)
	}
	if err != nil {
		return false // another node was faster
	}
	if keep {
		n.takeovers.Add(1)
		n.log.Info("cluster: taking over a partition as its follower, with its history", "partition", p, "term", nrev)
	}
	n.acquire(p, nrev, nrev, sent, keep)
	return true
}

// claim takes back a lease that names this node; keep: its take was cut
// short before its data was made ready, and it was with the data.
func (n *Node) claim(p int, rev, term uint64, keep bool) {
	ctx, cancel := n.opCtx()
	defer cancel()
	sent := time.Now()
	// The followers this run of the node brought up to date in term are
	// named again; after a restart nobody is, until brought up to date.
	n.mu.Lock()
	var listed []string
	if st := &n.parts[p]; st.owner == n.cfg.Node && st.term == term {
		listed = st.listing()
	}
	n.mu.Unlock()
	n.renewMu.Lock()
	nrev, err := n.leases.Update(ctx, leaseKey(p), leaseValue(n.cfg.Node, term, listed), rev)
	n.renewMu.Unlock()
	if err != nil {
		return
	}
	n.acquire(p, nrev, term, sent, keep)
}

// acquire makes a lease just written by this node its own, and gets the
// local data ready for its term: data of another term (or of no record) is
// history this node cannot vouch for, so every local topic of the
// partition starts a new epoch.
func (n *Node) acquire(p int, rev, term uint64, sent time.Time, keep bool) {
	n.mu.Lock()
	st := &n.parts[p]
	// Taken back in the term this node held it in, without a restart (a
	// renewal whose answer was lost): the replication state and the
	// followers in sync still hold.
	again := st.owner == n.cfg.Node && st.term == term && st.synced != nil
	if again {
		st.rev, st.seen, st.mine, st.sent = rev, time.Now(), true, sent
	} else {
		*st = part{owner: n.cfg.Node, term: term, rev: rev, seen: time.Now(), mine: true, sent: sent}
	}
	n.fence[p] = max(n.fence[p], term)
	n.mu.Unlock()
	if !again {
		n.dropRepl(p)
	}
	if err := n.prepare(p, term, keep); err != nil {
		n.log.Error("cluster: preparing partition; releasing it", "partition", p, "err", err)
		n.release([]int{p})
		return
	}
	n.mu.Lock()
	st = &n.parts[p]
	if st.mine && st.term == term {
		st.ready = true
	}
	n.mu.Unlock()
	if n.cfg.replicated() {
		n.mu.Lock()
		members := n.members
		n.mu.Unlock()
		n.setFollowers(p, members)
	}
	n.log.Debug("cluster: partition acquired", "partition", p, "term", term)
}

func (n *Node) prepare(p int, term uint64, keep bool) error {
	n.tmu.Lock()
	same := n.terms.Terms[p] == term
	if keep && !same {
		n.terms.Terms[p] = term
		delete(n.terms.Taking, p)
		err := n.terms.save(n.termsPath)
		n.tmu.Unlock()
		return err
	}
	n.tmu.Unlock()
	if same {
		return nil
	}
	err := n.eachLocalTopic(p, func(ti broker.TopicInfo) error {
		epoch, err := n.local.ResetTopic(ti.Topic)
		if err != nil {
			return err
		}
		n.epochResets.Add(1)
		n.log.Info("cluster: topic history not held for this term: new epoch", "topic", ti.Topic, "partition", p, "term", term, "epoch", epoch)
		return nil
	})
	if err != nil {
		return err
	}
	n.tmu.Lock()
	defer n.tmu.Unlock()
	n.terms.Terms[p] = term
	delete(n.terms.Taking, p)
	return n.terms.save(n.termsPath)
}

// eachLocalTopic calls fn for every topic of partition p in the local
// store, in name order, a page of the store at a time.
func (n *Node) eachLocalTopic(p int, fn func(broker.TopicInfo) error) error {
	return n.eachLocalTopicOf(func(q int) bool { return q == p }, fn)
}

// eachLocalTopicOf calls fn for every topic in the local store of a
// partition in, a page at a time, until fn fails.
func (n *Node) eachLocalTopicOf(in func(p int) bool, fn func(broker.TopicInfo) error) error {
	after := ""
	for {
		list, err := n.local.Topics(after, 1000)
		if err != nil {
			return err
		}
		for _, ti := range list {
			if !in(n.partition(ti.Topic)) {
				continue
			}
			if err := fn(ti); err != nil {
				return err
			}
		}
		if len(list) < 1000 {
			return nil
		}
		after = list[len(list)-1].Topic
	}
}
