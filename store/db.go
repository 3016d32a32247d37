package store

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
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

	queue  chan *op    // operations waiting for the committer
	keys   *keyIndex   // idempotency keys; the committer's alone (see keyIndex)
	notify chan *batch // finished batches, in commit order
	hook   atomic.Pointer[func([]broker.Committed)]

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

// Open opens the store in dir, creating dir and the data file dir/brokerd.db
// when missing. opts may be nil. Open fails with an error that says what to
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
		keys:     newKeyIndex(),
		queue:    make(chan *op, 2*max(o.MaxBatchRecords, 1)),
		notify:   make(chan *batch, notifyDepth),
		quitting: make(chan struct{}),
		stop:     make(chan struct{}),
	}
	if err := db.rebuildKeys(); err != nil {
		_ = bdb.Close()
		return nil, explainOpen(dir, path, err)
	}
	db.wg.Add(2)
	go db.commitLoop()
	go db.notifyLoop()
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
// migrates a store of format 1.
func initFormat(bdb *bbolt.DB, log *slog.Logger) error {
	var fresh, v1 bool
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
		case formatV1:
			v1 = true
		default:
			return fmt.Errorf("%w: format %q, this brokerd reads %q and %q", ErrFormat, v, formatVersion, formatV1)
		}
		if tx.Bucket(topicsName) == nil || tx.Bucket(consumersName) == nil {
			return fmt.Errorf("%w: top-level buckets missing", ErrCorrupt)
		}
		return nil
	})
	if err == nil && v1 {
		err = migrateV1(bdb, log)
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
		if _, err := tx.CreateBucket(topicsName); err != nil {
			return err
		}
		_, err = tx.CreateBucket(consumersName)
		return err
	})
}

// migrateV1Topics is how many topics one transaction of migrateV1 rewrites.
const migrateV1Topics = 256

// migrateV1 turns a store of format 1 into format 2: it deletes each topic's
// idempotency key buckets (k and x; the keys are rebuilt in memory from the
// records, which carry them) and zeroes the key count of its metadata, a
// few topics per transaction, then writes the new format marker. A crash
// midway leaves format 1 with some topics done, which the next Open
// finishes.
func migrateV1(bdb *bbolt.DB, log *slog.Logger) error {
	after, topics := "", 0
	for done := false; !done; {
		err := bdb.Update(func(tx *bbolt.Tx) error {
			tb := tx.Bucket(topicsName)
			c := tb.Cursor()
			k, v := c.Seek([]byte(after))
			if k != nil && after != "" && string(k) == after {
				k, v = c.Next()
			}
			// Collect first: a bucket must not change under its cursor.
			var names []string
			for ; k != nil && len(names) < migrateV1Topics; k, v = c.Next() {
				if v == nil {
					names = append(names, string(k))
				}
			}
			done = k == nil
			for _, name := range names {
				t := tb.Bucket([]byte(name))
				for _, n := range [][]byte{keysNameV1, idxNameV1} {
					if err := t.DeleteBucket(n); err != nil && !errors.Is(err, bberrors.ErrBucketNotFound) {
						return fmt.Errorf("migrate topic %q: %w", name, err)
					}
				}
				m, err := decodeMeta(t.Get(metaKey))
				if err != nil {
					return fmt.Errorf("migrate topic %q: %w", name, err)
				}
				if m.keys != 0 {
					m.keys = 0
					if err := t.Put(metaKey, m.encode()); err != nil {
						return err
					}
				}
				after = name
			}
			topics += len(names)
			if done {
				return tx.Bucket(rootName).Put(formatKey, []byte(formatVersion))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	log.Info("store: migrated to format "+formatVersion+": idempotency keys are now kept in memory", "topics", topics)
	return nil
}

// Close commits the operations already queued, fails any that arrive later
// with broker.ErrClosed, stops the background goroutines and closes the
// file. It waits for running hooks and done callbacks, so it must not be
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
// invariants for every topic: the log holds exactly the offsets earliest..head
// with no gap, and the record and byte counts match the topic's metadata; it
// also checks the in-memory idempotency key index. It reads the whole
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

// checkTopics checks every topic's metadata against its log.
func checkTopics(tx *bbolt.Tx) error {
	topics := tx.Bucket(topicsName)
	return topics.ForEachBucket(func(name []byte) error {
		tb := topics.Bucket(name)
		v := tb.Get(metaKey)
		m, err := decodeMeta(v)
		if err != nil {
			return fmt.Errorf("%w: topic %q: bad metadata", ErrCorrupt, name)
		}
		lb := tb.Bucket(logName)
		if lb == nil {
			return fmt.Errorf("%w: topic %q: bucket missing", ErrCorrupt, name)
		}
		var n, size int64
		var first, last uint64
		err = lb.ForEach(func(k, v []byte) error {
			_, _, data, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("%w: topic %q offset %d: bad record", ErrCorrupt, name, getOffset(k))
			}
			off := getOffset(k)
			if n == 0 {
				first = off
			} else if off != last+1 {
				return fmt.Errorf("%w: topic %q: gap after offset %d", ErrCorrupt, name, last)
			}
			last = off
			n++
			size += int64(len(data))
			return nil
		})
		if err != nil {
			return err
		}
		switch {
		case n != m.count || size != m.bytes:
			return fmt.Errorf("%w: topic %q: %d records of %d bytes, metadata says %d of %d", ErrCorrupt, name, n, size, m.count, m.bytes)
		case n == 0 && m.earliest != m.head+1:
			return fmt.Errorf("%w: topic %q: empty log with earliest %d head %d", ErrCorrupt, name, m.earliest, m.head)
		case n > 0 && (first != m.earliest || last != m.head):
			return fmt.Errorf("%w: topic %q: log holds %d..%d, metadata says %d..%d", ErrCorrupt, name, first, last, m.earliest, m.head)
		}
		return nil
	})
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
