package cluster

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/brokerd/brokerd/cluster/core"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

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

// liveNodes lists the nodes whose heartbeat has not expired.
func (n *Node) liveNodes() []string {
	out, _ := n.liveNodesErr()
	return out
}

// liveNodesErr is liveNodes, with the error that kept the list from being
// read (it is then this node alone). The list is one answer of the server,
// from one state of the node bucket's stream: the subjects that hold a
// heartbeat. (A key lister's consumer, cut short by the deadline on a busy
// machine, would end early and pass part of the nodes off as all of them:
// the others would then be dropped as followers.)
func (n *Node) liveNodesErr() ([]string, error) {
	ctx, cancel := n.opCtx()
	defer cancel()
	info, err := n.nodeStream.Info(ctx, jetstream.WithSubjectFilter(n.nodeSubj+">"))
	if err != nil {
		return []string{n.cfg.Node}, err
	}
	out := make([]string, 0, len(info.State.Subjects))
	for s := range info.State.Subjects {
		if name, ok := strings.CutPrefix(s, n.nodeSubj); ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
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
	var last time.Time // the last heartbeat written
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
		if err != nil {
			last = time.Time{} // said already
			return
		}
		// Written every quarter of the TTL: a gap of most of the TTL
		// means this node was starved of CPU (or NATS was slow), and the
		// others may have taken it for dead meanwhile.
		now := time.Now()
		if gap := now.Sub(last); !last.IsZero() && gap > n.cfg.LeaseTTL*3/4 {
			n.log.Warn("cluster: heartbeat late: the other nodes may have counted this node as gone",
				"since_last", gap.Round(time.Millisecond), "ttl", n.cfg.LeaseTTL)
		}
		last = now
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
		if core.RenewDue(ct(st.sent), ct(time.Now()), core.Duration(n.cfg.LeaseTTL), l, st.listed) {
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
