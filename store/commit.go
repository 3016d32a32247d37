package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

// notifyDepth is how many committed batches may wait for the notifier while
// the committer goes on with the next ones.
const notifyDepth = 4

// maintBudget bounds the deletions of one retention operation; a batch holds
// at most MaxBatchRecords/maintBudget of them.
const maintBudget = 1024

type opKind uint8

const (
	opAppend   opKind = iota // one record (AppendAsync, Append)
	opAppendAt               // records at given offsets (AppendAt)
	opCommit                 // a consumer offset (CommitAsync)
	opEnsure                 // create a topic's log when missing (Ensure)
	opMaint                  // retention and key expiry for one topic
	opWrite                  // fn alone in its own write transaction, then after
	opView                   // fn alone in a read transaction while no writer runs
	opExpire                 // forget expired idempotency keys; no transaction
)

// grouped reports whether ops of kind k share transactions.
func (k opKind) grouped() bool { return k < opWrite }

// logged reports whether ops of kind k go through the write-ahead log;
// the others work on bbolt directly once it holds everything logged.
func (k opKind) logged() bool { return k == opAppend || k == opAppendAt || k == opEnsure }

// op is one unit of work for the committer. Ops are pooled: an op belongs
// to its caller until enqueued, then to the committer, then to the notifier,
// which releases it after done (async) or hands it back to the waiting
// caller (sync), who releases it.
type op struct {
	kind     opKind
	topic    string
	key      string
	consumer string
	epoch    string
	offset   uint64
	data     []byte
	recs     []broker.Record
	fn       func(*bbolt.Tx) error
	after    func() // opWrite: runs on the committer once fn is committed

	appendDone func(broker.Appended, error)
	commitDone func(broker.ConsumerOffset, error)
	sync       bool          // a caller waits on ch
	ch         chan struct{} // buffered(1); kept across reuse

	// results, set by the committer
	app  broker.Appended
	co   broker.ConsumerOffset
	info broker.TopicInfo // opEnsure
	err  error
	more bool // opMaint: the budget ran out before the work did
}

var opPool = sync.Pool{New: func() any { return &op{ch: make(chan struct{}, 1)} }}

func newOp(k opKind) *op {
	o := opPool.Get().(*op)
	o.kind = k
	return o
}

func releaseOp(o *op) {
	*o = op{ch: o.ch}
	opPool.Put(o)
}

// weight returns what o counts against MaxBatchRecords and MaxBatchBytes.
func (o *op) weight() (recs, size int) {
	if o.err != nil {
		return 0, 0
	}
	switch o.kind {
	case opAppend:
		return 1, len(o.data) + len(o.key)
	case opAppendAt:
		for i := range o.recs {
			size += len(o.recs[i].Data) + len(o.recs[i].Key)
		}
		return len(o.recs), size
	case opCommit, opEnsure:
		return 1, 0
	case opMaint:
		return maintBudget, 0
	}
	return 0, 0
}

// arenaSize returns how many bytes of the batch arena o needs: every key and
// value handed to bbolt must stay valid until the transaction ends.
func (o *op) arenaSize() int {
	if o.err != nil {
		return 0
	}
	switch o.kind {
	case opAppend:
		return recordKeySize + recordSize(math.MaxUint64, o.key, o.data)
	case opAppendAt:
		n := 0
		for i := range o.recs {
			n += recordKeySize + recordSize(math.MaxUint64, o.recs[i].Key, o.recs[i].Data)
		}
		return n
	case opCommit:
		return consumerKeySize(o.consumer, o.topic) + consumerValSize(o.epoch)
	}
	return 0
}

// enqueue hands o to the committer. It blocks while the queue is full
// (backpressure) until there is room, ctx ends (ctx may be nil) or the DB
// closes.
func (db *DB) enqueue(ctx context.Context, o *op) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed {
		return errClosed
	}
	select {
	case db.queue <- o:
		return nil
	default:
	}
	var cancel <-chan struct{}
	if ctx != nil {
		cancel = ctx.Done()
	}
	select {
	case db.queue <- o:
		return nil
	case <-db.quitting:
		return errClosed
	case <-cancel:
		return ctx.Err()
	}
}

// runSync enqueues o, waits for it and releases it.
func (db *DB) runSync(o *op) error {
	o.sync = true
	if err := db.enqueue(nil, o); err != nil {
		releaseOp(o)
		return err
	}
	<-o.ch
	err := o.err
	releaseOp(o)
	return err
}

// batch is one transaction's worth of ops and, once committed, what the
// notifier reports.
type batch struct {
	db        *DB
	ops       []*op
	n, size   int                // weight of ops (see op.weight)
	committed []broker.Committed // nil unless the transaction committed

	// working state while the transaction is open
	wal     bool          // the batch goes to the log: puts, not bbolt writes
	puts    []walPut      // the log entry (wal)
	rgen    uint64        // the tail's generation when tx began (wal)
	tx      *bbolt.Tx     // the write transaction, or the read one (wal)
	metaB   *bbolt.Bucket // meta: topic name → metadata
	records *bbolt.Bucket // records: (id, offset) → record
	nowMs   int64
	arena   []byte
	topics  map[string]*topicTx
	order   []*topicTx // topics touched, in first-touch order
	recs    []pending  // appended records, in append order
	dead    [][]byte   // records retention removes, deleted just before commit
	created int        // topics created (see topics.go)
	// topics created per class of the classes admitted against (see
	// SetTopicClasses)
	classes   *topicClasses
	createdIn map[string]int64
}

// pending is a record appended in the open transaction.
type pending struct {
	t   *topicTx
	rec broker.Record
}

// topicTx is a topic's metadata inside the open transaction.
type topicTx struct {
	name             string
	m                meta
	base             uint64          // head before the transaction: retention removes no later record
	dirty            bool            // the stored part of m must be written back
	created          bool            // created by this batch
	tail             []broker.Record // a log batch: its records in the tail when it was read
	pend             []broker.Record // a log batch: the records it adds
	nrec, start, end int             // committed grouping
}

// alloc returns n bytes of the arena that stay untouched until the batch is
// dropped.
func (b *batch) alloc(n int) []byte {
	if len(b.arena) < n {
		return make([]byte, n)
	}
	p := b.arena[:n:n]
	b.arena = b.arena[n:]
	return p
}

// begin opens the batch's write transaction.
func (b *batch) begin(tx *bbolt.Tx) {
	b.tx, b.metaB, b.records = tx, tx.Bucket(metaName), tx.Bucket(recordsName)
	// Records are appended at the end of each topic's run: full pages.
	b.records.FillPercent = 1
}

// topic returns the topic's state in the open transaction, nil when the
// topic has no log. Its head is found from its last record, which is why
// nothing is deleted from records before the batch's last lookup (see
// flushDeletes). A batch for the log takes the state from the tail when the
// topic is there, else from a read transaction begun after the last topic
// left the tail (so that bbolt holds all the topic's records).
func (b *batch) topic(name string) (*topicTx, error) {
	if t := b.topics[name]; t != nil {
		return t, nil
	}
	if b.wal {
		if t, err := b.walTopic(name); t != nil || err != nil {
			return t, err
		}
	}
	m, ok, err := loadMeta(b.metaB, b.records, name)
	if err != nil || !ok {
		return nil, err
	}
	t := &topicTx{name: name, m: m, base: m.head}
	b.add(t)
	return t, nil
}

// create makes a topic with the given epoch and a new id.
func (b *batch) create(name, epoch string) (*topicTx, error) {
	var id uint64
	if b.wal {
		b.db.nextID++
		id = b.db.nextID
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], id)
		b.puts = append(b.puts, walPut{kind: walSeq, v: v[:]})
	} else {
		var err error
		if id, err = b.metaB.NextSequence(); err != nil {
			return nil, fmt.Errorf("create topic %q: %w", name, err)
		}
	}
	// A new topic's last time is its creation's, until it has a record
	// (DeleteIdle measures idleness from it).
	t := &topicTx{name: name, m: meta{id: id, epoch: epoch, earliest: 1, lastTime: b.nowMs}, dirty: true, created: true}
	t.m.empty()
	b.add(t)
	b.created++
	return t, nil
}

func (b *batch) add(t *topicTx) {
	if b.topics == nil {
		b.topics = make(map[string]*topicTx)
	}
	b.topics[t.name] = t
	b.order = append(b.order, t)
}

func newEpoch() (string, error) {
	u, err := uuid.NewRandom()
	if err != nil {
		return "", fmt.Errorf("new epoch: %w", err)
	}
	return u.String(), nil
}

// commitLoop is the committer: it takes what is queued, up to the batch
// limits, applies it in one write transaction, takes again what queued
// meanwhile (callers acknowledged by the previous batch come back while this
// one is applied), and commits once nothing more is waiting (one fsync); then
// it hands the batch to the notifier. It never waits for work to arrive: a
// lone op is committed at once.
func (db *DB) commitLoop() {
	defer db.wg.Done()
	defer close(db.notify)
	defer db.stopApplier()
	var carry *op
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-db.queue:
			case <-db.stop:
				select {
				case first = <-db.queue:
				default:
					return
				}
			}
		}
		b := &batch{db: db, ops: []*op{first}}
		switch {
		case db.walErr != nil && first.kind != opExpire:
			carry = db.take(b, false)
			b.fail(db.walErr)
		case first.kind.logged():
			b.n, b.size = first.weight()
			carry = db.runLogged(b)
		case first.kind.grouped():
			b.n, b.size = first.weight()
			carry = db.runGrouped(b)
		default:
			db.runAlone(b)
		}
		db.notify <- b
	}
}

// take moves queued ops into b while they fit the batch limits. It returns
// an op that does not fit (or must run alone, or, when logged is set, does
// not go through the log), to start the next batch.
func (db *DB) take(b *batch, logged bool) (carry *op) {
	for b.n < db.opts.MaxBatchRecords && b.size < db.opts.MaxBatchBytes {
		select {
		case o := <-db.queue:
			n, size := o.weight()
			if !o.kind.grouped() || logged && !o.kind.logged() || b.n+n > db.opts.MaxBatchRecords || b.size+size > db.opts.MaxBatchBytes {
				return o
			}
			b.ops = append(b.ops, o)
			b.n, b.size = b.n+n, b.size+size
		default:
			return nil
		}
	}
	return nil
}

// runAlone executes an op that needs a transaction of its own.
func (db *DB) runAlone(b *batch) {
	switch o := b.ops[0]; o.kind {
	case opView:
		if o.err = db.catchUp(); o.err == nil {
			o.err = db.bolt.View(o.fn)
		}
	case opWrite:
		if o.err = db.catchUp(); o.err != nil {
			return
		}
		began := time.Now()
		db.direct.Lock()
		o.err = db.bolt.Update(o.fn)
		db.direct.Unlock()
		if o.err == nil && o.after != nil {
			o.after()
		}
		if o.err == nil && db.opts.OnCommit != nil {
			db.opts.OnCommit(0, time.Since(began))
		}
	case opExpire:
		db.keys.expire(db.keyCut(db.opts.Now().UnixMilli()))
	}
}

// runGrouped executes a batch of grouped ops in one transaction and returns
// the op that starts the next batch, if one was taken. Ops failing
// validation get their own error and leave the transaction untouched; when
// the transaction itself fails, every op gets its error and nothing is
// reported to the hook.
func (db *DB) runGrouped(b *batch) (carry *op) {
	carry = db.take(b, false)
	if !slices.ContainsFunc(b.ops, func(o *op) bool { return o.err == nil }) {
		return carry // nothing to write: every op failed validation
	}
	if err := db.catchUp(); err != nil {
		b.fail(err)
		return carry
	}
	db.direct.Lock()
	defer db.direct.Unlock()
	tx, err := db.bolt.Begin(true)
	if err != nil {
		b.fail(err)
		return carry
	}
	b.begin(tx)
	if err := db.syncSequence(tx); err != nil {
		_ = tx.Rollback()
		b.fail(err)
		return carry
	}
	b.nowMs = db.opts.Now().UnixMilli()
	db.keys.expire(db.keyCut(b.nowMs))
	began := time.Now()
	for applied := 0; ; {
		if err = db.apply(b, b.ops[applied:]); err != nil || carry != nil {
			break
		}
		applied = len(b.ops)
		if carry = db.take(b, false); len(b.ops) == applied {
			break
		}
	}
	if err == nil {
		err = b.flushDeletes()
	}
	if err == nil {
		err = b.writeMeta()
	}
	seq := b.metaB.Sequence()
	if err == nil {
		err = tx.Commit()
	} else {
		_ = tx.Rollback()
	}
	b.tx, b.metaB, b.records, b.topics, b.dead = nil, nil, nil, nil, nil
	if err != nil {
		// Forget the keys of records that were not stored. Keys forgotten
		// to make room for them stay forgotten.
		for _, t := range b.order {
			db.keys.trimAbove(t.name, t.base)
		}
		b.fail(err)
		return carry
	}
	db.nextID = max(db.nextID, seq)
	db.topicN.Add(int64(b.created))
	b.classes.add(b.createdIn)
	if db.opts.OnCommit != nil {
		db.opts.OnCommit(b.writes(), time.Since(began))
	}
	b.group()
	return carry
}

// runLogged executes a batch of appends, AppendAts and Ensures through the
// log: the
// ops are validated and their records encoded against the tail and a read
// transaction, the batch's puts go to the log as one entry with one
// fdatasync, and the tail takes the new state; the applier brings bbolt up
// to date later. The batch waits first while the tail is full. When the log
// cannot be written, the ops fail and so does every later write: the log's
// state on disk is unknown (see DB.walErr).
func (db *DB) runLogged(b *batch) (carry *op) {
	carry = db.take(b, true)
	if !slices.ContainsFunc(b.ops, func(o *op) bool { return o.err == nil }) {
		return carry
	}
	if db.beforeLog != nil {
		db.beforeLog()
	}
	if err := db.room(); err != nil {
		b.fail(err)
		return carry
	}
	b.wal = true
	b.nowMs = db.opts.Now().UnixMilli()
	db.keys.expire(db.keyCut(b.nowMs))
	began := time.Now()
	var err error
	for applied := 0; ; {
		if err = db.apply(b, b.ops[applied:]); err != nil || carry != nil {
			break
		}
		applied = len(b.ops)
		if carry = db.take(b, true); len(b.ops) == applied {
			break
		}
	}
	if b.tx != nil {
		_ = b.tx.Rollback()
		b.tx, b.metaB, b.records = nil, nil, nil
	}
	if err == nil {
		err = b.writeMeta()
	}
	var end uint64
	if err == nil && len(b.puts) > 0 {
		var broken bool
		if end, broken, err = db.wal.write(b.puts, db.newSegment); broken {
			db.walErr = fmt.Errorf("the write-ahead log cannot be written (%w); restart brokerd, which replays it", err)
			db.log.Error("store: " + db.walErr.Error())
			err = db.walErr
		}
	}
	b.topics = nil
	if err != nil {
		for _, t := range b.order {
			db.keys.trimAbove(t.name, t.base)
		}
		b.fail(err)
		return carry
	}
	if len(b.puts) > 0 {
		db.logged(b, end)
	}
	db.topicN.Add(int64(b.created))
	b.classes.add(b.createdIn)
	b.puts = nil
	if db.opts.OnCommit != nil {
		db.opts.OnCommit(b.writes(), time.Since(began))
	}
	b.group()
	return carry
}

// walTopic returns the topic's state from the tail, or nil after making
// sure that b's read transaction began after the last topic left the tail.
func (b *batch) walTopic(name string) (*topicTx, error) {
	tl := &b.db.tail
	tl.mu.Lock()
	tt := tl.topics[name]
	var t *topicTx
	if tt != nil {
		t = &topicTx{name: name, m: tt.m, base: tt.m.head, tail: tt.recs}
	}
	tl.mu.Unlock()
	if t != nil {
		b.add(t)
		return t, nil
	}
	return nil, b.freshRead()
}

// freshRead makes sure that b's read transaction (a log batch's) began
// after the applier's last transaction, so that bbolt has every record
// that is not in the tail (the applier bumps the tail's generation once it
// committed, before it drops records from the tail).
func (b *batch) freshRead() error {
	tl := &b.db.tail
	tl.mu.Lock()
	gen := tl.gen
	tl.mu.Unlock()
	if b.tx != nil && gen == b.rgen {
		return nil
	}
	if b.tx != nil {
		_ = b.tx.Rollback()
		b.tx = nil
	}
	tx, err := b.db.bolt.Begin(false)
	if err != nil {
		return err
	}
	b.rgen = gen
	b.tx, b.metaB, b.records = tx, tx.Bucket(metaName), tx.Bucket(recordsName)
	return nil
}

// recordAt returns topic t's record at off (ms, key, data; data aliases
// storage), ok false when there is none: from the records the batch adds,
// the tail or bbolt.
func (b *batch) recordAt(t *topicTx, off uint64) (ms int64, key string, data []byte, ok bool, err error) {
	if b.wal {
		for _, recs := range [][]broker.Record{t.pend, t.tail} {
			if n := len(recs); n > 0 && off >= recs[0].Offset && off <= recs[n-1].Offset {
				r := &recs[off-recs[0].Offset]
				return r.Time, r.Key, r.Data, true, nil
			}
		}
		if err := b.freshRead(); err != nil {
			return 0, "", nil, false, err
		}
	}
	var lk [recordKeySize]byte
	v := b.records.Get(putRecordKey(lk[:], t.m.id, off))
	if v == nil {
		return 0, "", nil, false, nil
	}
	ms, k, data, err := decodeRecord(v)
	return ms, string(k), data, err == nil, err
}

// apply runs ops, a tail of b.ops, inside b.tx in queue order.
func (db *DB) apply(b *batch, ops []*op) error {
	size := 0
	for _, o := range ops {
		size += o.arenaSize()
	}
	b.arena = make([]byte, size)
	for _, o := range ops {
		if o.err != nil {
			continue
		}
		var err error
		switch o.kind {
		case opAppend:
			err = db.applyAppend(b, o)
		case opAppendAt:
			err = db.applyAppendAt(b, o)
		case opCommit:
			err = db.applyCommit(b, o)
		case opEnsure:
			err = db.applyEnsure(b, o)
		case opMaint:
			err = db.applyMaint(b, o)
		}
		if errors.Is(err, broker.ErrTooManyTopics) {
			o.err = err // refused before it wrote anything
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// syncSequence makes the meta bucket's sequence cover the ids the log gave
// (they reach bbolt with the entries, but a failed entry's id is skipped
// too), so that a topic created in bbolt directly gets a new id.
func (db *DB) syncSequence(tx *bbolt.Tx) error {
	metaB := tx.Bucket(metaName)
	if metaB.Sequence() < db.nextID {
		if err := metaB.SetSequence(db.nextID); err != nil {
			return err
		}
	}
	return nil
}

// flushDeletes deletes the records retention removed. It runs once every
// op is applied: a deletion can leave an empty leaf page until the commit
// rebalances the tree, and a cursor stepping back over one (as finding a
// topic's last record does) would stop there.
func (b *batch) flushDeletes() error {
	for _, k := range b.dead {
		if err := b.records.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// writeMeta stores the metadata of the topics whose stored part the
// transaction changed; appends alone change none.
func (b *batch) writeMeta() error {
	for _, t := range b.order {
		if !t.dirty {
			continue
		}
		if b.wal {
			b.puts = append(b.puts, walPut{kind: walMeta, k: []byte(t.name), v: t.m.encode()})
		} else if err := b.metaB.Put([]byte(t.name), t.m.encode()); err != nil {
			return err
		}
	}
	return nil
}

// writes counts the appends and consumer commits of a committed batch.
func (b *batch) writes() int {
	n := 0
	for _, o := range b.ops {
		if o.err == nil && (o.kind == opAppend || o.kind == opAppendAt || o.kind == opCommit) {
			n++
		}
	}
	return n
}

// fail gives every op of a failed transaction the error.
func (b *batch) fail(err error) {
	err = fmt.Errorf("store: commit: %w", err)
	for _, o := range b.ops {
		if o.err == nil {
			o.err = err
		}
		o.app, o.co, o.info = broker.Appended{}, broker.ConsumerOffset{}, broker.TopicInfo{}
	}
	b.recs = nil
}

// group builds b.committed from b.recs: one run per topic, in the order the
// topics were first appended to, each in ascending offset order.
func (b *batch) group() {
	if len(b.recs) == 0 {
		return
	}
	var topics []*topicTx
	for _, p := range b.recs {
		if p.t.nrec == 0 {
			topics = append(topics, p.t)
		}
		p.t.nrec++
	}
	all := make([]broker.Record, len(b.recs))
	pos := 0
	for _, t := range topics {
		t.start, t.end = pos, pos
		pos += t.nrec
	}
	for _, p := range b.recs {
		all[p.t.end] = p.rec
		p.t.end++
	}
	b.committed = make([]broker.Committed, len(topics))
	for i, t := range topics {
		b.committed[i] = broker.Committed{Topic: t.name, Epoch: t.m.epoch, Records: all[t.start:t.end:t.end]}
	}
	b.recs, b.order = nil, nil
}

// notifyLoop reports committed batches in commit order: the hook first, then
// every op's done callback or waiting caller.
func (db *DB) notifyLoop() {
	defer db.wg.Done()
	for b := range db.notify {
		if len(b.committed) > 0 {
			if h := db.hook.Load(); h != nil {
				(*h)(b.committed)
			}
		}
		for _, o := range b.ops {
			finish(o)
		}
	}
}

// finish reports o's outcome to its caller.
func finish(o *op) {
	if o.sync {
		o.ch <- struct{}{}
		return
	}
	switch {
	case o.appendDone != nil:
		o.appendDone(o.app, o.err)
	case o.commitDone != nil:
		o.commitDone(o.co, o.err)
	}
	releaseOp(o)
}

// SetCommitHook installs fn as the commit hook: see broker.Store. fn runs on
// the notifier goroutine; while it runs, the committer goes on committing
// the next batches, but no later batch is reported and no done callback
// runs. fn may keep the records: they are not reused.
func (db *DB) SetCommitHook(fn func(batch []broker.Committed)) {
	if fn == nil {
		db.hook.Store(nil)
		return
	}
	db.hook.Store(&fn)
}
