package sim

import (
	"slices"

	"github.com/brokerd/brokerd/cluster/core"
)

// rec is one record of a partition's log.
type rec struct {
	val  uint64 // the client's value: unique per publish
	term uint64 // the owner's term it was appended in
}

// plog is a node's log of one partition's topic: offsets 1..len(recs) of
// epoch.
type plog struct {
	epoch int
	recs  []rec
}

// part is a node's view of one partition's lease (cluster.part).
type part struct {
	owner     string
	term      uint64
	w         core.Watch
	mine      bool
	ready     bool
	taking    bool   // a take or claim is in flight
	releasing bool   // being handed back: not renewed any more
	extra     string // a node under its share made a follower, to hand the partition to once listed
	sent      core.Time
	unsure    core.Time
	renew     bool // a renewal is in flight
	listed    []string
	want      []string
	synced    map[string]bool
	counted   map[string]bool
	csync     map[string]bool // counted followers sent the consumer's position
	syncing   map[string]bool
}

// rstate is an owner's replication state of a partition's topic
// (cluster.replTopic).
type rstate struct {
	term  uint64
	epoch int
	acked uint64
	conf  map[string]uint64
	waits []uint64          // offsets whose clients wait
	late  map[string]uint64 // follower → the first offset it confirmed after seeing a later term
}

// node is one brokerd. logs, dataTerm and followed are on disk: they
// survive kill -9. The rest is lost.
type node struct {
	w    *world
	name string

	up     bool
	gen    int       // the run: events of an earlier run are dropped
	until  core.Time // paused until then
	lag    core.Duration
	cut    bool // cut off from NATS
	queued []func()

	logs     []plog
	cons     []cpos
	dataTerm []uint64
	followed []uint64
	intent   []*core.Intent // the take set out to, until its data is ready (on disk)

	parts    []part
	fence    []uint64
	verified []uint64 // the term each copy is known to agree with the owner in
	repl     []*rstate
	blind    core.Time
	liveSeen []string
	members  []string
	draining bool
	tookAt   core.Time // when the last partition was taken
	late     bool      // the last records taken were of a term older than one seen before
}

func newNode(w *world, name string) *node {
	P := w.cfg.Partitions
	return &node{w: w, name: name, logs: make([]plog, P), cons: make([]cpos, P), dataTerm: make([]uint64, P), followed: make([]uint64, P), intent: make([]*core.Intent, P)}
}

// clock is the node's monotonic clock: it stops while the node is
// suspended.
func (n *node) clock() core.Time { return n.w.now - core.Time(n.lag) }

func (n *node) paused() bool { return n.w.now < n.until }

// run runs fn on the node now, or once it is resumed.
func (n *node) run(fn func()) {
	if !n.up {
		return
	}
	if n.paused() {
		n.queued = append(n.queued, fn)
		return
	}
	fn()
}

// every runs fn on the node every d of its own clock, for this run.
func (n *node) every(d core.Duration, fn func()) {
	gen := n.gen
	var tick func()
	tick = func() {
		if n.gen != gen || !n.up {
			return
		}
		n.run(fn)
		n.w.after(d, tick)
	}
	n.w.after(n.w.dur(0, d), tick)
}

func (n *node) start() {
	P := n.w.cfg.Partitions
	n.up = true
	n.gen++
	n.until, n.queued, n.lag = 0, nil, 0
	n.parts = make([]part, P)
	n.fence = make([]uint64, P)
	for p := range n.fence {
		// As cluster.Node.start: the highest term this node's data or
		// the owner it followed belongs to.
		n.fence[p] = max(n.dataTerm[p], n.followed[p])
	}
	n.verified = make([]uint64, P)
	n.repl = make([]*rstate, P)
	n.blind, n.liveSeen, n.members = core.Time(minTime), nil, nil
	n.draining, n.tookAt = false, core.Time(minTime)
	ttl := n.w.cfg.TTL
	n.every(ttl/6, n.pass)
	n.every(ttl/12, n.renewDue)
	n.every(ttl/4, n.heartbeat)
	n.every(ttl/10, n.resendTick)
	n.heartbeat()
}

const minTime = -1 << 62

func (n *node) kill() {
	n.up = false
	n.gen++
	n.queued = nil
}

// pause stops the node for d: SIGSTOP, or a suspend that stops its clock
// too.
func (n *node) pause(d core.Duration, clockStops bool) {
	n.until = n.w.now + core.Time(d)
	gen := n.gen
	n.w.after(d, func() {
		if n.gen != gen {
			return
		}
		if clockStops {
			n.lag += d
		}
		q := n.queued
		n.queued = nil
		for _, fn := range q {
			if n.up && n.gen == gen {
				fn()
			}
		}
	})
}

// reconnected is the connection to NATS coming back: heartbeat at once.
func (n *node) reconnected() {
	if n.up {
		n.run(n.heartbeat)
	}
}

func (n *node) heartbeat() {
	if n.draining {
		return
	}
	n.w.kvOp(n, func() any {
		n.w.beats[n.name] = n.w.now + core.Time(n.w.cfg.TTL)
		return nil
	}, func(_ any, err error) {
		if err == errBlind {
			n.blind = n.clock()
		}
	})
}

func (n *node) replicated() bool { return n.w.cfg.Replicas != 1 }

// holds tells whether the node may count acknowledgements in term
// (cluster.Node.holds).
func (n *node) holds(p int, term uint64) bool {
	st := &n.parts[p]
	return st.mine && st.term == term && core.Holds(st.sent, n.clock(), n.w.cfg.TTL)
}

// serves tells whether the node takes publishes for p (cluster.Node.where).
func (n *node) serves(p int) bool {
	st := &n.parts[p]
	return st.mine && core.Serves(st.ready, st.sent, n.clock(), n.w.cfg.TTL)
}

func (n *node) owned() int {
	c := 0
	for p := range n.parts {
		if n.parts[p].mine || n.parts[p].taking {
			c++
		}
	}
	return c
}

type passRead struct {
	live   []string
	leases []kvEntry
	found  []bool
}

// pass is the lease pass (cluster.Node.pass).
func (n *node) pass() {
	w := n.w
	w.kvOp(n, func() any {
		r := passRead{live: w.live(), leases: make([]kvEntry, w.cfg.Partitions), found: make([]bool, w.cfg.Partitions)}
		for p := range r.leases {
			r.leases[p], r.found[p] = w.kvGet(p)
		}
		return r
	}, func(res any, err error) {
		live := []string{n.name}
		if err == errBlind {
			n.blind = n.clock()
		}
		var r passRead
		if err == nil {
			r = res.(passRead)
			live = r.live
		}
		// withGrace
		ttl := w.cfg.TTL
		if n.clock()-n.blind < core.Time(ttl+ttl/10) {
			for _, m := range n.liveSeen {
				if !slices.Contains(live, m) {
					live = append(live, m)
				}
			}
		}
		if err == nil {
			n.liveSeen = slices.Clone(live)
		}
		if err != nil {
			return
		}
		if n.replicated() && !n.draining {
			n.members = slices.Sorted(slices.Values(live))
			for p := range n.parts {
				if n.parts[p].mine {
					n.setFollowers(p)
				}
			}
		}
		share := (w.cfg.Partitions + max(len(live), 1) - 1) / max(len(live), 1)
		start := w.rng.IntN(w.cfg.Partitions)
		unsettled := false
		for i := range w.cfg.Partitions {
			p := (start + i) % w.cfg.Partitions
			unsettled = n.passOne(p, r.leases[p], r.found[p], live, share) || unsettled
		}
		if n.draining || len(live) < 2 || !n.replicated() {
			return
		}
		if !unsettled && n.clock()-n.tookAt >= core.Time(ttl) {
			n.rebalance(live, share)
		}
	})
}

// passOne decides for one partition; it reports whether the lease is of
// a dead owner.
func (n *node) passOne(p int, e kvEntry, found bool, live []string, share int) bool {
	w := n.w
	st := &n.parts[p]
	if !found {
		if st.mine {
			*st = part{}
		}
		if w.cfg.Rules.Pass(core.PassIn{Self: n.name, Draining: n.draining, Under: n.owned() < share}).Action == core.Create && !st.taking {
			n.take(p, 0, false)
		}
		return false
	}
	l := core.ParseLease(e.val, e.rev)
	st.w.Observe(e.rev, st.mine, n.clock())
	in := core.PassIn{Self: n.name, Found: true, Lease: l, Mine: st.mine, MyRev: st.w.Rev,
		Followed: n.followed[p], Held: n.dataTerm[p], Intent: n.intent[p], TTL: w.cfg.TTL, Replicated: n.replicated(), Live: live, Draining: n.draining,
		Unchanged: st.w.Unchanged(n.clock(), n.blind)}
	if rs := n.repl[p]; rs != nil {
		in.ReplTerm = rs.term
	}
	if l.Owner != n.name {
		if st.mine {
			w.tracef("%s: lease of p%d lost to %s (term %d)", n.name, p, l.Owner, l.Term)
		}
		st.mine, st.ready = false, false
		st.owner, st.term, st.listed = l.Owner, l.Term, l.Listed
		n.fence[p] = max(n.fence[p], l.Term)
	}
	in.Under = n.owned() < share
	out := w.cfg.Rules.Pass(in)
	if out.DropUnacked {
		n.dropUnacked(p, l.Term)
	}
	if out.Check {
		n.checkCopy(p, l)
	}
	if !st.taking {
		switch out.Action {
		case core.Claim:
			n.claim(p, out.Rev, out.Term, out.Keep)
		case core.Take:
			n.take(p, out.Rev, out.Keep)
		}
	}
	return out.Dead
}

// take writes a lease of p for this node (cluster.Node.take).
func (n *node) take(p int, rev uint64, keep bool) {
	w := n.w
	st := &n.parts[p]
	st.taking = true
	sent := n.clock()
	n.intent[p] = &core.Intent{Rev: rev, Keep: keep} // on disk before the lease is written
	w.kvOp(n, func() any {
		var nrev uint64
		var err error
		if rev == 0 {
			nrev, err = w.kvCreate(p, core.EncodeLease(n.name, 0, nil))
		} else {
			nrev, err = w.kvUpdate(p, core.EncodeLease(n.name, 0, nil), rev)
		}
		if err != nil {
			return uint64(0)
		}
		return nrev
	}, func(res any, err error) {
		st := &n.parts[p]
		st.taking = false
		if err != nil || res.(uint64) == 0 {
			return
		}
		nrev := res.(uint64)
		if keep {
			w.res.Takeovers++
		}
		n.tookAt = n.clock()
		w.tracef("%s takes p%d term %d keep=%v", n.name, p, nrev, keep)
		n.acquire(p, nrev, nrev, sent, keep)
	})
}

// claim takes back a lease that names this node.
func (n *node) claim(p int, rev, term uint64, keep bool) {
	w := n.w
	st := &n.parts[p]
	var listed []string
	if st.owner == n.name && st.term == term {
		listed = w.cfg.Rules.Listing(st.want, st.synced)
	}
	st.taking = true
	sent := n.clock()
	w.kvOp(n, func() any {
		nrev, err := w.kvUpdate(p, core.EncodeLease(n.name, term, listed), rev)
		if err != nil {
			return uint64(0)
		}
		return nrev
	}, func(res any, err error) {
		n.parts[p].taking = false
		if err != nil || res.(uint64) == 0 {
			return
		}
		w.tracef("%s claims p%d term %d keep=%v", n.name, p, term, keep)
		n.acquire(p, res.(uint64), term, sent, keep)
	})
}

// acquire makes a lease just written its own (cluster.Node.acquire and
// prepare).
func (n *node) acquire(p int, rev, term uint64, sent core.Time, keep bool) {
	w := n.w
	st := &n.parts[p]
	again := st.owner == n.name && st.term == term && st.synced != nil
	if again {
		st.w.Rev, st.w.Seen, st.mine, st.sent = rev, n.clock(), true, sent
	} else {
		*st = part{owner: n.name, term: term, w: core.Watch{Rev: rev, Seen: n.clock()}, mine: true, sent: sent}
		n.repl[p] = nil
	}
	n.fence[p] = max(n.fence[p], term)
	switch {
	case keep && n.dataTerm[p] != term:
		n.dataTerm[p] = term
	case n.dataTerm[p] == term:
	default:
		// History this node cannot vouch for: a new epoch.
		w.nextEpoch++
		w.tracef("%s: p%d starts epoch %d (term %d)", n.name, p, w.nextEpoch, term)
		n.logs[p] = plog{epoch: w.nextEpoch}
		n.cons[p] = cpos{epoch: w.nextEpoch}
		n.dataTerm[p] = term
	}
	n.intent[p] = nil
	n.verified[p] = term
	st.ready = true
	if n.replicated() {
		n.setFollowers(p)
	}
	w.checkHolds(n, p, "a new owner")
}

// renewDue renews the held leases due (cluster.Node.renewDue).
func (n *node) renewDue() {
	ttl := n.w.cfg.TTL
	for p := range n.parts {
		st := &n.parts[p]
		if !st.mine || st.renew || st.releasing {
			continue
		}
		l := n.w.cfg.Rules.Listing(st.want, st.synced)
		if core.RenewDue(st.sent, n.clock(), ttl, l, st.listed) {
			n.renewLease(p, st.term, st.w.Rev, l, nil)
		}
	}
}

type renewRes struct {
	rev     uint64
	current kvEntry // on a conflict: the lease as it is
	found   bool
}

// renewLease writes the lease of p again naming listed (cluster.Node.renew);
// then calls done with whether it did.
func (n *node) renewLease(p int, term, rev uint64, listed []string, done func(bool)) {
	w := n.w
	st := &n.parts[p]
	st.renew = true
	sent := n.clock()
	unsure := st.unsure
	w.kvOp(n, func() any {
		nrev, err := w.kvUpdate(p, core.EncodeLease(n.name, term, listed), rev)
		if err != nil {
			e, ok := w.kvGet(p)
			return renewRes{current: e, found: ok}
		}
		return renewRes{rev: nrev}
	}, func(res any, err error) {
		st := &n.parts[p]
		st.renew = false
		ok := false
		defer func() {
			if done != nil {
				done(ok)
			}
		}()
		if err != nil {
			if err == errBlind {
				n.blind = n.clock()
			}
			if st.unsure == 0 && st.mine && st.term == term {
				st.unsure = sent
			}
			return
		}
		r := res.(renewRes)
		if r.rev == 0 {
			if r.found && unsure != 0 && st.mine && st.term == term && st.w.Rev == rev {
				if l := core.ParseLease(r.current.val, r.current.rev); l.Owner == n.name && l.Term == term && r.current.rev > rev {
					// The renewal that went unanswered was written.
					st.w.Rev, st.w.Seen, st.sent, st.unsure = r.current.rev, n.clock(), unsure, 0
					n.renewLease(p, term, r.current.rev, listed, done)
					done = nil
					return
				}
			}
			if st.mine && st.term == term {
				w.tracef("%s: renewal of p%d refused", n.name, p)
				st.mine, st.ready = false, false
			}
			return
		}
		if st.mine && st.term == term {
			st.w.Rev, st.w.Seen, st.sent, st.listed, st.unsure = r.rev, n.clock(), sent, listed, 0
			ok = true
		}
	})
}
