package store

import (
	"bytes"
	"fmt"
	"io"
	"math"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

// truncateBudget bounds the deletions of one TruncateAfter transaction.
const truncateBudget = 10_000

// writeTx runs fn alone in a write transaction of the committer, ordered
// with the appends queued before and after it; once the transaction is
// committed, after (which may be nil) runs on the committer, where it may
// change the idempotency key index.
func (db *DB) writeTx(fn func(*bbolt.Tx) error, after func()) error {
	o := newOp(opWrite)
	o.fn, o.after = fn, after
	return db.runSync(o)
}

// loadTopic returns topic's metadata in tx.
func loadTopic(tx *bbolt.Tx, topic string) (*topicTx, error) {
	m, ok, err := loadMeta(tx.Bucket(metaName), tx.Bucket(recordsName), topic)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %q", broker.ErrTopicNotFound, topic)
	}
	return &topicTx{name: topic, m: m}, nil
}

// putMeta stores the stored part of t's metadata.
func putMeta(tx *bbolt.Tx, t *topicTx) error {
	return tx.Bucket(metaName).Put([]byte(t.name), t.m.encode())
}

// TruncateAfter removes topic's records with offsets above offset and makes
// offset the head, for a follower whose log diverged from its owner's. The
// epoch is kept. It does nothing when offset >= head. A long suffix is
// removed in several transactions of at most 10,000 records, each leaving a
// consistent log whose head moves down. Idempotency keys of the removed
// records are forgotten.
func (db *DB) TruncateAfter(topic string, offset uint64) error {
	if err := checkName(topic); err != nil {
		return err
	}
	for {
		more := false
		var head uint64
		err := db.writeTx(func(tx *bbolt.Tx) error {
			t, err := loadTopic(tx, topic)
			if err != nil {
				return err
			}
			if head = t.m.head; offset >= head {
				return nil
			}
			// Walk back from the end first, then delete: a cursor that
			// deletes as it goes meets the leaves it emptied again on
			// every step.
			records := tx.Bucket(recordsName)
			c := records.Cursor()
			var dead [][]byte
			k, v := lastRecord(c, t.m.id)
			for ; k != nil && keyID(k) == t.m.id && keyOffset(k) > offset; k, v = c.Prev() {
				if len(dead) == truncateBudget {
					more = true
					break
				}
				dead = append(dead, bytes.Clone(k))
			}
			for _, k := range dead {
				if err := records.Delete(k); err != nil {
					return err
				}
			}
			switch {
			case k != nil && keyID(k) == t.m.id:
				// k is the new last record (its offset is offset when
				// the whole suffix went).
				err = t.m.last(keyOffset(k), v)
			default:
				// Nothing retained is left: the log is empty with head
				// offset. The total goes on from cumBase.
				t.m.earliest = offset + 1
				t.m.empty()
			}
			if err != nil {
				return err
			}
			head = t.m.head
			return putMeta(tx, t)
		}, func() { db.keys.trimAbove(topic, head) })
		if err != nil {
			return fmt.Errorf("store: truncate %q after %d: %w", topic, offset, err)
		}
		if !more {
			return nil
		}
	}
}

// ResetTopic drops topic's whole log and idempotency keys and starts a new
// epoch, returned; offsets start again at 1. Its retention setting is kept.
// Consumer offsets are kept too: they carry the old epoch. The old log is
// freed in one transaction, which takes time proportional to its size.
func (db *DB) ResetTopic(topic string) (newEpoch string, err error) {
	if err := checkName(topic); err != nil {
		return "", err
	}
	err = db.writeTx(func(tx *bbolt.Tx) error {
		t, err := loadTopic(tx, topic)
		if err != nil {
			return err
		}
		epoch, err := newEpochString()
		if err != nil {
			return err
		}
		if err := deleteRecords(tx, t.m.id); err != nil {
			return err
		}
		t.m = meta{id: t.m.id, epoch: epoch, earliest: 1, ret: t.m.ret}
		if err := putMeta(tx, t); err != nil {
			return err
		}
		newEpoch = epoch
		return nil
	}, func() { db.keys.drop(topic) })
	if err != nil {
		return "", fmt.Errorf("store: reset %q: %w", topic, err)
	}
	return newEpoch, nil
}

// newEpochString is newEpoch, a variable so that tests can fail it.
var newEpochString = newEpoch

// deleteRecords deletes every record of the topic with the given id, in
// runs: each run is collected walking forward from where the last one
// ended, so the walk never crosses the leaves already emptied.
func deleteRecords(tx *bbolt.Tx, id uint64) error {
	records := tx.Bucket(recordsName)
	var seek [recordKeySize]byte
	from := putRecordKey(seek[:], id, 0)
	dead := make([][]byte, 0, 1024)
	for {
		dead = dead[:0]
		c := records.Cursor()
		for k, _ := c.Seek(from); k != nil && keyID(k) == id && len(dead) < cap(dead); k, _ = c.Next() {
			dead = append(dead, bytes.Clone(k))
		}
		if len(dead) == 0 {
			return nil
		}
		for _, k := range dead {
			if err := records.Delete(k); err != nil {
				return err
			}
		}
		last := dead[len(dead)-1]
		if keyOffset(last) == math.MaxUint64 {
			return nil
		}
		from = putRecordKey(seek[:], id, keyOffset(last)+1)
	}
}

// DeleteTopic removes topic's log, metadata and idempotency keys. Consumer
// offsets in it are kept: they carry the epoch, which a new log of the same
// name will not have.
func (db *DB) DeleteTopic(topic string) error {
	if err := checkName(topic); err != nil {
		return err
	}
	err := db.writeTx(func(tx *bbolt.Tx) error {
		t, err := loadTopic(tx, topic)
		if err != nil {
			return err
		}
		if err := deleteRecords(tx, t.m.id); err != nil {
			return err
		}
		return tx.Bucket(metaName).Delete([]byte(topic))
	}, func() {
		db.keys.drop(topic)
		db.topicN.Add(-1)
		db.classes.Load().drop(topic)
	})
	if err != nil {
		return fmt.Errorf("store: delete %q: %w", topic, err)
	}
	return nil
}

// SetRetention stores topic's own retention; its zero fields inherit
// Options.Retention (so SetRetention(topic, Retention{}) clears the
// setting) and negative fields mean no limit. The setting is persisted and
// applied by the next retention pass. A topic without a log gives
// broker.ErrTopicNotFound.
func (db *DB) SetRetention(topic string, r Retention) error {
	if err := checkName(topic); err != nil {
		return err
	}
	err := db.writeTx(func(tx *bbolt.Tx) error {
		t, err := loadTopic(tx, topic)
		if err != nil {
			return err
		}
		t.m.ret = r
		return putMeta(tx, t)
	}, nil)
	if err != nil {
		return fmt.Errorf("store: set retention of %q: %w", topic, err)
	}
	return nil
}

// Backup writes a consistent copy of the store's file to w, from one bbolt
// read transaction: appends and the other writes go on meanwhile, except
// one that must grow the file, which waits for the copy to end. size, when
// not nil, is called with the copy's length in bytes before its first byte
// is written. The copy is a store file that Open (and brokerd check)
// accepts. It returns the bytes written; Close waits for a Backup under way.
// The copy holds everything acknowledged before Backup was called: it first
// waits until bbolt holds what the write-ahead log held then (without the
// log: a restored copy goes on from its own position).
func (db *DB) Backup(w io.Writer, size func(int64)) (int64, error) {
	if err := db.waitApplied(); err != nil {
		return 0, err
	}
	if err := db.rlock(); err != nil {
		return 0, err
	}
	defer db.mu.RUnlock()
	var n int64
	err := db.bolt.View(func(tx *bbolt.Tx) error {
		if size != nil {
			size(tx.Size())
		}
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}
