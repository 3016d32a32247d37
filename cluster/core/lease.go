package core

import (
	"slices"
	"strconv"
	"strings"
)

// Time is a moment on the caller's clock, in nanoseconds; Duration is a
// span of it. The core never reads a clock: the cluster passes its
// monotonic wall clock, the simulator its virtual one.
type (
	Time     int64
	Duration int64
)

// Lease is a partition's lease as stored in the lease bucket.
//
// A lease value is "<node> <term>", followed with replication by
// " <follower>,<follower>…": the followers that hold every record
// acknowledged in that term. A term of 0 means "the revision of this
// entry": the value written when a lease is taken, before its revision is
// known. A node "~<node>" marks a lease that node handed back (with
// replication, instead of deleting it, so that a follower named in it
// keeps the history): it is free.
type Lease struct {
	Owner  string   // the holder; "" when handed back (Free)
	Term   uint64   // the holder's term: the revision that created its lease
	Listed []string // the followers that hold every acknowledged record of Term
	Free   bool     // handed back by Prev
	Prev   string   // Free: the node that handed it back
	Rev    uint64   // the entry's revision
}

// FreeMark starts the owner of a lease handed back; it is not a name
// character.
const FreeMark = "~"

// Holder returns the node that held the lease last: its owner, or the
// node that handed it back.
func (l Lease) Holder() string {
	if l.Free {
		return l.Prev
	}
	return l.Owner
}

// EncodeLease returns the value of a lease held by node in term (0: the
// revision the write gets) naming listed; a node starting with FreeMark
// hands it back.
func EncodeLease(node string, term uint64, listed []string) []byte {
	v := node + " " + strconv.FormatUint(term, 10)
	if len(listed) > 0 {
		v += " " + strings.Join(listed, ",")
	}
	return []byte(v)
}

// ParseLease reads a lease value stored at revision rev.
func ParseLease(value []byte, rev uint64) Lease {
	var l Lease
	f := strings.Fields(string(value))
	if len(f) > 0 {
		l.Owner = f[0]
	}
	if len(f) > 1 {
		l.Term, _ = strconv.ParseUint(f[1], 10, 64)
	}
	if len(f) > 2 {
		l.Listed = strings.Split(f[2], ",")
	}
	if l.Term == 0 {
		l.Term = rev
	}
	l.Rev = rev
	if prev, free := strings.CutPrefix(l.Owner, FreeMark); free {
		l.Owner, l.Free, l.Prev = "", true, prev
	}
	return l
}

// Watch tells how long a lease has gone unchanged as one node saw it. A
// lease is stale once its revision has not changed for a TTL that the node
// watched: time the node could not see the bucket (NATS away, JetStream
// not answering) does not count, or every lease would look stale when
// NATS comes back, before any owner had a chance to renew.
type Watch struct {
	Rev  uint64 // the revision as last seen (the node's own last write when it holds the lease)
	Seen Time   // when Rev was first seen
}

// Observe records that the lease was read at revision rev at now. mine:
// the node holds the lease and Rev is its own last write, which a read
// that raced the write may not show yet.
func (w *Watch) Observe(rev uint64, mine bool, now Time) {
	if rev != w.Rev && !(mine && rev < w.Rev) {
		w.Rev, w.Seen = rev, now
	}
}

// Unchanged returns for how long the lease has not changed, counting only
// time since the node last could not see the bucket (blind; 0: never).
func (w Watch) Unchanged(now, blind Time) Duration {
	return Duration(now - max(w.Seen, blind))
}

// Stale tells whether a lease unchanged for that long may be taken over:
// a tenth of the TTL past it, for the clocks' rates.
func Stale(unchanged, ttl Duration) bool { return unchanged >= ttl+ttl/10 }

// Waited tells whether nobody better took a stale lease for a while.
func Waited(unchanged, ttl Duration) bool { return unchanged >= 2*ttl+ttl/10 }

// TakeCase is what a lease pass knows of a stale or handed-back lease
// when deciding whether this node takes it.
type TakeCase struct {
	Free       bool     // handed back by Prev, which is perhaps alive
	Prev       string   // Free: the node that handed it back
	Owner      string   // not Free: the owner whose lease went stale
	Listed     []string // the followers that hold every acknowledged record
	Keep       bool     // this node holds every acknowledged record: a listed follower that followed the term, or Prev with its own data
	Waited     bool     // the lease has not changed for 2×TTL: nobody better took it
	Under      bool     // this node holds less than its share
	Replicated bool     // records are copied to followers (Replicas ≠ 1)
	Unclean    bool     // Replicated: the lease has not changed for the unclean-takeover delay (set only when that is on)
}

// Decide tells whether to take the lease, and whether with the local
// data (keep) or in new epochs.
//
// Without replication a topic's log lives only on its owner and nothing
// is listed: a node takes a stale lease within its share, starting its
// topics in a new epoch (documented: any move of a partition costs its
// history), and a handed-back one unless Prev, alive, takes it back.
//
// With replication the holders of a partition's history are the lease's
// owner (or Prev, when handed back) and its listed followers: durable
// facts, written in the lease, not heartbeats, which all expire together
// when NATS itself is away. Only a holder takes the partition:
//
//   - a holder takes the partition of a stale owner at once, even past
//     its share (it hands the excess back later);
//   - a holder takes a handed-back partition within its share, or when
//     Prev died, or when nobody took it for a while;
//   - a node that holds no copy never takes it, however long the holders
//     are away: the partition is unavailable until one comes back (like
//     Kafka without unclean leader election), unless the operator allowed
//     an unclean takeover and the lease has not changed for that long:
//     then, within its share, it takes it and the topics start a new
//     epoch.
func (r Rules) Decide(c TakeCase, self string, live []string) (take, keep bool) {
	if c.Keep {
		if !c.Free {
			return true, true
		}
		return c.Under || !slices.Contains(live, c.Prev) || c.Waited, true
	}
	if c.Replicated {
		if !r.On(HolderOnly) {
			// What the cluster once did: a node under its share takes
			// the partition when no holder of its history is alive.
			for _, h := range append([]string{c.Owner, c.Prev}, c.Listed...) {
				if h != "" && h != self && slices.Contains(live, h) {
					return false, false
				}
			}
			return c.Under, false
		}
		return c.Under && c.Unclean, false
	}
	prevLive := c.Free && c.Prev != self && slices.Contains(live, c.Prev)
	return c.Under && !prevLive, false
}

// Action is what a lease pass does with one partition's lease.
type Action int

const (
	None   Action = iota
	Create        // the partition has no lease: create it (a fresh term, new epochs)
	Claim         // the lease names this node: write it again under its term
	Take          // the lease is stale or handed back: replace it (PassOut.Keep: with the local data)
)

// PassIn is what a lease pass knows of one partition.
type PassIn struct {
	Self       string
	Found      bool  // the lease exists (else: nothing else of Lease is set)
	Lease      Lease // as read now
	Mine       bool  // this node holds the lease in its own view
	MyRev      uint64
	Followed   uint64   // the term of the owner whose records this node last accepted for the partition
	Held       uint64   // the term the local data belongs to as owner
	Intent     *Intent  // the take of the partition this node last set out to do, when its data was not made ready for it since
	ReplTerm   uint64   // the term of this node's replication state for the partition (0: none)
	Unchanged  Duration // how long the lease has not changed (Watch.Unchanged)
	TTL        Duration
	Unclean    Duration // the unclean-takeover delay; 0: off
	Draining   bool
	Under      bool // this node holds less than its share
	Replicated bool
	Live       []string // the live nodes, as this pass decides with them
}

// Intent is a take of a partition a node records on disk before it
// writes the lease, and forgets once its data is ready for the new term.
// A lease naming the node in a term its data is not ready for is then
// known to be its own take whose answer was lost, or that a crash or a
// drain cut short: the node never served that term, so its data is what
// it was when it took the lease, and it takes it up again the way it set
// out to (Keep: with its data; else in new epochs). Without the record
// such a lease would name a holder that does not know it holds it, and
// the partition would wait for good.
type Intent struct {
	Rev  uint64 // the revision the take was written against (0: a create)
	Keep bool   // with the local data
}

// of tells whether the lease l is the take the intent recorded: written
// by the node after revision Rev.
func (i *Intent) of(l Lease) bool { return i != nil && l.Term > i.Rev }

// intent returns in's intent, unless the TakeIntent rule is off.
func (r Rules) intent(in PassIn) *Intent {
	if !r.On(TakeIntent) {
		return nil
	}
	return in.Intent
}

// PassOut is what to do with one partition.
type PassOut struct {
	Action Action
	Keep   bool   // Take, Claim: with the local data and its epochs (Claim without Keep: the data is the term's already, or starts new epochs)
	Term   uint64 // Claim: the term to claim under
	Rev    uint64 // Claim, Take: the revision to write against (0 with Create)

	Lost        bool // the node held the lease, and somebody else does now
	DropUnacked bool // an owner of a later term holds it: cut the topics this node replicated back to what it had acknowledged
	Check       bool // the local copies are of an earlier term than the owner's, and the lease does not name this node: ask the owner to check them
	Waiting     bool // stale, and this node may not take it: the partition waits for a holder
	Unclean     bool // Take without a holder's data, allowed by the unclean delay
	Stale       bool // the lease is stale or free
	Dead        bool // the lease is of an owner that stopped renewing it (stale, not handed back)
}

// Pass decides what a lease pass does with one partition.
func (r Rules) Pass(in PassIn) PassOut {
	var out PassOut
	if !in.Found {
		if !in.Draining && in.Under {
			out.Action = Create
		}
		return out
	}
	l := in.Lease
	other := l.Owner != "" && l.Owner != in.Self
	out.Lost = in.Mine && l.Owner != in.Self
	out.Stale = l.Free || Stale(in.Unchanged, in.TTL)
	out.Dead = out.Stale && !l.Free && l.Owner != in.Self
	out.DropUnacked = in.ReplTerm != 0 && in.ReplTerm < l.Term && other
	out.Check = in.Replicated && other && l.Term > max(in.Followed, in.Held) && !slices.Contains(l.Listed, in.Self)
	switch {
	case l.Owner == in.Self && in.Mine:
		// A revision past the one this node wrote last is a renewal
		// whose answer was lost: take it.
		if l.Rev > in.MyRev && !in.Draining {
			out.Action, out.Term, out.Rev = Claim, l.Term, l.Rev
		}
	case l.Owner == in.Self && (!in.Replicated || in.Held == l.Term):
		// Written by an earlier run of this node (or a renewal whose
		// answer was lost), and its data is of that term: nobody took
		// it since, so it is ours.
		if !in.Draining {
			out.Action, out.Term, out.Rev = Claim, l.Term, l.Rev
		}
	case l.Owner == in.Self && r.intent(in).of(l):
		// This node's own take, whose answer was lost or whose data a
		// crash kept from being made ready: take it up as it set out to.
		if !in.Draining {
			out.Action, out.Term, out.Rev, out.Keep = Claim, l.Term, l.Rev, in.Intent.Keep
		}
	case out.Stale && !in.Draining:
		c := TakeCase{Free: l.Free, Prev: l.Prev, Owner: l.Owner, Listed: l.Listed,
			Waited: Waited(in.Unchanged, in.TTL), Under: in.Under, Replicated: in.Replicated}
		intent := l.Free && l.Prev == in.Self && in.Held != l.Term && r.intent(in).of(l)
		if in.Replicated {
			c.Keep = slices.Contains(l.Listed, in.Self) && in.Followed == l.Term ||
				l.Free && l.Prev == in.Self && in.Held == l.Term || intent
			c.Unclean = in.Unclean > 0 && in.Unchanged >= in.Unclean
		}
		take, keep := r.Decide(c, in.Self, in.Live)
		if intent && take {
			// Handed back before its data was made ready (a drain cut
			// the take short): taken up the way it was set out.
			keep = in.Intent.Keep
		}
		if take {
			out.Action, out.Keep, out.Rev = Take, keep, l.Rev
			out.Unclean = !keep && in.Replicated && !intent
		} else if !c.Keep && in.Replicated {
			out.Waiting = true
		}
	}
	return out
}

// Holds tells whether a node whose last successful write of a lease was
// sent at sent may still count acknowledgements under it: for one TTL from
// then, by its own clock. Others judge the lease stale only after watching
// it unchanged for TTL+TTL/10 from when they saw that write, so the holder
// stops first.
func Holds(sent, now Time, ttl Duration) bool { return Duration(now-sent) < ttl }

// Serves tells whether the holder takes requests: ready, and with a tenth
// of the TTL to spare, so that a request taken finishes under the lease.
func Serves(ready bool, sent, now Time, ttl Duration) bool {
	return ready && Duration(now-sent) < ttl-ttl/10
}

// RenewDue tells whether a held lease is renewed now: a third of its TTL
// after its last write (leaving two more chances before it lapses), or at
// once when the followers it should name changed.
func RenewDue(sent, now Time, ttl Duration, listing, listed []string) bool {
	return Duration(now-sent) >= ttl/3 || !slices.Equal(listing, listed)
}
