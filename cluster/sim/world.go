// Package sim is a deterministic simulator of the cluster: N nodes run the
// decisions of package core (the lease pass, the take-over rules, the
// followers' term check, the followers a lease names, the acknowledgement
// rule) over a fake lease bucket and a fake network, under virtual time.
// One seed chooses everything: message delays, drops, duplicates and
// reorderings, kill -9 and restarts, drains (SIGTERM) and rebalancing,
// pauses past the lease (SIGSTOP),
// suspends (the node's clock stops too, as a suspended virtual machine's
// monotonic clock does), nodes cut off from NATS, and NATS itself down
// and back (every heartbeat expiring at once, the lease bucket kept). A
// run with the same seed replays exactly.
//
// After every acknowledgement, every take-over and at every tick the
// simulator checks the cluster's invariants (Violation lists them). A
// node's durable state (its log, the terms of its data and of the owner
// it followed) survives kill -9; everything else is lost.
//
// What the simulator models of a node: the lease pass, renewals and
// heartbeats (lease.go, lease_renew.go), drains, hand-backs and
// rebalancing (lease_handover.go), the followers, their bring-up (a copy
// of the owner's log: the agreement of the cluster reduced to "the
// follower's copy becomes the owner's") and the acknowledgements
// (repl_*.go), a durable consumer's positions (replicateConsumer,
// syncConsumers); one topic and one consumer per partition. Not modelled
// yet: idempotency keys, subscribers.
package sim

import (
	"container/heap"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/brokerd/brokerd/cluster/core"
)

// Virtual time units.
const (
	us = core.Duration(1000)
	ms = 1000 * us
)

// Config is one simulation's shape.
type Config struct {
	Seed       uint64
	Nodes      int           // 3 by default
	Partitions int           // 2 by default
	Replicas   int           // copies of each record, owner included; 2 by default
	Auto       bool          // automatic replicas (the cluster's default): two copies while another node is alive and in sync
	TTL        core.Duration // the lease TTL; 1 s by default
	Length     core.Duration // virtual time simulated; 16×TTL by default: faults in the first half, then the cluster must settle
	Rules      core.Rules    // core.Safe() unless a test turns a rule off
	Trace      bool          // keep a trace of every step (Result.Trace)
}

func (c Config) withDefaults() Config {
	if c.Nodes == 0 {
		c.Nodes = 3
	}
	if c.Partitions == 0 {
		c.Partitions = 2
	}
	if c.Replicas == 0 {
		c.Replicas = 2
	}
	if c.TTL == 0 {
		c.TTL = 1000 * ms
	}
	if c.Length == 0 {
		c.Length = 16 * c.TTL
	}
	return c
}

// Result is what a run did.
type Result struct {
	Seed      uint64
	Violation string // the first invariant broken; "" when none
	At        core.Time
	Acked     int // records acknowledged
	Takeovers int // partitions taken over keeping their history
	Faults    []string
	Trace     []string
	Steps     int
}

func (r Result) String() string {
	s := fmt.Sprintf("seed %d: %d steps, %d acked, %d take-overs, faults: %s", r.Seed, r.Steps, r.Acked, r.Takeovers, strings.Join(r.Faults, "; "))
	if r.Violation != "" {
		s += fmt.Sprintf("\nVIOLATION at %v: %s", r.At, r.Violation)
	}
	return s
}

type event struct {
	at  core.Time
	seq uint64
	fn  func()
}

type queue []*event

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	return q[i].at < q[j].at || q[i].at == q[j].at && q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *queue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// world is the simulated cluster: the nodes, NATS (the lease bucket, the
// node bucket and the network between nodes) and the clients.
type world struct {
	cfg   Config
	rng   *rand.Rand
	now   core.Time
	seq   uint64
	q     queue
	nodes []*node
	names []string

	natsUp bool
	kv     map[int]kvEntry      // the lease bucket
	kvRev  uint64               // the bucket's last revision
	beats  map[string]core.Time // the node bucket: when each entry expires

	nextVal   uint64
	nextEpoch int
	// acked: every record acknowledged to a client, per partition and
	// epoch, by offset (index offset-1; 0: none acknowledged there).
	acked []map[int][]uint64
	// consAcked: per partition, the consumer's highest position answered
	// ok, in its epoch.
	consAcked []cpos

	res Result
}

type kvEntry struct {
	val []byte
	rev uint64
}

// Run simulates one seed and returns what happened.
func Run(cfg Config) Result {
	cfg = cfg.withDefaults()
	w := &world{
		cfg:    cfg,
		rng:    rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		natsUp: true,
		kv:     map[int]kvEntry{},
		beats:  map[string]core.Time{},
	}
	w.res.Seed = cfg.Seed
	w.consAcked = make([]cpos, cfg.Partitions)
	w.acked = make([]map[int][]uint64, cfg.Partitions)
	for p := range w.acked {
		w.acked[p] = map[int][]uint64{}
	}
	for i := range cfg.Nodes {
		name := fmt.Sprintf("n%d", i+1)
		w.names = append(w.names, name)
		w.nodes = append(w.nodes, newNode(w, name))
	}
	for _, n := range w.nodes {
		n.start()
	}
	w.scheduleFaults()
	w.schedulePublishes()
	w.scheduleAcks()
	w.every(10*ms, w.checkAll)
	for len(w.q) > 0 && w.res.Violation == "" {
		e := heap.Pop(&w.q).(*event)
		if e.at > core.Time(cfg.Length) {
			break
		}
		w.now = e.at
		w.res.Steps++
		e.fn()
	}
	if w.res.Violation == "" {
		w.now = core.Time(cfg.Length)
		w.checkSettled()
	}
	return w.res
}

func (w *world) at(t core.Time, fn func()) {
	w.seq++
	heap.Push(&w.q, &event{at: max(t, w.now), seq: w.seq, fn: fn})
}

func (w *world) after(d core.Duration, fn func()) { w.at(w.now+core.Time(d), fn) }

func (w *world) every(d core.Duration, fn func()) {
	var tick func()
	tick = func() {
		fn()
		w.after(d, tick)
	}
	w.after(d, tick)
}

func (w *world) tracef(format string, args ...any) {
	if w.cfg.Trace {
		w.res.Trace = append(w.res.Trace, fmt.Sprintf("%8.3fs ", float64(w.now)/1e9)+fmt.Sprintf(format, args...))
	}
}

func (w *world) fault(format string, args ...any) {
	s := fmt.Sprintf("%.3fs ", float64(w.now)/1e9) + fmt.Sprintf(format, args...)
	w.res.Faults = append(w.res.Faults, s)
	w.tracef("FAULT %s", s)
}

func (w *world) violate(format string, args ...any) {
	if w.res.Violation == "" {
		w.res.Violation = fmt.Sprintf(format, args...)
		w.res.At = w.now
		w.tracef("VIOLATION %s", w.res.Violation)
	}
}

func (w *world) dur(lo, hi core.Duration) core.Duration {
	return lo + core.Duration(w.rng.Int64N(int64(hi-lo)+1))
}

func (w *world) node(name string) *node {
	for _, n := range w.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// reaches tells whether node n can talk to NATS now.
func (w *world) reaches(n *node) bool { return w.natsUp && n.up && !n.cut }

// send carries a message from one node to another over NATS: delayed,
// sometimes dropped, duplicated or much delayed (which reorders). It
// arrives only if both ends reach NATS when it is sent and when it
// arrives.
func (w *world) send(from, to *node, what string, fn func()) {
	if !w.reaches(from) || from.paused() {
		return
	}
	copies := 1
	switch r := w.rng.IntN(1000); {
	case r < 10:
		w.tracef("%s→%s %s dropped", from.name, to.name, what)
		return
	case r < 20:
		copies = 2
	}
	for range copies {
		d := w.dur(100*us, 3*ms)
		if w.rng.IntN(200) == 0 {
			d = w.dur(10*ms, w.cfg.TTL) // a straggler
		}
		gen := to.gen
		w.after(d, func() {
			if !w.reaches(to) || to.gen != gen {
				return
			}
			to.run(fn)
		})
	}
}

// kvOp runs op in the lease or node bucket for node n: it reaches NATS
// after a delay, runs there at once, and its answer comes back after
// another, unless NATS or the node is away meanwhile or the answer is
// lost; then the node sees a timeout (blind: it could not reach NATS at
// all) after a third of the TTL.
func (w *world) kvOp(n *node, op func() any, reply func(res any, err error)) {
	gen := n.gen
	sent := w.now
	timeout := func(blind bool) {
		w.at(sent+core.Time(w.cfg.TTL/3), func() {
			if n.gen == gen {
				n.run(func() {
					if blind {
						reply(nil, errBlind)
					} else {
						reply(nil, errTimeout)
					}
				})
			}
		})
	}
	if !w.reaches(n) {
		timeout(true)
		return
	}
	w.after(w.dur(100*us, 2*ms), func() {
		if !w.reaches(n) || n.gen != gen {
			timeout(true)
			return
		}
		res := op()
		if w.rng.IntN(500) == 0 {
			timeout(false) // the answer is lost
			return
		}
		w.after(w.dur(100*us, 2*ms), func() {
			if n.gen != gen {
				return
			}
			if !w.reaches(n) {
				timeout(true)
				return
			}
			n.run(func() { reply(res, nil) })
		})
	})
}

type simErr string

func (e simErr) Error() string { return string(e) }

const (
	errBlind    = simErr("cannot reach NATS")
	errTimeout  = simErr("timeout")
	errConflict = simErr("wrong last sequence")
)

// kvGet, kvCreate and kvUpdate are the lease bucket's operations.
func (w *world) kvGet(p int) (kvEntry, bool) {
	e, ok := w.kv[p]
	return e, ok
}

func (w *world) kvCreate(p int, val []byte) (uint64, error) {
	if _, ok := w.kv[p]; ok {
		return 0, errConflict
	}
	w.kvRev++
	w.kv[p] = kvEntry{val: val, rev: w.kvRev}
	return w.kvRev, nil
}

func (w *world) kvUpdate(p int, val []byte, rev uint64) (uint64, error) {
	if e, ok := w.kv[p]; !ok || e.rev != rev {
		return 0, errConflict
	}
	w.kvRev++
	w.kv[p] = kvEntry{val: val, rev: w.kvRev}
	return w.kvRev, nil
}

// live lists the nodes whose heartbeat has not expired.
func (w *world) live() []string {
	var out []string
	for _, name := range w.names {
		if exp, ok := w.beats[name]; ok && w.now < exp {
			out = append(out, name)
		}
	}
	return out
}

// lease returns partition p's lease as stored now.
func (w *world) lease(p int) (core.Lease, bool) {
	e, ok := w.kv[p]
	if !ok {
		return core.Lease{}, false
	}
	return core.ParseLease(e.val, e.rev), true
}

// scheduleFaults draws the run's faults from the seed: a few of them, at
// random moments of its first half; every fault is over 3×TTL later, and
// the cluster must have settled by the end (checkSettled).
func (w *world) scheduleFaults() {
	k := 1 + w.rng.IntN(5)
	end := core.Duration(w.cfg.Length) / 2
	ttl := w.cfg.TTL
	for range k {
		t := core.Time(w.dur(ttl, end))
		n := w.nodes[w.rng.IntN(len(w.nodes))]
		long := w.dur(ttl/2, 3*ttl)
		switch w.rng.IntN(7) {
		case 0, 1:
			w.at(t, func() {
				if !n.up {
					return
				}
				w.fault("kill -9 %s", n.name)
				n.kill()
				w.after(long, func() { w.fault("restart %s", n.name); n.start() })
			})
		case 2:
			w.at(t, func() {
				if !n.up || n.paused() {
					return
				}
				w.fault("SIGSTOP %s for %v", n.name, long)
				n.pause(long, false)
			})
		case 3:
			w.at(t, func() {
				if !n.up || n.paused() {
					return
				}
				w.fault("suspend %s for %v (its clock stops)", n.name, long)
				n.pause(long, true)
			})
		case 4:
			w.at(t, func() {
				if n.cut {
					return
				}
				w.fault("%s cut off from NATS for %v", n.name, long)
				n.cut = true
				w.after(long, func() { w.fault("%s reaches NATS again", n.name); n.cut = false; n.reconnected() })
			})
		case 6:
			w.at(t, func() {
				if !n.up || n.paused() || n.draining {
					return
				}
				w.fault("SIGTERM %s (drain), restart after %v", n.name, long)
				n.drain(func() {
					w.tracef("%s drained", n.name)
					n.kill()
					w.after(long, func() { w.fault("restart %s", n.name); n.start() })
				})
			})
		case 5:
			w.at(t, func() {
				if !w.natsUp {
					return
				}
				w.fault("NATS down for %v", long)
				w.natsUp = false
				w.after(long, func() {
					w.fault("NATS back")
					w.natsUp = true
					for _, n := range w.nodes {
						n.reconnected()
					}
				})
			})
		}
	}
}

// schedulePublishes makes clients publish now and then to each
// partition, through a node that believes it serves it (a node paused or
// suspended included: its clients wait for it).
func (w *world) schedulePublishes() {
	w.every(7*ms, func() {
		p := w.rng.IntN(w.cfg.Partitions)
		var to []*node
		for _, n := range w.nodes {
			if n.up && n.serves(p) {
				to = append(to, n)
			}
		}
		if len(to) == 0 {
			return
		}
		n := to[w.rng.IntN(len(to))]
		w.nextVal++
		v := w.nextVal
		n.run(func() { n.publish(p, v) })
	})
}

// recordAck notes a record acknowledged to its client, checking that no
// other record was acknowledged at its place.
func (w *world) recordAck(p int, term uint64, epoch int, off, val uint64, by string) {
	w.res.Acked++
	a := w.acked[p][epoch]
	for uint64(len(a)) < off {
		a = append(a, 0)
	}
	w.acked[p][epoch] = a
	if old := a[off-1]; old != 0 && old != val {
		w.violate("partition %d: %s acknowledged record %d at epoch %d offset %d, where record %d was acknowledged before", p, by, val, epoch, off, old)
		return
	}
	a[off-1] = val
	w.tracef("%s acked p%d e%d #%d = %d (term %d)", by, p, epoch, off, val, term)
}

// checkAll checks the invariants over the whole cluster.
func (w *world) checkAll() {
	for p := range w.cfg.Partitions {
		l, ok := w.lease(p)
		if !ok {
			continue
		}
		for _, n := range w.nodes {
			if !n.up {
				continue
			}
			st := &n.parts[p]
			if st.mine && st.ready && st.term == l.Term {
				w.checkHolds(n, p, "the owner")
			}
		}
		// The followers the lease names hold every acknowledged record
		// (those that followed its term: a node named in an old lease
		// that followed a later owner since is not one of them).
		for _, f := range l.Listed {
			n := w.node(f)
			if n != nil && n.followed[p] == l.Term && n.verified[p] == l.Term {
				w.checkHolds(n, p, "a follower named in the lease")
			}
		}
	}
}

// checkHolds checks that node n's log of p holds every acknowledged
// record, in its epoch and at its offset.
func (w *world) checkHolds(n *node, p int, who string) {
	w.checkConsumer(n, p, who)
	lg := &n.logs[p]
	for _, epoch := range slices.Sorted(maps.Keys(w.acked[p])) {
		a := w.acked[p][epoch]
		for i, v := range a {
			off := uint64(i + 1)
			switch {
			case v == 0:
			case epoch != lg.epoch:
				w.violate("partition %d: %s %s is in epoch %d, but record %d was acknowledged at epoch %d offset %d: the history was lost", p, who, n.name, lg.epoch, v, epoch, off)
				return
			case off > uint64(len(lg.recs)):
				w.violate("partition %d: %s %s holds %d records, but record %d was acknowledged at offset %d", p, who, n.name, len(lg.recs), v, off)
				return
			case lg.recs[off-1].val != v:
				w.violate("partition %d: %s %s holds record %d at offset %d, where record %d was acknowledged", p, who, n.name, lg.recs[off-1].val, off, v)
				return
			}
		}
	}
}

// checkSettled checks, at the end of a run, that the cluster came back
// from its faults: every partition is served by the owner its lease
// names. A partition nobody may take (its holders lost the proof that
// they hold its history) is a violation too: it would stay unavailable
// for good.
func (w *world) checkSettled() {
	for p := range w.cfg.Partitions {
		l, ok := w.lease(p)
		if !ok {
			w.violate("partition %d: no lease at the end", p)
			return
		}
		o := w.node(l.Owner)
		if l.Free || o == nil || !o.up || !o.parts[p].mine || !o.parts[p].ready || o.parts[p].term != l.Term {
			w.violate("partition %d: not served at the end, %v after the last fault (lease %q term %d, listed %v)", p,
				core.Duration(w.cfg.Length)/2, l.Holder(), l.Term, l.Listed)
			return
		}
	}
}
