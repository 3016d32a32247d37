package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
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
		followed, held := n.followed(p), n.dataTerm(p)
		n.mu.Lock()
		st := &n.parts[p]
		w := core.Watch{Rev: st.rev, Seen: ct(st.seen)}
		w.Observe(e.Revision(), st.mine, ct(now))
		if w.Rev != st.rev {
			st.rev, st.seen = w.Rev, now
		}
		in := core.PassIn{Self: n.cfg.Node, Found: true, Lease: l, Mine: st.mine, MyRev: st.rev,
			Followed: followed, Held: held, TTL: core.Duration(ttl), Unclean: core.Duration(n.cfg.UncleanTakeoverAfter),
			Draining: draining, Replicated: n.cfg.replicated(), Live: live,
			Unchanged: w.Unchanged(ct(now), ct(n.blindAt()))}
		if t, ok := replTerms[p]; ok {
			in.ReplTerm = t
		}
		if l.Owner != n.cfg.Node {
			if st.mine {
				n.log.Warn("cluster: lease lost", "partition", p, "to", l.Owner)
			}
			st.mine, st.ready = false, false
			st.owner, st.term, st.listed = l.Owner, l.Term, l.Listed
			n.fence[p] = max(n.fence[p], l.Term)
		}
		n.mu.Unlock()
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
			n.claim(p, out.Rev, out.Term)
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

// markBlind records that this node could not see the cluster's buckets
// just now: NATS was away, or JetStream did not answer.
func (n *Node) markBlind() { n.blind.Store(time.Now().UnixNano()) }

// blindAfter marks this node blind when err says it cannot see the
// buckets at all: no connection to NATS, or JetStream not answering (as
// while NATS starts again). One request that timed out on a busy machine
// does not: a lease it could not renew may then be taken over by a node
// holding the history, which loses nothing, while counting blind moments
// forever would keep a dead node's leases and heartbeat alive.
func (n *Node) blindAfter(err error) {
	var apiErr *jetstream.APIError
	switch {
	case !n.ctl.IsConnected(),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled),
		errors.Is(err, jetstream.ErrBucketNotFound),
		errors.Is(err, jetstream.ErrStreamNotFound),
		errors.As(err, &apiErr) && apiErr.Code == 503:
		n.markBlind()
	}
}

// blindAt returns when this node last could not see the buckets.
func (n *Node) blindAt() time.Time {
	if b := n.blind.Load(); b != 0 {
		return time.Unix(0, b)
	}
	return time.Time{}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// withGrace returns the live nodes to decide with. Right after this node
// could not see the node bucket, heartbeats are no evidence of death: after
// a NATS outage longer than the lease TTL every heartbeat has expired at
// once, and the nodes come back one by one. For a lease TTL after such a
// moment, the nodes live before it count as live too, so that followers
// are not dropped and calls to them not failed meanwhile. Called with
// passMu held.
func (n *Node) withGrace(live []string, ok bool) []string {
	ttl := n.cfg.LeaseTTL
	if time.Since(n.blindAt()) < ttl+ttl/10 {
		for _, m := range n.liveSeen {
			if !slices.Contains(live, m) {
				live = append(live, m)
			}
		}
	}
	if ok {
		n.liveSeen = slices.Clone(live)
	}
	return live
}

// rebalance hands partitions over past this node's share, with
// replication: a partition goes only to a node that holds its history.
// Where a node under its share is a listed follower already, the lease is
// handed back naming it and it takes the partition; otherwise such a node
// is made an extra follower first (part.extra), brought up to date, named
// in the lease, and handed the partition at a later pass.
func (n *Node) rebalance(live []string, share int) {
	me := n.cfg.Node
	var release, changed []int
	n.mu.Lock()
	count := map[string]int{}
	var mine []int
	for p := range n.parts {
		switch st := &n.parts[p]; {
		case st.mine:
			count[me]++
			mine = append(mine, p)
		case st.owner != "":
			count[st.owner]++
		}
	}
	room := map[string]int{}
	for _, m := range live {
		if m != me && count[m] < share {
			room[m] = share - count[m]
		}
	}
	excess := count[me] - share
	rand.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
	// Transfers under way, and partitions a follower under its share
	// holds already.
	for _, p := range mine {
		st := &n.parts[p]
		if st.extra != "" {
			if excess <= 0 || room[st.extra] <= 0 || !st.ready {
				st.extra = ""
				changed = append(changed, p)
				continue
			}
			room[st.extra]--
			excess--
			if slices.Contains(st.listed, st.extra) {
				release = append(release, p)
			}
			continue
		}
		if excess <= 0 || !st.ready {
			continue
		}
		for _, f := range st.listed {
			if room[f] > 0 {
				room[f]--
				excess--
				release = append(release, p)
				break
			}
		}
	}
	// New transfers, to the nodes with the most room.
	for _, p := range mine {
		st := &n.parts[p]
		if excess <= 0 {
			break
		}
		if st.extra != "" || !st.ready || slices.Contains(release, p) {
			continue
		}
		best := ""
		for m, r := range room {
			if r > 0 && (best == "" || r > room[best] || r == room[best] && m < best) {
				best = m
			}
		}
		if best == "" {
			break
		}
		st.extra = best
		room[best]--
		excess--
		changed = append(changed, p)
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

// dataTerm returns the term the local data of p belongs to as its owner.
func (n *Node) dataTerm(p int) uint64 {
	n.tmu.Lock()
	defer n.tmu.Unlock()
	return n.terms.Terms[p]
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

// liveNodes lists the nodes whose heartbeat has not expired.
func (n *Node) liveNodes() []string {
	out, _ := n.liveNodesErr()
	return out
}

// liveNodesErr is liveNodes, with the error that kept the list from being
// read (it is then this node alone).
func (n *Node) liveNodesErr() ([]string, error) {
	ctx, cancel := n.opCtx()
	defer cancel()
	kl, err := n.nodes.ListKeys(ctx)
	if err != nil {
		return []string{n.cfg.Node}, err
	}
	defer func() { _ = kl.Stop() }()
	var out []string
	for k := range kl.Keys() {
		out = append(out, k)
	}
	return out, nil
}

// take creates the lease of a free partition (rev 0), or replaces a stale
// one whose last revision is rev. keep: this node was a follower named in
// the stale lease, so its local data holds every acknowledged record and
// is kept, epochs included. It reports whether the lease was taken.
func (n *Node) take(p int, rev uint64, keep bool) bool {
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

// claim takes back a lease that names this node.
func (n *Node) claim(p int, rev, term uint64) {
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
	n.acquire(p, nrev, term, sent, false)
}

// renewLoop renews this node's leases and does nothing else, so that no
// other work of the node (a long lease pass, a partition's topics reset, a
// busy store) delays a renewal: a lease is renewed once a third of its TTL
// is gone, leaving two more chances before it lapses.
func (n *Node) renewLoop() { n.loop(n.cfg.LeaseTTL/12, n.renewKick, n.renewDue) }

// heartbeatLoop announces this node in the node bucket every quarter of
// the lease TTL (entries expire after one TTL), and at once when the
// connection to NATS comes back, whatever the rest of the node is doing.
func (n *Node) heartbeatLoop() {
	failing := false
	n.loop(n.cfg.LeaseTTL/4, n.beatKick, func() {
		if n.draining.Load() || n.closed.Load() {
			return
		}
		err := n.heartbeat()
		switch {
		case err != nil && !failing:
			n.log.Warn("cluster: heartbeat", "err", err)
		case err == nil && failing:
			n.log.Info("cluster: heartbeats resumed")
		}
		failing = err != nil
	})
}

// heartbeat writes this node's entry in the node bucket once.
func (n *Node) heartbeat() error {
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.LeaseTTL/2)
	defer cancel()
	_, err := n.nodes.Put(ctx, n.cfg.Node, []byte(strconv.Itoa(n.cfg.Partitions)))
	if err != nil {
		n.blindAfter(err)
	}
	return err
}

// renewDue renews every held lease whose last renewal is a third of the
// TTL old, or whose followers to name have changed, all at once.
func (n *Node) renewDue() {
	type due struct {
		p         int
		term, rev uint64
		listed    []string
		at        time.Time // when the renewal was due
	}
	var list []due
	n.renewMu.Lock()
	defer n.renewMu.Unlock()
	n.mu.Lock()
	for p := range n.parts {
		st := &n.parts[p]
		if !st.mine || st.releasing {
			continue
		}
		l := st.listing()
		at := st.sent.Add(n.cfg.LeaseTTL / 3)
		if !time.Now().Before(at) || !slices.Equal(l, st.listed) {
			list = append(list, due{p, st.term, st.rev, l, at})
		}
	}
	n.mu.Unlock()
	if len(list) == 0 {
		return
	}
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for _, d := range list {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if n.renew(d.p, d.term, d.rev, d.listed) && n.cfg.ObserveRenewLateness != nil {
				n.cfg.ObserveRenewLateness(max(time.Since(d.at), 0))
			}
		}()
	}
	wg.Wait()
}

// listing returns the followers the lease of a held partition names: those
// of want brought up to date. Called with Node.mu held.
func (st *part) listing() []string {
	return safe.Listing(st.want, st.synced)
}

// renew writes the lease of p again, naming listed as its followers, and
// reports whether that succeeded. A renewal answered late is still worth
// having while the lease lasts, so it may take until then (a busy NATS or
// machine); one whose answer never came may have been written all the
// same, which the next renewal, refused for its stale revision, finds out
// and takes as its own (part.unsure).
func (n *Node) renew(p int, term, rev uint64, listed []string) bool {
	n.mu.Lock()
	st := &n.parts[p]
	deadline := later(st.sent.Add(n.cfg.LeaseTTL), time.Now().Add(n.cfg.LeaseTTL/3))
	unsure := st.unsure
	n.mu.Unlock()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	sent := time.Now()
	nrev, err := n.leases.Update(ctx, leaseKey(p), leaseValue(n.cfg.Node, term, listed), rev)
	var apiErr *jetstream.APIError
	if err != nil && errors.As(err, &apiErr) && !unsure.IsZero() {
		if e, gerr := n.leases.Get(ctx, leaseKey(p)); gerr == nil {
			if l := parseLease(e); l.Owner == n.cfg.Node && l.Term == term && e.Revision() > rev {
				// The renewal that went unanswered was written: the lease
				// lasts from when it was sent.
				n.mu.Lock()
				adopted := st.mine && st.term == term && st.rev == rev
				if adopted {
					st.rev, st.seen, st.sent, st.unsure = e.Revision(), time.Now(), unsure, time.Time{}
				}
				n.mu.Unlock()
				if adopted {
					return n.renew(p, term, e.Revision(), listed)
				}
			}
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		if errors.As(err, &apiErr) {
			// Somebody else wrote the lease: stop serving at once; the
			// next pass sees who holds it.
			st.mine, st.ready = false, false
		} else {
			n.blindAfter(err)
			if st.unsure.IsZero() {
				st.unsure = sent // it may have been written
			}
		}
		n.log.Warn("cluster: renewing lease", "partition", p, "err", err)
		return false
	}
	if st.mine && st.term == term {
		st.rev, st.seen, st.sent, st.listed, st.unsure = nrev, time.Now(), sent, listed, time.Time{}
		return true
	}
	return false
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

// terms records which lease term the local data of each partition belongs
// to, so that a node that takes back a lease of the same term keeps its
// data. It is a small JSON file beside the store.
type terms struct {
	Cluster    string         `json:"cluster"`
	Partitions int            `json:"partitions"`
	Terms      map[int]uint64 `json:"terms"`
	// Followed: with replication, the term of the owner whose records
	// this node last accepted as a follower, per partition.
	Followed map[int]uint64 `json:"followed,omitempty"`
	// Bucket identifies the lease bucket the terms are revisions of (its
	// creation time): a bucket made anew starts its revisions over.
	Bucket string `json:"bucket,omitempty"`
}

func loadTerms(path, cluster string, partitions int) (*terms, error) {
	t := &terms{Cluster: cluster, Partitions: partitions, Terms: map[int]uint64{}, Followed: map[int]uint64{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return nil, err
	}
	var f terms
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("cluster: %s: %w", filepath.Base(path), err)
	}
	if f.Cluster == cluster && f.Partitions == partitions && f.Terms != nil {
		t.Terms, t.Bucket = f.Terms, f.Bucket
		if f.Followed != nil {
			t.Followed = f.Followed
		}
	}
	return t, nil
}

// save writes the record durably before the partition is served.
func (t *terms) save(path string) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
