package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/brokerd/brokerd/broker"
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
}

// A lease value is "<node> <term>", followed with replication by
// " <follower>,<follower>…": the followers that hold every record
// acknowledged in that term (see repl.go). A term of 0 means "the revision
// of this entry": the value written when a lease is taken, before its
// revision is known. A node "~<node>" marks a lease that node handed back
// (with replication, instead of deleting it, so that a follower named in
// it keeps the history): it is free.
func leaseValue(node string, term uint64, listed []string) []byte {
	v := node + " " + strconv.FormatUint(term, 10)
	if len(listed) > 0 {
		v += " " + strings.Join(listed, ",")
	}
	return []byte(v)
}

// freeMark starts the owner of a lease handed back; it is not a name
// character.
const freeMark = "~"

func parseLease(e jetstream.KeyValueEntry) (owner string, term uint64, listed []string) {
	f := strings.Fields(string(e.Value()))
	if len(f) > 0 {
		owner = f[0]
	}
	if len(f) > 1 {
		term, _ = strconv.ParseUint(f[1], 10, 64)
	}
	if len(f) > 2 {
		listed = strings.Split(f[2], ",")
	}
	if term == 0 {
		term = e.Revision()
	}
	return owner, term, listed
}

func leaseKey(p int) string { return "p" + strconv.Itoa(p) }

// leaseLoop keeps the leases: it renews this node's, takes free and stale
// ones while the node holds less than its share, and releases what is
// over its share.
func (n *Node) leaseLoop() {
	defer n.wg.Done()
	tick := time.NewTicker(n.cfg.LeaseTTL / 6)
	defer tick.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-tick.C:
		case <-n.kick:
		}
		n.pass()
	}
}

// poke asks the lease loop for an early pass.
func (n *Node) poke() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

func (n *Node) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), n.cfg.LeaseTTL/3)
}

// pass runs one round over every partition. Passes and Drain are
// serialised by passMu.
func (n *Node) pass() {
	n.passMu.Lock()
	defer n.passMu.Unlock()
	if n.closed.Load() {
		return
	}
	draining := n.draining.Load()
	if !draining {
		ctx, cancel := n.opCtx()
		if _, err := n.nodes.Put(ctx, n.cfg.Node, []byte(strconv.Itoa(n.cfg.Partitions))); err != nil {
			n.log.Warn("cluster: heartbeat", "err", err)
		}
		cancel()
	}
	live, liveOK := n.liveNodesOK()
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
	unsettled := false // a lease of a dead owner was seen
	for i := range n.cfg.Partitions {
		if n.closed.Load() {
			return
		}
		// Taking partitions can take long (a new term resets local
		// topics): keep the leases already held alive meanwhile.
		n.renewDue()
		p := (start + i) % n.cfg.Partitions
		key := leaseKey(p)
		ctx, cancel := n.opCtx()
		e, err := n.leases.Get(ctx, key)
		cancel()
		now := time.Now()
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			n.mu.Lock()
			st := &n.parts[p]
			if st.mine {
				n.log.Warn("cluster: lease vanished", "partition", p)
			}
			*st = part{}
			n.mu.Unlock()
			if !draining && n.owned() < share {
				n.take(p, 0, false)
			}
			continue
		}
		if err != nil {
			n.log.Warn("cluster: reading lease", "partition", p, "err", err)
			continue
		}
		owner, term, listed := parseLease(e)
		prev, free := strings.CutPrefix(owner, freeMark)
		if free {
			owner = ""
		}
		followed, held := n.followed(p), n.dataTerm(p)
		n.mu.Lock()
		st := &n.parts[p]
		if e.Revision() != st.rev {
			st.rev, st.seen = e.Revision(), now
		}
		mine, sent := st.mine, st.sent
		if owner != n.cfg.Node {
			if st.mine {
				n.log.Warn("cluster: lease lost", "partition", p, "to", owner)
			}
			st.mine, st.ready = false, false
			st.owner, st.term, st.listed = owner, term, listed
			n.fence[p] = max(n.fence[p], term)
		}
		stale := free || now.Sub(st.seen) >= ttl+ttl/10
		waited := now.Sub(st.seen) >= 2*ttl+ttl/10
		n.mu.Unlock()
		if t, ok := replTerms[p]; ok && t < term && owner != "" && owner != n.cfg.Node {
			n.dropUnacked(p, term)
		}
		if n.cfg.replicated() && owner != "" && owner != n.cfg.Node && term > max(followed, held) &&
			!slices.Contains(listed, n.cfg.Node) && n.checked[p].Swap(term) != term {
			check = append(check, p)
		}
		switch {
		case owner == n.cfg.Node && mine && e.Revision() == n.partRev(p):
			if now.Sub(sent) >= ttl/3 {
				n.mu.Lock()
				l := n.parts[p].listing()
				n.mu.Unlock()
				n.renew(p, term, e.Revision(), l)
			}
		case owner == n.cfg.Node:
			// Written by an earlier run of this node (or a renewal whose
			// answer was lost): nobody took it since, so it is ours.
			if !draining {
				n.claim(p, e.Revision(), term)
			}
		case stale && !draining:
			c := takeCase{free: free, prev: prev, listed: listed, waited: waited, under: n.owned() < share}
			if n.cfg.replicated() {
				c.keep = slices.Contains(listed, n.cfg.Node) && followed == term ||
					free && prev == n.cfg.Node && held == term
			}
			if take, keep := c.decide(n.cfg.Node, live); take && n.take(p, e.Revision(), keep) {
				n.tookAt = time.Now()
			}
		}
		if stale && !free && owner != n.cfg.Node {
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

// takeCase is what a lease pass knows of a stale or handed-back lease
// when deciding whether this node takes it.
type takeCase struct {
	free   bool     // handed back by prev, which is perhaps alive
	prev   string   // free: the node that handed it back
	listed []string // the followers that hold every acknowledged record
	keep   bool     // this node holds every acknowledged record: a listed follower that followed the term, or prev with its own data
	waited bool     // the lease has not changed for 2×LeaseTTL: nobody better took it
	under  bool     // this node holds less than its share
}

// decide tells whether to take the lease, and whether with the local
// data (keep) or in new epochs. Without replication nothing is listed
// and a node takes a lease within its share. With replication the
// history must not be lost while a node holding it is alive:
//
//   - a holder takes the partition of a dead owner at once, even past
//     its share (it hands the excess back later);
//   - a holder takes a handed-back partition within its share, or when
//     prev died, or when nobody took it for a while;
//   - any other node takes a lease only within its share and only when
//     no holder is alive, or when it is listed but lost its copy (a
//     wiped data directory) and nobody else took it for a while: then
//     the history is gone and a new epoch is the truth.
func (c takeCase) decide(self string, live []string) (take, keep bool) {
	if c.keep {
		if !c.free {
			return true, true
		}
		return c.under || !slices.Contains(live, c.prev) || c.waited, true
	}
	holderLive := c.free && c.prev != self && slices.Contains(live, c.prev)
	for _, h := range c.listed {
		holderLive = holderLive || h != self && slices.Contains(live, h)
	}
	listedMe := slices.Contains(c.listed, self)
	return c.under && (!holderLive || listedMe && c.waited && !c.free), false
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
	out, _ := n.liveNodesOK()
	return out
}

// liveNodesOK is liveNodes, telling whether the list could be read (else
// it is this node alone).
func (n *Node) liveNodesOK() ([]string, bool) {
	ctx, cancel := n.opCtx()
	defer cancel()
	kl, err := n.nodes.ListKeys(ctx)
	if err != nil {
		return []string{n.cfg.Node}, false
	}
	defer func() { _ = kl.Stop() }()
	var out []string
	for k := range kl.Keys() {
		out = append(out, k)
	}
	return out, true
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
	nrev, err := n.leases.Update(ctx, leaseKey(p), leaseValue(n.cfg.Node, term, listed), rev)
	if err != nil {
		return
	}
	n.acquire(p, nrev, term, sent, false)
}

// renewDue renews every held lease whose last renewal is a third of the
// TTL old, or whose followers to name have changed.
func (n *Node) renewDue() {
	type due struct {
		p         int
		term, rev uint64
		listed    []string
	}
	var list []due
	n.mu.Lock()
	for p := range n.parts {
		st := &n.parts[p]
		if !st.mine {
			continue
		}
		l := st.listing()
		if time.Since(st.sent) >= n.cfg.LeaseTTL/3 || !slices.Equal(l, st.listed) {
			list = append(list, due{p, st.term, st.rev, l})
		}
	}
	n.mu.Unlock()
	for _, d := range list {
		n.renew(d.p, d.term, d.rev, d.listed)
	}
}

// listing returns the followers the lease of a held partition names: those
// of want brought up to date. Called with Node.mu held.
func (st *part) listing() []string {
	var l []string
	for _, f := range st.want {
		if st.synced[f] {
			l = append(l, f)
		}
	}
	slices.Sort(l)
	return l
}

// renew writes the lease of p again, naming listed as its followers, and
// reports whether that succeeded.
func (n *Node) renew(p int, term, rev uint64, listed []string) bool {
	ctx, cancel := n.opCtx()
	defer cancel()
	sent := time.Now()
	nrev, err := n.leases.Update(ctx, leaseKey(p), leaseValue(n.cfg.Node, term, listed), rev)
	n.mu.Lock()
	defer n.mu.Unlock()
	st := &n.parts[p]
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) {
			// Somebody else wrote the lease: stop serving at once; the
			// next pass sees who holds it.
			st.mine, st.ready = false, false
		}
		n.log.Warn("cluster: renewing lease", "partition", p, "err", err)
		return false
	}
	if st.mine && st.term == term {
		st.rev, st.seen, st.sent, st.listed = nrev, time.Now(), sent, listed
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
// for local appends in flight, and deletes their leases so that another
// node takes them at once.
func (n *Node) release(ps []int) {
	if len(ps) == 0 {
		return
	}
	n.mu.Lock()
	revs := make([]uint64, len(ps))
	tms := make([]uint64, len(ps))
	listed := make([][]string, len(ps))
	for i, p := range ps {
		n.parts[p].ready = false
		revs[i], tms[i], listed[i] = n.parts[p].rev, n.parts[p].term, n.parts[p].listed
	}
	n.mu.Unlock()
	// Let the writes already taken finish, and their copies be confirmed:
	// once handed over, they would be answered unavailable.
	for deadline := time.Now().Add(n.cfg.LeaseTTL / 3); (n.inflight.Load() > 0 || n.unacked(ps)) && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
	}
	for i, p := range ps {
		ctx, cancel := n.opCtx()
		var err error
		if len(listed[i]) > 0 {
			// Handed back naming the followers, which hold the history.
			_, err = n.leases.Update(ctx, leaseKey(p), leaseValue(freeMark+n.cfg.Node, tms[i], listed[i]), revs[i])
		} else {
			err = n.leases.Delete(ctx, leaseKey(p), jetstream.LastRevision(revs[i]))
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
