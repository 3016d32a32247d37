package broker

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// ErrDraining is returned by Connect once Shutdown has begun.
var ErrDraining = errors.New("broker: draining")

// ErrUnavailable is what a Store wraps when it cannot serve a request now
// (in a cluster: no node owns the topic at the moment). Clients get
// unavailable and retry.
var ErrUnavailable = errors.New("broker: unavailable")

const topicShards = 64

// Server is the hub: it owns topics, subscriptions and sessions, and
// routes every durable record from the Store to the subscriptions that
// want it.
//
// Lock order (outer first):
//
//	topicState.mu → Session.mu
//	presenceShard.mu → Session.mu (one session at a time, or the
//	subscribing session's while it queues its ok)
//	Server.pmu (pattern tree) and Server.cmu (consumers) are leaves: never
//	held while taking another lock of this package.
type Server struct {
	cfg   Config
	store Store
	log   *slog.Logger
	seed  maphash.Seed

	// pending bounds the data of publishes waiting to be durable on the
	// whole server (Config.PendingBytes).
	pending *budget
	storage storageHealth

	shards [topicShards]topicShard

	pmu       sync.RWMutex
	patterns  *patternTree // guarded by pmu
	npatterns atomic.Int64

	cmu       sync.Mutex
	consumers map[consumerTopic]*subscription // guarded by cmu

	smu      sync.Mutex
	sessions map[*Session]struct{} // guarded by smu

	presence presenceTable
	bus      PresenceBus // nil on one node

	policies atomic.Pointer[Policies]
	quota    topicQuota      // topics each user created (Config.MaxTopicsPerUser)
	eph      *ephemeralStore // nil without ephemeral policies; then store is it
	reloadMu sync.Mutex      // SetPolicies, one at a time
	// The topic classes (Policy.MaxTopics) the durable store was given:
	// their description (Policies.classes; "" for none, guarded by
	// reloadMu) and the policies whose bounds the store reads.
	classes       string
	classPolicies atomic.Pointer[Policies]

	draining atomic.Bool
	stop     chan struct{}
	wg       sync.WaitGroup
	closers  sync.WaitGroup // sessions whose transport close is in progress

	stats Stats
	// reclaimGen counts the starts and ends of deletions of idle topics
	// (odd while one runs; they run one at a time, see reclaim).
	reclaimGen atomic.Uint64
}

type topicShard struct {
	mu     sync.RWMutex
	topics map[string]*topicState
	// reclaiming: topics being deleted as idle (see reclaim), each with a
	// channel closed when the deletion ends; nil until the first.
	reclaiming map[string]chan struct{}
}

// topicState tracks the live subscribers of one exact topic.
type topicState struct {
	name string
	mu   sync.Mutex
	// guarded by mu:
	subs []*subscription
	refs int    // subscriptions holding this state (guarded by the shard lock)
	last uint64 // highest offset dispatched or known durable when created
	// epoch of last: the topic's epoch when created, then of each
	// dispatched run.
	epoch string
	// interested: the store was told of this topic (Interested); set once
	// before the state is used.
	interested bool
	failed     bool // set up failed; the state left the map (guarded by mu)
}

type consumerTopic struct{ consumer, topic string }

// New returns a Server routing records of st. It installs its commit hook
// on st, so st must not have seen an append yet.
func New(cfg Config, st Store) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if st == nil {
		return nil, errors.New("broker: nil Store")
	}
	srv := &Server{
		cfg:       cfg,
		store:     st,
		log:       cfg.Logger,
		seed:      maphash.MakeSeed(),
		patterns:  newPatternTree(),
		consumers: make(map[consumerTopic]*subscription),
		sessions:  make(map[*Session]struct{}),
		stop:      make(chan struct{}),
	}
	for i := range srv.shards {
		srv.shards[i].topics = make(map[string]*topicState)
	}
	srv.pending = &budget{max: cfg.PendingBytes}
	ps := cfg.Policies
	if ps == nil {
		ps, _ = NewPolicies(Policy{}, nil)
	}
	srv.policies.Store(ps)
	if ps.HasEphemeral() {
		_, claims := st.(Claims)
		_, interested := st.(Interested)
		host, hosts := st.(EphemeralHost)
		switch {
		case hosts:
			if err := host.HostEphemeral(srv.Policy, cfg.Now); err != nil {
				return nil, err
			}
		case claims || interested:
			return nil, errEphemeralCluster
		default:
			srv.eph = newEphemeralStore(st, srv.Policy, cfg.Now)
			srv.store = srv.eph
		}
	}
	if err := srv.boundTopics(ps); err != nil {
		if srv.eph != nil {
			srv.eph.close()
		}
		return nil, err
	}
	srv.storage.init()
	srv.presence.init()
	if bus, ok := st.(PresenceBus); ok {
		srv.bus = bus
		bus.SetPresence(srv)
	}
	srv.store.SetCommitHook(srv.onCommit)
	if cl, ok := st.(Claims); ok {
		cl.SetClaimHooks(srv.claimedElsewhere, srv.announceClaims)
	}
	srv.wg.Add(1)
	go srv.heartbeatLoop()
	var reclaimers []Reclaimer
	if r, ok := st.(Reclaimer); ok {
		reclaimers = append(reclaimers, r)
	}
	if srv.eph != nil {
		reclaimers = append(reclaimers, srv.eph.reclaimer())
	}
	if len(reclaimers) > 0 && cfg.TopicIdle > 0 {
		srv.wg.Add(1)
		go srv.reclaimLoop(reclaimers)
	}
	return srv, nil
}

// Config returns the server's configuration with defaults filled in.
func (srv *Server) Config() Config { return srv.cfg }

// Store returns the store the server routes.
func (srv *Server) Store() Store { return srv.store }

// Stats returns the server's counters.
func (srv *Server) Stats() *Stats { return &srv.stats }

// Subscribers returns the number of live exact subscriptions to topic on
// this node.
func (srv *Server) Subscribers(topic string) int {
	t := srv.lookupTopic(topic)
	if t == nil {
		return 0
	}
	t.mu.Lock()
	n := len(t.subs)
	t.mu.Unlock()
	return n
}

// Draining reports whether Shutdown has begun.
func (srv *Server) Draining() bool { return srv.draining.Load() }

func (srv *Server) shard(topic string) *topicShard {
	return &srv.shards[maphash.String(srv.seed, topic)%topicShards]
}

// acquireTopic returns the state of topic, creating it when absent, and
// takes a reference on it. A new state's last offset is initialised from
// the store while its lock is held, so it is never below an offset that
// has already been dispatched.
func (srv *Server) acquireTopic(topic string) (*topicState, error) {
	sh := srv.shard(topic)
	for {
		sh.mu.Lock()
		if wait := sh.reclaimWait(topic); wait != nil {
			sh.mu.Unlock()
			<-wait // the topic is being deleted as idle: take the state after
			continue
		}
		t := sh.topics[topic]
		if t != nil {
			t.refs++
			sh.mu.Unlock()
			// Wait for its creator to finish setting it up.
			t.mu.Lock()
			failed := t.failed
			t.mu.Unlock()
			if failed {
				continue // the creator removed it: make a new one
			}
			return t, nil
		}
		t = &topicState{name: topic, refs: 1}
		t.mu.Lock()
		sh.topics[topic] = t
		sh.mu.Unlock()
		err := srv.initTopic(t)
		if err != nil {
			// Take the broken state out of the map before anyone else
			// can use it; waiters see failed and start over.
			t.failed = true
			sh.mu.Lock()
			if sh.topics[topic] == t {
				delete(sh.topics, topic)
			}
			sh.mu.Unlock()
			t.mu.Unlock()
			if t.interested {
				_ = srv.store.(Interested).Interest(topic, false)
			}
			return nil, err
		}
		t.mu.Unlock()
		return t, nil
	}
}

// initTopic sets a new topic state up; t.mu is held.
func (srv *Server) initTopic(t *topicState) error {
	if in, ok := srv.store.(Interested); ok {
		// Live records committed elsewhere must reach the hook before the
		// head is read below.
		if err := in.Interest(t.name, true); err != nil {
			return err
		}
		t.interested = true
	}
	info, ok, err := srv.store.Topic(t.name)
	if err != nil {
		return err
	}
	if ok {
		t.last, t.epoch = info.Head, info.Epoch
	}
	return nil
}

// adoptEpoch brings a topic state to the store's view when the store has
// started a new epoch that no commit has reported yet, and ends the
// subscriptions of the old one.
func (srv *Server) adoptEpoch(t *topicState, info TopicInfo) {
	var stale []*subscription
	t.mu.Lock()
	if t.epoch != info.Epoch {
		t.epoch, t.last = info.Epoch, info.Head
		for _, sub := range t.subs {
			if sub.epoch != info.Epoch {
				stale = append(stale, sub)
			}
		}
	}
	t.mu.Unlock()
	for _, sub := range stale {
		sub.sess.endSub(sub, subproto.CodeEpochMismatch)
	}
}

func (srv *Server) releaseTopic(t *topicState) {
	sh := srv.shard(t.name)
	sh.mu.Lock()
	t.refs--
	drop := t.refs == 0
	if drop && sh.topics[t.name] == t {
		delete(sh.topics, t.name)
	}
	sh.mu.Unlock()
	if drop && t.interested {
		if in, ok := srv.store.(Interested); ok {
			_ = in.Interest(t.name, false)
		}
	}
}

func (srv *Server) lookupTopic(topic string) *topicState {
	sh := srv.shard(topic)
	sh.mu.RLock()
	t := sh.topics[topic]
	sh.mu.RUnlock()
	return t
}

// onCommit is the store's commit hook: it runs on the store's notifier
// goroutine, in commit order, and hands each record to every matching
// subscription without blocking. The msg bytes of a record are encoded
// once and shared by every exact subscription.
func (srv *Server) onCommit(batch []Committed) {
	var matches, stale []*subscription
	var arena []byte
	for i := range batch {
		c := &batch[i]
		if t := srv.lookupTopic(c.Topic); t != nil {
			t.mu.Lock()
			if c.Epoch != t.epoch && t.epoch != "" {
				// The topic's history was reset (a cluster failover, a
				// reset): offsets start over. Subscriptions of the old
				// epoch must not take the new records as their sequel.
				t.last = 0
				for _, sub := range t.subs {
					if sub.epoch != c.Epoch {
						stale = append(stale, sub)
					}
				}
			}
			t.epoch = c.Epoch
			if len(t.subs) > 0 {
				arena = arena[:0]
				ends := make([]int, len(c.Records))
				for j := range c.Records {
					r := &c.Records[j]
					arena = subproto.AppendMsg(arena, c.Topic, r.Offset, r.Time, r.Data, "")
					ends[j] = len(arena)
				}
				// The subscribers keep slices of the arena: give up ownership.
				shared := arena
				arena = nil
				start := 0
				for j := range c.Records {
					enc := shared[start:ends[j]:ends[j]]
					start = ends[j]
					off := c.Records[j].Offset
					for _, sub := range t.subs {
						if sub.epoch == c.Epoch {
							sub.sess.offer(sub, off, enc)
						}
					}
				}
			}
			if n := len(c.Records); n > 0 && c.Records[n-1].Offset > t.last {
				t.last = c.Records[n-1].Offset
			}
			t.mu.Unlock()
			for _, sub := range stale {
				sub.sess.endSub(sub, subproto.CodeEpochMismatch)
			}
			stale = stale[:0]
		}
		if srv.npatterns.Load() == 0 {
			continue
		}
		srv.pmu.RLock()
		matches = srv.patterns.match(c.Topic, matches[:0])
		srv.pmu.RUnlock()
		if len(matches) == 0 {
			continue
		}
		srv.dispatchPatterns(c, matches)
	}
}

// dispatchPatterns delivers a run of records to pattern subscriptions.
// Each record is encoded once per distinct pattern.
func (srv *Server) dispatchPatterns(c *Committed, matches []*subscription) {
	type encoded struct {
		pattern string
		b       []byte
	}
	var cache []encoded
	for j := range c.Records {
		r := &c.Records[j]
		cache = cache[:0]
		for _, sub := range matches {
			var enc []byte
			for _, e := range cache {
				if e.pattern == sub.topic {
					enc = e.b
					break
				}
			}
			if enc == nil {
				enc = subproto.AppendMsg(nil, c.Topic, r.Offset, r.Time, r.Data, sub.topic)
				cache = append(cache, encoded{sub.topic, enc})
			}
			sub.sess.offerPattern(sub, c.Topic, c.Epoch, r.Offset, enc)
		}
	}
}

// Connect registers a new client connection and sends it welcome. The
// transport then feeds the connection's frames to Session.HandleFrame and
// calls Session.Closed when the connection ends.
func (srv *Server) Connect(c Conn, info ConnInfo) (*Session, error) {
	if srv.draining.Load() {
		return nil, ErrDraining
	}
	s := newSession(srv, c, info)
	s.onAuth = info.OnAuthenticated
	srv.smu.Lock()
	if srv.draining.Load() { // Shutdown takes its list under smu after setting draining
		srv.smu.Unlock()
		return nil, ErrDraining
	}
	srv.sessions[s] = struct{}{}
	srv.smu.Unlock()
	srv.stats.Connections.Add(1)
	srv.stats.ConnectionsTotal.Add(1)
	s.welcome()
	s.startAuth(info.Token)
	return s, nil
}

func (srv *Server) forget(s *Session) {
	srv.smu.Lock()
	_, ok := srv.sessions[s]
	delete(srv.sessions, s)
	srv.smu.Unlock()
	if ok {
		srv.stats.Connections.Add(-1)
	}
}

// RetryAfter returns a random retry_after_ms for a 1001 or 1013 close, so
// that clients closed together do not all come back in the same second.
func (srv *Server) RetryAfter() int {
	max := int(srv.cfg.ShutdownRetryAfter / time.Millisecond)
	min := max / 10
	if max <= min {
		return max
	}
	return min + rand.IntN(max-min+1)
}

// Shutdown stops accepting sessions and closes every session with 1001
// and a spread retry_after_ms. Publishes already handed to the store still
// complete there; closing the store afterwards waits for them.
func (srv *Server) Shutdown(ctx context.Context) error {
	if srv.draining.Swap(true) {
		return nil
	}
	close(srv.stop)
	srv.smu.Lock()
	list := make([]*Session, 0, len(srv.sessions))
	for s := range srv.sessions {
		list = append(list, s)
	}
	srv.smu.Unlock()
	// Sessions stop taking commands now (HandleFrame checks draining).
	// Give publishes and acks already taken a moment to become durable and
	// their replies to be written, so clients are not left guessing about
	// what was stored; then close.
	grace := srv.cfg.DrainGrace
	if dl, ok := ctx.Deadline(); ok && time.Until(dl)/2 < grace {
		grace = time.Until(dl) / 2
	}
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		busy := false
		for _, s := range list {
			if s.busy() {
				busy = true
				break
			}
		}
		if !busy {
			break
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, s := range list {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			s.Close(uint16(subproto.CloseGoingAway), subproto.CloseReason(subproto.CloseGoingAway, srv.RetryAfter()))
		}()
	}
	done := make(chan struct{})
	// Return once every close frame has been handed to the transport.
	go func() {
		wg.Wait()
		srv.wg.Wait()
		srv.closers.Wait()
		if srv.eph != nil {
			srv.eph.close()
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PendingBytes returns the data of publishes waiting to be durable.
func (srv *Server) PendingBytes() int64 { return srv.pending.inUse() }

// busy reports whether the session has publishes or acks in flight or
// replies not yet written.
func (s *Session) busy() bool {
	if len(s.pending) > 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.closed && (s.outCtrl > 0 || s.writing)
}

func (srv *Server) heartbeatLoop() {
	defer srv.wg.Done()
	tick := time.NewTicker(srv.cfg.Heartbeat)
	defer tick.Stop()
	var list []*Session
	for {
		select {
		case <-srv.stop:
			return
		case <-tick.C:
		}
		list = list[:0]
		srv.smu.Lock()
		for s := range srv.sessions {
			list = append(list, s)
		}
		srv.smu.Unlock()
		for _, s := range list {
			s.ping()
		}
		clear(list)
	}
}

// takeOver records sub as the live subscription of its consumer and topic
// and returns the subscription it replaces, if any.
func (srv *Server) takeOver(sub *subscription) *subscription {
	k := consumerTopic{sub.consumerKey, sub.topic}
	srv.cmu.Lock()
	old := srv.consumers[k]
	srv.consumers[k] = sub
	srv.cmu.Unlock()
	return old
}

func (srv *Server) dropConsumer(sub *subscription) {
	k := consumerTopic{sub.consumerKey, sub.topic}
	srv.cmu.Lock()
	if srv.consumers[k] == sub {
		delete(srv.consumers, k)
	}
	srv.cmu.Unlock()
}

func (srv *Server) liveConsumer(consumerKey, topic string) *subscription {
	srv.cmu.Lock()
	sub := srv.consumers[consumerTopic{consumerKey, topic}]
	srv.cmu.Unlock()
	return sub
}

// Stats are the server's counters, read by the metrics endpoint.
type Stats struct {
	Connections      atomic.Int64
	ConnectionsTotal atomic.Int64
	Subscriptions    atomic.Int64
	Published        atomic.Int64
	PublishedDup     atomic.Int64
	Delivered        atomic.Int64
	FramesOut        atomic.Int64
	BytesOut         atomic.Int64
	FramesIn         atomic.Int64
	BytesIn          atomic.Int64
	CatchUps         atomic.Int64 // subscriptions that fell back to reading the log
	SlowCloses       atomic.Int64 // connections closed with 4008
	SlowPatternEnds  atomic.Int64 // pattern subscriptions ended as slow (none since v1.1: they are fed from the logs)
	RateLimited      atomic.Int64 // connections closed with 4029
	PendingWaits     atomic.Int64 // times a publisher waited for MaxPendingBytes or PendingBytes
	StorageErrors    atomic.Int64 // store writes that failed (full disk, I/O error)
	TopicsReclaimed  atomic.Int64 // idle topics deleted (Config.TopicIdle)
	PresenceMembers  atomic.Int64 // presence members of this node
	PresenceEvents   atomic.Int64 // join and leave events queued to members
	PresenceMuted    atomic.Int64 // topics muted for having more than PresenceMuteAbove members
	PresenceLists    atomic.Int64 // presence lists served (command and HTTP)
	Errors           sync.Map     // subproto.Code → *atomic.Int64
}

// ErrorCount returns how many errors were answered with code.
func (st *Stats) ErrorCount(code subproto.Code) int64 {
	if v, ok := st.Errors.Load(code); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// CountError counts an error answered with code.
func (st *Stats) CountError(code subproto.Code) { st.countErr(code) }

func (st *Stats) countErr(code subproto.Code) {
	v, ok := st.Errors.Load(code)
	if !ok {
		v, _ = st.Errors.LoadOrStore(code, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(1)
}
