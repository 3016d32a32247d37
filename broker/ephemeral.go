package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Ephemeral topics (a policy with Ephemeral set) keep a bounded log in
// memory instead of the store: offsets, an epoch, replay and resume as for
// any topic, an ok with no disk write, and no history across a restart
// (the topic starts again in a new epoch, so a resume with the old epoch
// gets epoch_mismatch).
//
// ephemeralStore is the Store the server uses when its policies have an
// ephemeral one: it keeps the ephemeral topics and hands everything else
// to the durable store. Consumer positions are kept by the durable store
// for every topic, with the epoch they belong to.

// Bounds of an ephemeral topic whose policy gives none, and of them all.
const (
	DefaultEphemeralMaxMessages = 1000
	DefaultEphemeralMaxBytes    = 1 << 20
	DefaultEphemeralMaxAge      = time.Hour
	// MaxEphemeralTopics bounds the ephemeral topics a server holds at
	// once; beyond, a publish or subscription that would create one gets
	// ErrTooManyTopics. Those holding no record and no subscriber are
	// deleted after Config.TopicIdle (see memReclaimer), as durable ones
	// are.
	MaxEphemeralTopics = 10000
	// MaxEphemeralMemory bounds the memory of every ephemeral topic's
	// records together (data, key and about ephemeralRecordOverhead bytes
	// of bookkeeping each): past it the oldest records of the largest
	// topics are dropped first, as their retention would, so that no
	// client filling many topics can make the server hold more.
	MaxEphemeralMemory = 256 << 20
)

// ephemeralRecordOverhead is what a retained record costs beyond its data
// and key: the Record and its slot.
const ephemeralRecordOverhead = 80

func recordCost(r *Record) int64 { return int64(len(r.Data)+len(r.Key)) + ephemeralRecordOverhead }

// ephemeralSweep is how often records past their age are dropped.
const ephemeralSweep = time.Second

type ephemeralStore struct {
	Store                       // the durable store
	policy func(string) *Policy // the current policy of a topic
	now    func() time.Time

	// hookMu makes the commit hook see one batch at a time, from the
	// durable store's notifier or from run: the hook's contract.
	hookMu sync.Mutex
	hook   func([]Committed)

	mu     sync.Mutex
	topics map[string]*memLog // guarded by mu
	// perMatch counts the topics of each ephemeral policy, by its Match
	// (which no reload changes while ephemeral policies exist): guarded
	// by mu.
	perMatch  map[string]int
	cost      int64 // guarded by mu: recordCost of every retained record
	maxCost   int64 // MaxEphemeralMemory, smaller in tests
	maxTopics int   // MaxEphemeralTopics, smaller in tests
	// work carries appends to run, in the order their offsets were
	// assigned: sent while mu is held.
	work chan memDone
	stop chan struct{}
	wg   sync.WaitGroup
}

// memLog is one ephemeral topic, guarded by ephemeralStore.mu.
type memLog struct {
	epoch string
	head  uint64
	last  int64 // Unix ms of the last record, or of the creation

	recs  []Record // retained, ascending offsets, the last one is head
	bytes int64
	cost  int64 // recordCost of recs
}

type memDone struct {
	c    Committed // nil Records: a duplicate, nothing to hand to the hook
	a    Appended
	done func(Appended, error)
}

func newEphemeralStore(st Store, policy func(string) *Policy, now func() time.Time) *ephemeralStore {
	e := &ephemeralStore{Store: st, policy: policy, now: now, topics: make(map[string]*memLog), perMatch: make(map[string]int), maxCost: MaxEphemeralMemory, maxTopics: MaxEphemeralTopics,
		work: make(chan memDone, 4096), stop: make(chan struct{})}
	e.wg.Add(2)
	go e.run()
	go e.sweep()
	return e
}

// close stops the goroutines; appends from then on fail with ErrClosed.
func (e *ephemeralStore) close() {
	e.mu.Lock() // no append is between its check of stop and its send
	close(e.stop)
	e.mu.Unlock()
	e.wg.Wait()
}

func (e *ephemeralStore) ephemeral(topic string) (*Policy, bool) {
	p := e.policy(topic)
	return p, p.Ephemeral
}

// bounds is p's retention for an ephemeral topic.
func ephemeralBounds(p *Policy) Retention {
	r := p.Retention
	if r.MaxMessages == 0 {
		r.MaxMessages = DefaultEphemeralMaxMessages
	}
	if r.MaxBytes == 0 {
		r.MaxBytes = DefaultEphemeralMaxBytes
	}
	if r.MaxAge == 0 {
		r.MaxAge = DefaultEphemeralMaxAge
	}
	return r
}

// SetCommitHook installs fn for the durable store's records and the
// ephemeral ones.
func (e *ephemeralStore) SetCommitHook(fn func([]Committed)) {
	e.hook = fn
	e.Store.SetCommitHook(func(b []Committed) {
		e.hookMu.Lock()
		defer e.hookMu.Unlock()
		fn(b)
	})
}

// run hands ephemeral records to the hook and calls done, in offset
// order, never on the appender's goroutine.
func (e *ephemeralStore) run() {
	defer e.wg.Done()
	for {
		select {
		case w := <-e.work:
			if w.c.Records != nil {
				e.hookMu.Lock()
				e.hook([]Committed{w.c})
				e.hookMu.Unlock()
			}
			w.done(w.a, nil)
		case <-e.stop:
			// Appends still queued are answered: nothing is lost that
			// was not in memory only anyway.
			for {
				select {
				case w := <-e.work:
					w.done(Appended{}, ErrClosed)
				default:
					return
				}
			}
		}
	}
}

// sweep drops records past their age, so a topic nobody writes to any
// more frees its memory.
func (e *ephemeralStore) sweep() {
	defer e.wg.Done()
	t := time.NewTicker(ephemeralSweep)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			e.mu.Lock()
			for name, l := range e.topics {
				e.cost -= l.trim(ephemeralBounds(e.policy(name)), e.now())
			}
			e.mu.Unlock()
		case <-e.stop:
			return
		}
	}
}

// trim drops the oldest records until every bound holds, and returns
// the cost it freed.
func (l *memLog) trim(r Retention, now time.Time) int64 {
	cut := now.Add(-r.MaxAge).UnixMilli()
	n := 0
	for n < len(l.recs) && (int64(len(l.recs)-n) > r.MaxMessages || l.bytes > r.MaxBytes || l.recs[n].Time < cut) {
		n++
	}
	return l.drop(n)
}

// drop drops the n oldest records and returns the cost it freed.
func (l *memLog) drop(n int) int64 {
	var freed int64
	for i := range n {
		l.bytes -= int64(len(l.recs[i].Data))
		freed += recordCost(&l.recs[i])
		l.recs[i] = Record{}
	}
	if n > 0 {
		l.recs = slices.Clip(l.recs[n:])
		if len(l.recs) == 0 {
			l.recs = nil
		}
	}
	l.cost -= freed
	return freed
}

// fitLocked drops records until every ephemeral topic together fits
// maxCost: a quarter of the largest topic's records (its oldest) at a
// time, so that whoever holds the most gives back first.
func (e *ephemeralStore) fitLocked() {
	for e.cost > e.maxCost {
		var big *memLog
		for _, l := range e.topics {
			if big == nil || l.cost > big.cost {
				big = l
			}
		}
		if big == nil || len(big.recs) == 0 {
			return
		}
		e.cost -= big.drop(max(1, len(big.recs)/4))
	}
}

func (l *memLog) info(topic string) TopicInfo {
	earliest := l.head + 1
	if len(l.recs) > 0 {
		earliest = l.recs[0].Offset
	}
	return TopicInfo{Topic: topic, Epoch: l.epoch, Earliest: earliest, Head: l.head, Count: int64(len(l.recs)), Bytes: l.bytes}
}

// logLocked returns topic's log, creating it when create is set.
func (e *ephemeralStore) logLocked(topic string, create bool) (*memLog, error) {
	l := e.topics[topic]
	if l != nil || !create {
		return l, nil
	}
	if len(e.topics) >= e.maxTopics {
		return nil, fmt.Errorf("%w: %d ephemeral topics, the limit", ErrTooManyTopics, len(e.topics))
	}
	p := e.policy(topic)
	if n := e.perMatch[p.Match]; p.MaxTopics > 0 && n >= p.MaxTopics {
		return nil, fmt.Errorf("%w: %d topics of policy %q, its limit", ErrTooManyTopics, n, p.Name)
	}
	l = &memLog{epoch: uuid.NewString(), last: e.now().UnixMilli()}
	e.topics[topic] = l
	e.perMatch[p.Match]++
	return l, nil
}

func (e *ephemeralStore) AppendAsync(topic string, data []byte, key string, done func(Appended, error)) {
	p, ok := e.ephemeral(topic)
	if !ok {
		e.Store.AppendAsync(topic, data, key, done)
		return
	}
	r := ephemeralBounds(p)
	e.mu.Lock()
	defer e.mu.Unlock()
	select {
	case <-e.stop:
		go done(Appended{}, ErrClosed)
		return
	default:
	}
	_, existed := e.topics[topic]
	l, err := e.logLocked(topic, true)
	if err != nil {
		go done(Appended{}, err)
		return
	}
	if key != "" {
		// A key is remembered while its record is retained.
		for i := len(l.recs) - 1; i >= 0; i-- {
			if l.recs[i].Key == key {
				e.work <- memDone{a: Appended{Topic: topic, Epoch: l.epoch, Offset: l.recs[i].Offset, Time: l.recs[i].Time, Dup: true}, done: done}
				return
			}
		}
	}
	now := e.now()
	ms := now.UnixMilli()
	if n := len(l.recs); n > 0 && l.recs[n-1].Time > ms {
		ms = l.recs[n-1].Time // never decreasing within a topic
	}
	l.head++
	l.last = ms
	rec := Record{Offset: l.head, Time: ms, Key: key, Data: data}
	l.recs = append(l.recs, rec)
	l.bytes += int64(len(data))
	c := recordCost(&rec)
	l.cost += c
	e.cost += c - l.trim(r, now)
	e.fitLocked()
	// The hook may keep the records: give it its own slice header.
	e.work <- memDone{c: Committed{Topic: topic, Epoch: l.epoch, Records: []Record{rec}},
		a: Appended{Topic: topic, Epoch: l.epoch, Offset: rec.Offset, Time: ms, Created: !existed}, done: done}
}

func (e *ephemeralStore) Append(ctx context.Context, topic string, data []byte, key string) (Appended, error) {
	if _, ok := e.ephemeral(topic); !ok {
		return e.Store.Append(ctx, topic, data, key)
	}
	type res struct {
		a   Appended
		err error
	}
	ch := make(chan res, 1)
	e.AppendAsync(topic, data, key, func(a Appended, err error) { ch <- res{a, err} })
	select {
	case r := <-ch:
		return r.a, r.err
	case <-ctx.Done():
		return Appended{}, ctx.Err()
	}
}

func (e *ephemeralStore) Ensure(ctx context.Context, topic string) (TopicInfo, error) {
	if _, ok := e.ephemeral(topic); !ok {
		return e.Store.Ensure(ctx, topic)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	l, err := e.logLocked(topic, true)
	if err != nil {
		return TopicInfo{}, err
	}
	return l.info(topic), nil
}

func (e *ephemeralStore) Read(topic string, from uint64, max, maxBytes int) ([]Record, error) {
	if _, ok := e.ephemeral(topic); !ok {
		return e.Store.Read(topic, from, max, maxBytes)
	}
	if max <= 0 {
		max = 1000
	}
	if maxBytes <= 0 {
		maxBytes = 1 << 20
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.topics[topic]
	if l == nil {
		return nil, ErrTopicNotFound
	}
	i := sort.Search(len(l.recs), func(i int) bool { return l.recs[i].Offset >= from })
	var out []Record
	size := 0
	for ; i < len(l.recs) && len(out) < max && (len(out) == 0 || size+len(l.recs[i].Data) <= maxBytes); i++ {
		out = append(out, l.recs[i]) // Data is never changed: sharing it is a copy
		size += len(l.recs[i].Data)
	}
	return out, nil
}

func (e *ephemeralStore) Topic(topic string) (TopicInfo, bool, error) {
	if _, ok := e.ephemeral(topic); !ok {
		return e.Store.Topic(topic)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.topics[topic]
	if l == nil {
		return TopicInfo{}, false, nil
	}
	return l.info(topic), true, nil
}

func (e *ephemeralStore) OffsetAt(topic string, ms int64) (uint64, int64, error) {
	if _, ok := e.ephemeral(topic); !ok {
		return e.Store.OffsetAt(topic, ms)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.topics[topic]
	if l == nil {
		return 0, 0, ErrTopicNotFound
	}
	var earliest int64
	if len(l.recs) > 0 {
		earliest = l.recs[0].Time
	}
	i := sort.Search(len(l.recs), func(i int) bool { return l.recs[i].Time >= ms })
	if i == len(l.recs) {
		return l.head + 1, earliest, nil
	}
	return l.recs[i].Offset, earliest, nil
}

// Topics lists the durable topics and the ephemeral ones together, in
// name order. A durable log of a topic that is ephemeral now is not
// listed.
func (e *ephemeralStore) Topics(after string, max int) ([]TopicInfo, error) {
	if max <= 0 {
		max = 1000
	}
	var out []TopicInfo
	cursor := after
	for len(out) < max {
		page, err := e.Store.Topics(cursor, max)
		if err != nil {
			return nil, err
		}
		for _, ti := range page {
			if _, ok := e.ephemeral(ti.Topic); !ok {
				out = append(out, ti)
			}
		}
		if len(page) < max {
			break
		}
		cursor = page[len(page)-1].Topic
		if len(out) >= max {
			// The durable page reached cursor: ephemeral topics after
			// it come in the next page.
			break
		}
	}
	limit := "" // ephemeral topics up to this name belong to this page
	if len(out) >= max {
		limit = out[max-1].Topic
	}
	e.mu.Lock()
	for name, l := range e.topics {
		if name > after && (limit == "" || name < limit) {
			if _, ok := e.ephemeral(name); ok {
				out = append(out, l.info(name))
			}
		}
	}
	e.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Topic < out[j].Topic })
	if len(out) > max {
		out = out[:max]
	}
	return out, nil
}

// reclaimer returns the Reclaimer of the ephemeral topics: the server
// deletes those idle for Config.TopicIdle as it deletes durable ones, so
// that MaxEphemeralTopics bounds the topics held at once, not the names
// ever used.
func (e *ephemeralStore) reclaimer() Reclaimer { return memReclaimer{e} }

type memReclaimer struct{ e *ephemeralStore }

// IdleTopics returns, in name order, up to max ephemeral topics after the
// name after that hold no record and whose last record (or creation) is at
// or before before. The topics are few (MaxEphemeralTopics): one scan
// under the lock finds them, and the sort happens outside it.
func (r memReclaimer) IdleTopics(after string, max int, before time.Time) ([]TopicInfo, string, error) {
	e := r.e
	cut := before.UnixMilli()
	var idle []TopicInfo
	e.mu.Lock()
	for name, l := range e.topics {
		if name > after && len(l.recs) == 0 && l.last <= cut {
			idle = append(idle, l.info(name))
		}
	}
	e.mu.Unlock()
	slices.SortFunc(idle, func(a, b TopicInfo) int { return strings.Compare(a.Topic, b.Topic) })
	if max > 0 && len(idle) > max {
		idle = idle[:max]
		return idle, idle[max-1].Topic, nil
	}
	return idle, "", nil
}

// DeleteIdle deletes those of topics that still have their epoch, hold no
// record and had none since before. An append after it creates the topic
// again in a new epoch; one before it keeps the topic.
func (r memReclaimer) DeleteIdle(topics []TopicInfo, before time.Time) ([]string, error) {
	e := r.e
	cut := before.UnixMilli()
	var deleted []string
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, info := range topics {
		l := e.topics[info.Topic]
		if l == nil || l.epoch != info.Epoch || len(l.recs) != 0 || l.last > cut {
			continue
		}
		e.forgetLocked(info.Topic, l)
		deleted = append(deleted, info.Topic)
	}
	return deleted, nil
}

// errEphemeralCluster: an ephemeral policy with a store that is a
// cluster and cannot keep them.
var errEphemeralCluster = errors.New("broker: ephemeral topics need a cluster store that keeps them (EphemeralHost)")

// EphemeralHost is implemented by a Store that keeps ephemeral topics
// itself, where the broker's own layer over it cannot: a cluster, whose
// node owning a topic must keep it. The server calls HostEphemeral once,
// before SetCommitHook, when its policies have an ephemeral one; policy
// returns a topic's current policy.
type EphemeralHost interface {
	HostEphemeral(policy func(topic string) *Policy, now func() time.Time) error
}

// EphemeralStore is a Store that keeps the topics of ephemeral policies in
// memory, as the broker does on a single node (see Policy.Ephemeral), and
// hands every other topic to a durable Store. An EphemeralHost builds its
// own on the store of the topics it owns.
type EphemeralStore interface {
	Store
	// Ephemeral reports whether topic is ephemeral under its policy.
	Ephemeral(topic string) bool
	// DropTopics forgets the ephemeral topics for which drop returns
	// true: created again, they start in a new epoch.
	DropTopics(drop func(topic string) bool)
	// Reclaimer deletes idle ephemeral topics (see Reclaimer).
	Reclaimer() Reclaimer
	// Use returns the ephemeral topics held and the memory their
	// records take (see MaxEphemeralTopics, MaxEphemeralMemory).
	Use() (topics int, bytes int64)
	// Close stops its goroutines.
	Close()
}

// NewEphemeralStore returns an EphemeralStore over durable.
func NewEphemeralStore(durable Store, policy func(topic string) *Policy, now func() time.Time) EphemeralStore {
	return exported{newEphemeralStore(durable, policy, now)}
}

type exported struct{ *ephemeralStore }

func (x exported) Ephemeral(topic string) bool { _, ok := x.ephemeral(topic); return ok }
func (x exported) Reclaimer() Reclaimer        { return x.reclaimer() }
func (x exported) Close()                      { x.close() }
func (x exported) Use() (int, int64)           { return x.use() }

func (e *ephemeralStore) use() (int, int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.topics), e.cost
}

// EphemeralUse returns the ephemeral topics this server (or, in a
// cluster, its node) holds and the memory of their records.
func (srv *Server) EphemeralUse() (topics int, bytes int64) {
	if srv.eph != nil {
		return srv.eph.use()
	}
	if h, ok := srv.store.(interface{ EphemeralUse() (int, int64) }); ok {
		return h.EphemeralUse()
	}
	return 0, 0
}

// DropTopics forgets the ephemeral topics drop selects.
func (e *ephemeralStore) DropTopics(drop func(topic string) bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for name, l := range e.topics {
		if !drop(name) {
			continue
		}
		e.forgetLocked(name, l)
	}
}

// forgetLocked deletes topic, whose log is l.
func (e *ephemeralStore) forgetLocked(topic string, l *memLog) {
	delete(e.topics, topic)
	if m := e.policy(topic).Match; e.perMatch[m] > 1 {
		e.perMatch[m]--
	} else {
		delete(e.perMatch, m)
	}
	e.cost -= l.cost
}
