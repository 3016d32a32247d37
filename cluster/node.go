package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster/core"
	"github.com/brokerd/brokerd/store"
)

var (
	_ broker.Store      = (*Node)(nil)
	_ broker.Interested = (*Node)(nil)
)

// ErrUnavailable is returned when a topic's partition has no reachable
// owner within the request timeout, or its owner lost the lease while a
// write was in flight. It wraps broker.ErrUnavailable, which the broker answers
// with the wire code unavailable.
var ErrUnavailable = fmt.Errorf("cluster: no owner reachable for the topic: %w", broker.ErrUnavailable)

// Node is one broker node of a cluster over NATS. It is the broker.Store
// of its broker: it serves the topics of the partitions it owns from its
// local store, forwards everything else to their owners, and delivers the
// live records of other owners to the broker's commit hook for the topics
// and patterns its subscribers want (broker.Interested).
//
// Lock order (outer first): passMu → followMu → rmu → mu; passMu → tmu;
// followMu → tmu; passMu → renewMu → mu. imu,
// pmu, hookMu and mu are leaves; with rmu held nothing waits but for room
// in replDel. The broker's commit hook runs with hookMu held and
// nothing else; hookMu is never taken by a method the broker calls.
type Node struct {
	cfg     Config
	log     *slog.Logger
	local   *store.DB
	eph     atomic.Pointer[ephemeral] // HostEphemeral; nil without ephemeral policies
	nc      *nats.Conn
	ownConn bool
	// ctl is the control connection, this node's own: the lease and node
	// buckets only, so that a renewal or a heartbeat never waits in the
	// data connection's buffers behind live records and replication.
	ctl    *nats.Conn
	leases jetstream.KeyValue
	nodes  jetstream.KeyValue
	// nodeStream is the node bucket's stream, nodeSubj the prefix of its
	// keys' subjects ("$KV.<bucket>.").
	nodeStream jetstream.Stream
	nodeSubj   string
	prefix     string // "brokerd.<cluster>."
	termsPath  string

	passMu   sync.Mutex // serialises lease passes and Drain
	tookAt   time.Time  // guarded by passMu: when the last partition was taken
	liveSeen []string   // guarded by passMu: the live nodes of the last pass that could read them (withGrace)

	renewMu sync.Mutex    // held while writing a lease this node holds: renewals, claims, hand-overs
	blind   atomic.Int64  // unix nanoseconds: when this node last could not see the buckets (markBlind)
	waiting []atomic.Bool // per partition: a stale lease this node may not take was reported (logged once)

	mu      sync.Mutex
	parts   []part          // guarded by mu
	fence   []uint64        // guarded by mu: per partition, the highest term seen; a follower refuses records of a lower one
	checked []atomic.Uint64 // per partition, the term of another owner this node's copies were last checked against (checkCopies)
	members []string        // guarded by mu: the live nodes, sorted, as of the last lease pass

	tmu   sync.Mutex
	terms *terms // guarded by tmu

	hook      atomic.Pointer[func([]broker.Committed)]
	hookMu    sync.Mutex
	lastLive  map[string]liveMark // guarded by hookMu
	liveSwept time.Time           // guarded by hookMu

	// Live records of every interest, read by liveLoop. Its buffer bounds
	// what waits: past it NATS drops records for this node (a slow
	// consumer), which lagging subscriptions recover from the log.
	liveCh  chan *nats.Msg
	liveOut chan broker.Committed // this node's records for the others, published by liveOutLoop
	// liveOutBytes: record data queued in liveOut.
	liveOutBytes atomic.Int64
	liveQuit     chan struct{}
	liveWG       sync.WaitGroup
	liveStop     sync.Once

	imu      sync.Mutex
	interest map[string]*interest // guarded by imu

	pmu     sync.Mutex
	pending map[uint64]*call // guarded by pmu
	nextID  uint64           // guarded by pmu
	inbox   string

	// Replication (repl.go).
	rmu       sync.Mutex
	repl      map[string]*replTopic // guarded by rmu: owned topics with records being replicated
	marks     map[string]replMark   // guarded by rmu: owned topics without replication state, and what they acknowledged (markBeforeAppend)
	replOut   chan replSend         // requests to followers, sent by replOutLoop
	replDel   chan replDelivery     // replicated records and answers, in order, for replDeliverLoop
	followSub *nats.Subscription    // records of other owners for this node as a follower
	followMu  sync.Mutex            // held while serving a replication request, and while dropUnacked cuts a lost partition's logs
	vmu       sync.Mutex
	verified  map[string]uint64 // guarded by vmu: as a follower, topic → the term its copy is known to agree with

	rpcSub, replySub *nats.Subscription
	claimSub         *nats.Subscription                                      // other nodes' consumer claims (claims.go)
	claimHook        atomic.Pointer[func(string, string, broker.ClaimStamp)] // the broker's
	announceHook     atomic.Pointer[func()]                                  // the broker's
	pres             atomic.Pointer[presence]                                // the presence exchange (presence.go), once the broker started it
	clock            atomic.Int64                                            // hybrid logical clock of claim stamps
	sem              chan struct{}                                           // bounds requests served concurrently
	inflight         atomic.Int64                                            // local writes of owned partitions in flight

	takeovers   atomic.Int64 // partitions taken over with their history
	epochResets atomic.Int64 // local topics started in a new epoch: history not held for the term
	resends     atomic.Int64 // resendLocked's catch-ups started

	kick      chan struct{}
	renewKick chan struct{} // wakes renewLoop
	beatKick  chan struct{} // wakes heartbeatLoop
	stop      chan struct{}
	wg        sync.WaitGroup
	closed    atomic.Bool
	draining  atomic.Bool
}

// New connects to NATS, joins the cluster and starts taking its share of
// the partitions. The first round of leases is done when New returns.
func New(cfg Config) (*Node, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:       cfg,
		log:       cfg.Logger.With("cluster", cfg.Cluster),
		local:     cfg.Local,
		nc:        cfg.Conn,
		prefix:    "brokerd." + cfg.Cluster + ".",
		termsPath: filepath.Join(filepath.Dir(cfg.Local.Path()), "cluster-"+cfg.Cluster+".json"),
		parts:     make([]part, cfg.Partitions),
		fence:     make([]uint64, cfg.Partitions),
		checked:   make([]atomic.Uint64, cfg.Partitions),
		repl:      make(map[string]*replTopic),
		marks:     make(map[string]replMark),
		verified:  make(map[string]uint64),
		replOut:   make(chan replSend, 1<<12),
		replDel:   make(chan replDelivery, 1<<14),
		lastLive:  make(map[string]liveMark),
		liveCh:    make(chan *nats.Msg, 1<<16),
		liveOut:   make(chan broker.Committed, 1<<14),
		liveQuit:  make(chan struct{}),
		interest:  make(map[string]*interest),
		pending:   make(map[uint64]*call),
		sem:       make(chan struct{}, 64),
		kick:      make(chan struct{}, 1),
		renewKick: make(chan struct{}, 1),
		beatKick:  make(chan struct{}, 1),
		waiting:   make([]atomic.Bool, cfg.Partitions),
		stop:      make(chan struct{}),
	}
	var err error
	if n.terms, err = loadTerms(n.termsPath, cfg.Cluster, cfg.Partitions); err != nil {
		return nil, err
	}
	if n.nc == nil {
		n.nc, err = nats.Connect(strings.Join(cfg.NATSURLs, ","),
			nats.Name("brokerd "+cfg.Cluster+"/"+cfg.Node), nats.NoEcho(),
			nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				n.log.Warn("cluster: nats", "err", err)
			}))
		if err != nil {
			return nil, fmt.Errorf("cluster: connecting to NATS: %w", err)
		}
		n.ownConn = true
	}
	// The control connection: the same servers and options as the data
	// connection (credentials, TLS), reconnecting forever.
	opts := n.nc.Opts
	opts.Name = "brokerd " + cfg.Cluster + "/" + cfg.Node + " control"
	opts.MaxReconnect, opts.ReconnectWait, opts.AllowReconnect = -1, 250*time.Millisecond, true
	opts.Timeout = max(opts.Timeout, 5*time.Second)
	opts.ReconnectedCB, opts.DisconnectedErrCB, opts.ClosedCB, opts.DisconnectedCB = nil, nil, nil, nil
	opts.AsyncErrorCB = func(_ *nats.Conn, _ *nats.Subscription, err error) {
		n.log.Warn("cluster: nats control connection", "err", err)
	}
	if len(opts.Servers) == 0 && opts.Url == "" {
		opts.Url = n.nc.ConnectedUrl()
	}
	if n.ctl, err = opts.Connect(); err != nil {
		if n.ownConn {
			n.nc.Close()
		}
		return nil, fmt.Errorf("cluster: connecting to NATS: %w", err)
	}
	if err := n.start(); err != nil {
		n.shut()
		return nil, err
	}
	return n, nil
}

func (n *Node) start() error {
	js, err := jetstream.New(n.ctl)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bucket := "brokerd_" + n.cfg.Cluster + "_"
	if n.leases, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: bucket + "leases", Description: "brokerd partition leases: partition → owner and term",
	}); err != nil {
		return fmt.Errorf("cluster: lease bucket: %w", err)
	}
	if err := n.checkBucket(ctx); err != nil {
		return err
	}
	if n.nodes, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: bucket + "nodes", Description: "brokerd live nodes: node → heartbeat", TTL: n.cfg.LeaseTTL,
	}); err != nil {
		return fmt.Errorf("cluster: node bucket: %w", err)
	}
	// The node bucket's stream, read whole in one request (liveNodesErr).
	if n.nodeStream, err = js.Stream(ctx, "KV_"+bucket+"nodes"); err != nil {
		return fmt.Errorf("cluster: node bucket: %w", err)
	}
	n.nodeSubj = "$KV." + bucket + "nodes."
	n.local.SetCommitHook(n.onLocalCommit)
	if n.rpcSub, err = n.nc.Subscribe(n.rpcSubject(n.cfg.Node), n.serve); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	n.inbox = nats.NewInbox()
	if n.replySub, err = n.nc.Subscribe(n.inbox+".*", n.onReply); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if n.followSub, err = n.nc.Subscribe(n.replSubject(n.cfg.Node), n.serveRepl); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if n.claimSub, err = n.nc.Subscribe(n.claimSubject(), n.onClaim); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	for _, s := range []*nats.Subscription{n.rpcSub, n.replySub, n.followSub} {
		_ = s.SetPendingLimits(-1, 256<<20)
	}
	if err := n.nc.FlushTimeout(5 * time.Second); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	// Announced before the first pass, so that the others count this node
	// from its first lease on.
	if _, err := n.nodes.Put(ctx, n.cfg.Node, []byte(strconv.Itoa(n.cfg.Partitions))); err != nil {
		return fmt.Errorf("cluster: node bucket: %w", err)
	}
	n.pass()
	n.wg.Add(3)
	n.liveWG.Add(5)
	go n.liveLoop()
	go n.liveOutLoop()
	go n.replOutLoop()
	go n.replDeliverLoop()
	go n.replTickLoop()
	n.ctl.SetDisconnectErrHandler(func(_ *nats.Conn, err error) {
		n.markBlind()
		n.log.Warn("cluster: disconnected from NATS", "err", err)
	})
	n.ctl.SetReconnectHandler(func(*nats.Conn) {
		// Leases are judged stale only after a TTL watched from now on,
		// and the other nodes' heartbeats get a TTL to come back.
		n.markBlind()
		n.log.Info("cluster: reconnected to NATS; announcing this node")
		signal(n.beatKick)
		signal(n.renewKick)
	})
	n.nc.SetReconnectHandler(func(*nats.Conn) {
		n.log.Info("cluster: reconnected to NATS; repairing live records, announcing consumer subscriptions")
		go n.repairLive()
		go n.announceClaims()
		n.presenceResync()
	})
	go n.heartbeatLoop()
	go n.renewLoop()
	go n.leaseLoop()
	n.log.Info("cluster: joined", "partitions", n.cfg.Partitions, "owned", n.owned())
	return nil
}

// Drain hands this node's partitions over before it stops: it stops
// serving them, lets local writes in flight finish, and deletes their
// leases so that the other nodes take them at once. When no other node is
// alive the leases are kept, so that a restart of this node finds its
// data valid. The node keeps forwarding to the new owners until Close.
func (n *Node) Drain(ctx context.Context) error {
	if n.closed.Load() {
		return broker.ErrClosed
	}
	n.draining.Store(true)
	n.passMu.Lock()
	defer n.passMu.Unlock()
	c, cancel := n.opCtx()
	// Purged, not deleted: a delete marker would still hold the subject
	// that liveNodesErr counts as a heartbeat.
	_ = n.nodeStream.Purge(c, jetstream.WithPurgeSubject(n.nodeSubj+n.cfg.Node))
	cancel()
	others := false
	for _, name := range n.liveNodes() {
		if name != n.cfg.Node {
			others = true
		}
	}
	if !others {
		return nil
	}
	n.release(n.pick(n.cfg.Partitions))
	return ctx.Err()
}

// Close leaves the cluster without handing leases over (the other nodes
// take them once they expire), stops serving other nodes and closes the
// NATS connection when the Node opened it. It does not close the local
// store. Operations in flight fail with broker.ErrClosed.
func (n *Node) Close() error {
	if n.closed.Swap(true) {
		return nil
	}
	close(n.stop)
	n.wg.Wait()
	n.passMu.Lock() // a pass in progress ends with its current request
	n.passMu.Unlock()
	n.shut()
	return nil
}

func (n *Node) shut() {
	n.closed.Store(true)
	n.presenceStop()
	for _, s := range []*nats.Subscription{n.rpcSub, n.replySub, n.followSub, n.claimSub} {
		if s != nil {
			_ = s.Unsubscribe()
		}
	}
	n.imu.Lock()
	for x, in := range n.interest {
		_ = in.sub.Unsubscribe()
		delete(n.interest, x)
	}
	n.imu.Unlock()
	n.liveStop.Do(func() { close(n.liveQuit) })
	n.liveWG.Wait()
	if e := n.eph.Load(); e != nil {
		e.st.Close()
	}
	n.failReplWaits()
	n.pmu.Lock()
	calls := n.pending
	n.pending = map[uint64]*call{}
	n.pmu.Unlock()
	for _, c := range calls {
		c.timer.Stop()
		c.done(nil, broker.ErrClosed)
	}
	if n.ctl != nil {
		n.ctl.Close()
	}
	if n.ownConn && n.nc != nil {
		n.nc.Close()
	}
}

// checkBucket matches the terms kept beside the store with the lease
// bucket they are revisions of, and restores the fence from them: records
// of a term older than one this node owned or followed are refused from
// the first request on. Terms of a lease bucket made anew (its revisions
// start over) are forgotten: the local data then belongs to no term.
func (n *Node) checkBucket(ctx context.Context) error {
	st, err := n.leases.Status(ctx)
	if err != nil {
		return fmt.Errorf("cluster: lease bucket: %w", err)
	}
	var id string
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		id = bs.StreamInfo().Created.UTC().Format(time.RFC3339Nano)
	}
	n.tmu.Lock()
	defer n.tmu.Unlock()
	if id != n.terms.Bucket {
		if n.terms.Bucket != "" {
			n.log.Warn("cluster: the lease bucket was made anew since this node last ran; its terms start over and the local data belongs to none",
				"was", n.terms.Bucket, "now", id)
			clear(n.terms.Terms)
			clear(n.terms.Followed)
			clear(n.terms.Taking)
		}
		n.terms.Bucket = id
		if err := n.terms.save(n.termsPath); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}
	n.mu.Lock()
	for p := range n.fence {
		n.fence[p] = max(n.terms.Terms[p], n.terms.Followed[p])
	}
	n.mu.Unlock()
	return nil
}

// Owned returns the partitions this node serves now.
func (n *Node) Owned() []int {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []int
	for i := range n.parts {
		if n.parts[i].ready {
			out = append(out, i)
		}
	}
	return out
}

// Owner returns the owner and term of topic's partition as this node
// sees them; owner is "" when the partition has none.
func (n *Node) Owner(topic string) (owner string, term uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.parts[n.partition(topic)]
	return st.owner, st.term
}

// Partition returns topic's partition.
func (n *Node) Partition(topic string) int { return n.partition(topic) }

func (n *Node) partition(topic string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	return int(h.Sum32() % uint32(n.cfg.Partitions))
}

func (n *Node) rpcSubject(node string) string { return n.prefix + "rpc." + node }

// where tells how partition p is served now: by this node (local), by
// owner, or by nobody yet (owner "").
func (n *Node) where(p int) (owner string, term uint64, local bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := &n.parts[p]
	if st.mine {
		if core.Serves(st.ready, ct(st.sent), ct(time.Now()), core.Duration(n.cfg.LeaseTTL)) {
			return n.cfg.Node, st.term, true
		}
		return "", 0, false
	}
	return st.owner, st.term, false
}

// holds reports whether this node still holds p's lease of term.
func (n *Node) holds(p int, term uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := &n.parts[p]
	return st.mine && st.term == term && core.Holds(ct(st.sent), ct(time.Now()), core.Duration(n.cfg.LeaseTTL))
}

// SetTopicClasses bounds the topics of classes of names (a policy's
// max-topics) in this node's store: each owner bounds the topics of the
// partitions it serves, as --max-topics does, and its refusal travels back
// to a forwarding node. Copies a follower stores are not bounded.
func (n *Node) SetTopicClasses(fn broker.TopicClass) error { return n.local.SetTopicClasses(fn) }

// SetCommitHook installs the broker's hook. It sees the records of the
// partitions this node owns as they are committed, and the live records of
// other owners for the topics and patterns of Interest.
func (n *Node) SetCommitHook(fn func(batch []broker.Committed)) {
	if fn == nil {
		n.hook.Store(nil)
		return
	}
	n.hook.Store(&fn)
}

// deliver calls the broker's hook; calls are serialised.
func (n *Node) deliver(batch []broker.Committed) {
	if fp := n.hook.Load(); fp != nil {
		n.hookMu.Lock()
		(*fp)(batch)
		n.hookMu.Unlock()
	}
}

func backoff(attempt int) time.Duration {
	return min(10*time.Millisecond<<min(attempt, 6), 250*time.Millisecond)
}

// errRetry marks an answer after which the operation is tried again: the
// node asked does not own the partition, or nobody answers its subject.
var errRetry = errors.New("cluster: retry")

// Stats is a snapshot of this node's part in the cluster, for metrics.
type Stats struct {
	Members         int   // live nodes, as of the last lease pass
	Owned           int   // partitions this node holds
	UnderReplicated int   // held partitions whose lease names fewer followers than each record needs
	Syncing         int   // followers of held partitions being brought up to date
	Takeovers       int64 // partitions taken over with their history (a dead, drained or balancing owner's)
	EpochResets     int64 // local topics started in a new epoch because their history was not held
	Resends         int64 // records sent to a follower again because their confirmation did not come
}

// Stats returns a snapshot of this node's part in the cluster.
func (n *Node) Stats() Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := Stats{Members: len(n.members), Takeovers: n.takeovers.Load(), EpochResets: n.epochResets.Load(), Resends: n.resends.Load()}
	need := n.cfg.followerCount(len(n.members))
	if n.cfg.Replicas >= 2 {
		need = n.cfg.Replicas - 1 // strict: fewer live nodes is under-replication too
	}
	for p := range n.parts {
		st := &n.parts[p]
		if !st.mine {
			continue
		}
		s.Owned++
		if n.cfg.replicated() && len(st.listed) < need {
			s.UnderReplicated++
		}
		s.Syncing += len(st.syncing)
	}
	return s
}
