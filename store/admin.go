package store

import (
	"bytes"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"
	bberrors "go.etcd.io/bbolt/errors"

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

// loadTopic returns topic's bucket and metadata in tx.
func loadTopic(tx *bbolt.Tx, topic string) (*topicTx, error) {
	tb := topicBucket(tx, topic)
	if tb == nil {
		return nil, fmt.Errorf("%w: %q", broker.ErrTopicNotFound, topic)
	}
	m, err := decodeMeta(tb.Get(metaKey))
	if err != nil {
		return nil, fmt.Errorf("topic %q: %w", topic, err)
	}
	t := &topicTx{name: topic, b: tb, m: m}
	return t, t.open()
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
			// every step (and bbolt's Last never returns once every leaf
			// of a multi-page log is empty).
			c := t.log.Cursor()
			var dead [][]byte
			k, v := c.Last()
			for ; k != nil && getOffset(k) > offset; k, v = c.Prev() {
				if len(dead) == truncateBudget {
					more = true
					break
				}
				t.m.count--
				t.m.bytes -= recordDataLen(v)
				dead = append(dead, bytes.Clone(k))
			}
			if more {
				t.m.head = getOffset(k)
			} else {
				t.m.head = offset
			}
			if t.m.count == 0 {
				t.m.earliest = t.m.head + 1
			} else if k != nil {
				t.m.lastTime = recordTime(v)
			}
			for _, k := range dead {
				if err := t.log.Delete(k); err != nil {
					return err
				}
			}
			head = t.m.head
			return t.b.Put(metaKey, t.m.encode())
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
		if err := t.b.DeleteBucket(logName); err != nil {
			return err
		}
		if _, err := t.b.CreateBucket(logName); err != nil {
			return err
		}
		m := meta{epoch: epoch, earliest: 1, ret: t.m.ret}
		if err := t.b.Put(metaKey, m.encode()); err != nil {
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

// DeleteTopic removes topic's log, metadata and idempotency keys. Consumer
// offsets in it are kept: they carry the epoch, which a new log of the same
// name will not have.
func (db *DB) DeleteTopic(topic string) error {
	if err := checkName(topic); err != nil {
		return err
	}
	err := db.writeTx(func(tx *bbolt.Tx) error {
		err := tx.Bucket(topicsName).DeleteBucket([]byte(topic))
		if errors.Is(err, bberrors.ErrBucketNotFound) {
			return fmt.Errorf("%w: %q", broker.ErrTopicNotFound, topic)
		}
		return err
	}, func() { db.keys.drop(topic) })
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
		return t.b.Put(metaKey, t.m.encode())
	}, nil)
	if err != nil {
		return fmt.Errorf("store: set retention of %q: %w", topic, err)
	}
	return nil
}
