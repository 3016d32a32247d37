package store

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	bberrors "go.etcd.io/bbolt/errors"

	"github.com/brokerd/brokerd/broker"
)

// FileName is the name of the data file inside the data directory.
const FileName = "brokerd.db"

// initialMmapSize is mapped at open so that commits rarely remap: a remap
// waits for every open read transaction. It costs address space, not memory.
var initialMmapSize = func() int {
	if strconv.IntSize == 64 {
		return 1 << 30
	}
	return 256 << 20
}()

// DB is a broker.Store on a bbolt file. Open it with Open; all methods are
// safe for concurrent use.
type DB struct {
	opts Options
	log  *slog.Logger
	path string
	bolt *bbolt.DB

	// The write-ahead log (see doc.go). wal, nextID and walErr belong to
	// the committer; tail has its own mutex. direct is held exclusively
	// by the committer while it writes bbolt directly and shared by reads
	// that combine the tail with bbolt, so that they never see a tail
	// from before such a write with bbolt from after it.
	wal    *wal
	walDir string
	tail   tail
	nextID uint64 // the last topic id given
	walErr error  // the log failed: every later write fails
	direct sync.RWMutex

	beforeApply func() // tests: runs on the applier before each transaction
	beforeLog   func() // tests: runs on the committer as a log batch begins

	queue   chan *op                     // operations waiting for the committer
	keys    *keyIndex                    // idempotency keys; the committer's alone (see keyIndex)
	topicN  atomic.Int64                 // topics with a log (see topics.go)
	classes atomic.Pointer[topicClasses] // SetTopicClasses, nil without
	notify  chan *batch                  // finished batches, in commit order
	hook    atomic.Pointer[func([]broker.Committed)]

	// mu guards closed. Senders to queue and readers of bolt hold it
	// shared, so once Close holds it exclusively and sets closed, nothing
	// new reaches the queue or starts a read. Lock order: mu before any
	// bbolt lock; mu is never held while waiting for the committer.
	mu     sync.RWMutex
	closed bool

	quitting  chan struct{} // closed first by Close: unblocks senders and loops
	stop      chan struct{} // closed once closed is set: the committer drains and exits
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

var _ broker.Store = (*DB)(nil)

// Open opens the store in dir, creating dir, the data file dir/brokerd.db
// and the write-ahead log dir/wal when missing, and replays the log into
// the data file (see the package documentation). opts may be nil. Open fails with an error that says what to
// do when dir is unusable, when another process holds the store (ErrLocked,
// after opts.LockTimeout), or when the file is not a brokerd store
// (ErrNotStore), is corrupted (ErrCorrupt) or has a newer format (ErrFormat).
func Open(dir string, opts *Options) (*DB, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, errors.New("store: no data directory given; set --data")
	}
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("store: data directory %q is not a directory; choose another --data", dir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("store: cannot create data directory %q: %w; create it writable by the user running brokerd, or choose another --data", dir, err)
	}
	path := filepath.Join(dir, FileName)
	bdb, err := openBolt(path, &o)
	if err != nil {
		return nil, explainOpen(dir, path, err)
	}
	if err := initFormat(bdb, o.Logger); err != nil {
		_ = bdb.Close()
		return nil, explainOpen(dir, path, err)
	}
	db := &DB{
		opts:     o,
		log:      o.Logger,
		path:     path,
		bolt:     bdb,
		walDir:   filepath.Join(dir, walDirName),
		keys:     newKeyIndex(),
		queue:    make(chan *op, 2*max(o.MaxBatchRecords, 1)),
		notify:   make(chan *batch, notifyDepth),
		quitting: make(chan struct{}),
		stop:     make(chan struct{}),
	}
	db.tail.mu.init()
	db.tail.topics = make(map[string]*tailTopic)
	pos, err := recoverWAL(bdb, db.walDir, db)
	if err == nil {
		db.wal = &wal{dir: db.walDir, noSync: o.NoSync}
		err = db.wal.openSegment(pos)
	}
	if err == nil {
		err = bdb.View(func(tx *bbolt.Tx) error {
			db.nextID = tx.Bucket(metaName).Sequence()
			return nil
		})
	}
	if err != nil {
		if db.wal != nil {
			_ = db.wal.close()
		}
		_ = bdb.Close()
		return nil, explainOpen(dir, path, err)
	}
	db.tail.segs, db.tail.applied, db.tail.end = []uint64{pos}, pos, pos
	if err := db.rebuildKeys(); err != nil {
		_ = db.wal.close()
		_ = bdb.Close()
		return nil, explainOpen(dir, path, err)
	}
	if err := db.countTopics(); err != nil {
		_ = db.wal.close()
		_ = bdb.Close()
		return nil, explainOpen(dir, path, err)
	}
	db.wg.Add(3)
	go db.commitLoop()
	go db.notifyLoop()
	go db.applyLoop()
	if o.RetentionInterval > 0 {
		db.wg.Add(1)
		go db.retentionLoop()
	}
	return db, nil
}

// openBolt opens the bbolt file, turning a panic on a damaged file into
// ErrCorrupt.
func openBolt(path string, o *Options) (bdb *bbolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			bdb, err = nil, fmt.Errorf("%w: %v", ErrCorrupt, r)
		}
	}()
	return bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:         o.LockTimeout,
		NoFreelistSync:  true,
		FreelistType:    bbolt.FreelistMapType,
		InitialMmapSize: initialMmapSize,
		NoSync:          o.NoSync,
	})
}

// explainOpen turns an open error into one that says what to do.
func explainOpen(dir, path string, err error) error {
	switch {
	case errors.Is(err, bberrors.ErrTimeout):
		return fmt.Errorf("%w: %s: another brokerd seems to be using the directory %q; stop it or choose another --data", ErrLocked, path, dir)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("store: open %s: permission denied: the data directory and file must be readable and writable by the user running brokerd; fix the permissions or choose another --data: %w", path, err)
	case errors.Is(err, bberrors.ErrInvalid), errors.Is(err, bberrors.ErrVersionMismatch):
		return fmt.Errorf("%w: %s is not a brokerd data file (%v); move it away or choose another --data", ErrNotStore, path, err)
	case errors.Is(err, bberrors.ErrChecksum):
		return fmt.Errorf("%w: %s (%v); restore it from a backup, or move it away to start with an empty store", ErrCorrupt, path, err)
	case errors.Is(err, ErrNotStore), errors.Is(err, ErrFormat):
		return fmt.Errorf("%w: %s; move it away or choose another --data", err, path)
	case errors.Is(err, ErrCorrupt):
		return fmt.Errorf("%w: %s; restore it from a backup, or move it away to start with an empty store", err, path)
	}
	return fmt.Errorf("store: open %s: %w", path, err)
}

// initFormat checks the format marker, writing it with the top-level
// buckets when the file is new (a bbolt file without any bucket), and
// migrates a store of formats 1 and 2, or finishes a migration a crash
// interrupted.
func initFormat(bdb *bbolt.DB, log *slog.Logger) error {
	var fresh, old, upgrade bool
	err := bdb.View(func(tx *bbolt.Tx) error {
		root := tx.Bucket(rootName)
		if root == nil {
			c := tx.Cursor()
			if k, _ := c.First(); k != nil {
				return fmt.Errorf("%w: a bbolt file without the brokerd format marker", ErrNotStore)
			}
			fresh = true
			return nil
		}
		switch v := root.Get(formatKey); string(v) {
		case formatVersion:
			old = root.Get(migratingKey) != nil
		case formatV3:
			upgrade = true
		case formatV2, formatV1:
			old = true
		default:
			return fmt.Errorf("%w: format %q, this brokerd reads %q and migrates %q, %q and %q", ErrFormat, v, formatVersion, formatV3, formatV2, formatV1)
		}
		if tx.Bucket(consumersName) == nil {
			return fmt.Errorf("%w: top-level buckets missing", ErrCorrupt)
		}
		if !old && (tx.Bucket(metaName) == nil || tx.Bucket(recordsName) == nil) {
			return fmt.Errorf("%w: top-level buckets missing", ErrCorrupt)
		}
		return nil
	})
	if err == nil && old {
		err = migrate(bdb, log)
	}
	if err == nil && upgrade {
		// Format 4 is format 3 with the write-ahead log: the name changes
		// so that a brokerd without the log refuses the store rather than
		// ignore what its log holds.
		err = bdb.Update(func(tx *bbolt.Tx) error {
			return tx.Bucket(rootName).Put(formatKey, []byte(formatVersion))
		})
		if err == nil {
			log.Info("store: format " + formatV3 + " is now " + formatVersion + " (the same layout with a write-ahead log)")
		}
	}
	if err != nil || !fresh {
		return err
	}
	return bdb.Update(func(tx *bbolt.Tx) error {
		root, err := tx.CreateBucket(rootName)
		if err != nil {
			return err
		}
		if err := root.Put(formatKey, []byte(formatVersion)); err != nil {
			return err
		}
		for _, name := range [][]byte{metaName, recordsName, consumersName} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
}

// Close commits the operations already queued, fails any that arrive later
// with broker.ErrClosed, lets the applier bring bbolt up to date with the
// write-ahead log, stops the background goroutines and closes the files. It waits for running hooks and done callbacks, so it must not be
// called from one. Every method called after Close returns broker.ErrClosed.
// Close is idempotent.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		close(db.quitting)
		db.mu.Lock()
		db.closed = true
		db.mu.Unlock()
		close(db.stop)
		db.wg.Wait()
		if err := db.wal.close(); err != nil {
			db.closeErr = fmt.Errorf("store: close the write-ahead log: %w", err)
		}
		if err := db.bolt.Close(); err != nil {
			db.closeErr = fmt.Errorf("store: close: %w", err)
		}
	})
	return db.closeErr
}

// rlock takes mu shared for a read of bolt; it fails after Close.
func (db *DB) rlock() error {
	db.mu.RLock()
	if db.closed {
		db.mu.RUnlock()
		return errClosed
	}
	return nil
}

// Size returns the data file's size in bytes, 0 when it cannot be read.
func (db *DB) Size() int64 {
	fi, err := os.Stat(db.path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Path returns the data file's path.
func (db *DB) Path() string { return db.path }

// Check verifies the file's consistency (bbolt's page checks) and the store's
// invariants for every topic: its log starts at earliest with no gap, each
// record's total is the previous one's plus its data bytes (starting from
// the metadata's), topic ids are unique and every record belongs to a
// topic; it also checks the in-memory idempotency key index. It reads the whole
// file and runs while no write transaction is open, so it pauses commits for
// its duration; call it rarely on a large store.
func (db *DB) Check() error {
	o := newOp(opView)
	o.fn = func(tx *bbolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
			if len(errs) == 10 {
				break
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(errs...))
		}
		if err := db.keys.check(); err != nil {
			return err
		}
		return checkTopics(tx)
	}
	return db.runSync(o)
}

// checkTopics checks every topic's metadata against its records, and that
// every record belongs to a topic. It keeps the topics' ids in memory.
func checkTopics(tx *bbolt.Tx) error {
	metaB, records := tx.Bucket(metaName), tx.Bucket(recordsName)
	ids := make(map[uint64]string)
	var seek [recordKeySize]byte
	err := metaB.ForEach(func(name, v []byte) error {
		m, err := decodeMeta(v)
		if err != nil {
			return fmt.Errorf("%w: topic %q: bad metadata", ErrCorrupt, name)
		}
		if other, dup := ids[m.id]; dup || m.id == 0 || m.id > metaB.Sequence() {
			return fmt.Errorf("%w: topic %q: id %d (also %q; last given %d)", ErrCorrupt, name, m.id, other, metaB.Sequence())
		}
		ids[m.id] = string(name)
		next, total := m.earliest, m.cumBase
		c := records.Cursor()
		for k, v := c.Seek(putRecordKey(seek[:], m.id, 0)); k != nil && keyID(k) == m.id; k, v = c.Next() {
			if off := keyOffset(k); off != next {
				if next == m.earliest {
					return fmt.Errorf("%w: topic %q: log starts at %d, earliest is %d", ErrCorrupt, name, off, m.earliest)
				}
				return fmt.Errorf("%w: topic %q: gap after offset %d", ErrCorrupt, name, next-1)
			}
			_, t, _, data, err := decodeRecordTotal(v)
			if err != nil {
				return fmt.Errorf("%w: topic %q offset %d: bad record", ErrCorrupt, name, next)
			}
			if total += uint64(len(data)); t != total {
				return fmt.Errorf("%w: topic %q offset %d: total %d, want %d", ErrCorrupt, name, next, t, total)
			}
			next++
		}
		return nil
	})
	if err != nil {
		return err
	}
	c := records.Cursor()
	for k, _ := c.First(); k != nil; {
		id := keyID(k)
		if _, ok := ids[id]; !ok {
			return fmt.Errorf("%w: records of topic id %d, which no topic has", ErrCorrupt, id)
		}
		if id == math.MaxUint64 {
			break
		}
		k, _ = c.Seek(putRecordKey(seek[:], id+1, 0))
	}
	return nil
}

// retentionLoop applies retention every RetentionInterval until Close.
func (db *DB) retentionLoop() {
	defer db.wg.Done()
	t := time.NewTicker(db.opts.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-db.quitting:
			return
		case <-t.C:
			if err := db.RunRetention(); err != nil && !errors.Is(err, errClosed) {
				db.log.Error("store: retention failed", "err", err)
			}
		}
	}
}
