package store

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

// Topics as a resource: how many there are (TopicCount), a bound on new ones
// (Options.MaxTopics) and deleting those that hold nothing and have been
// idle (IdleTopics, DeleteIdle).
//
// The count is kept in memory: counted from the metadata when the store
// opens, raised by the committer once a transaction that created topics
// commits, lowered when DeleteTopic or DeleteIdle commits.

// countTopics sets the topic count from the metadata (Open).
func (db *DB) countTopics() error {
	return db.bolt.View(func(tx *bbolt.Tx) error {
		db.topicN.Store(int64(tx.Bucket(metaName).Stats().KeyN))
		return nil
	})
}

// TopicCount returns the number of topics that have a log.
func (db *DB) TopicCount() int64 { return db.topicN.Load() }

// admitTopic refuses to create topic beyond Options.MaxTopics, or beyond
// its class's bound (SetTopicClasses), counting those the open transaction
// created. It returns the topic's class when it has a bound: the caller
// counts the topic in it once created (batch.countCreated).
func (db *DB) admitTopic(b *batch, topic string) (class string, err error) {
	if max := db.opts.MaxTopics; max > 0 && db.topicN.Load()+int64(b.created) >= int64(max) {
		return "", fmt.Errorf("%w: the store holds %d topics, the limit is %d", broker.ErrTooManyTopics, db.topicN.Load()+int64(b.created), max)
	}
	cl := db.classes.Load()
	if cl == nil {
		return "", nil
	}
	class, max := cl.fn(topic)
	if max <= 0 {
		return "", nil
	}
	if b.classes != cl {
		b.classes, b.createdIn = cl, nil // classes set since the batch began: none of it counted yet
	}
	if n := cl.count(class) + b.createdIn[class]; n >= int64(max) {
		return "", fmt.Errorf("%w: the store holds %d topics of %s, its limit is %d", broker.ErrTooManyTopics, n, class, max)
	}
	return class, nil
}

// countCreated counts a topic the open transaction created in class.
func (b *batch) countCreated(class string) {
	if b.createdIn == nil {
		b.createdIn = make(map[string]int64)
	}
	b.createdIn[class]++
}

// topicClasses is the classes set by SetTopicClasses and the topics each
// bounded class holds. A nil *topicClasses holds nothing.
type topicClasses struct {
	fn     broker.TopicClass
	mu     sync.Mutex
	counts map[string]int64
}

func (cl *topicClasses) count(class string) int64 {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.counts[class]
}

// add counts topics created in their classes once their transaction
// committed.
func (cl *topicClasses) add(created map[string]int64) {
	if cl == nil || len(created) == 0 {
		return
	}
	cl.mu.Lock()
	for class, n := range created {
		cl.counts[class] += n
	}
	cl.mu.Unlock()
}

// drop uncounts a deleted topic.
func (cl *topicClasses) drop(topic string) {
	if cl == nil {
		return
	}
	class, max := cl.fn(topic)
	if max <= 0 {
		return
	}
	cl.mu.Lock()
	if cl.counts[class] > 0 {
		cl.counts[class]--
	}
	cl.mu.Unlock()
}

// SetTopicClasses bounds the topics of classes of names as MaxTopics bounds
// them all: an append or Ensure that would create a topic of a class that
// holds its bound already fails with broker.ErrTooManyTopics and creates
// nothing (AppendAt is not bounded). Topics above a bound that was lowered
// are kept. fn replaces the previous classes; nil removes them. It counts
// the topics of each bounded class in one pass over the topics' names, in
// the committer's order with the appends around it, so call it once per
// change of fn, not per topic. fn is called on the committer: it must be
// fast and must not call the store.
func (db *DB) SetTopicClasses(fn broker.TopicClass) error {
	if fn == nil {
		return db.writeTx(func(*bbolt.Tx) error { return nil }, func() { db.classes.Store(nil) })
	}
	cl := &topicClasses{fn: fn, counts: make(map[string]int64)}
	return db.writeTx(func(tx *bbolt.Tx) error {
		clear(cl.counts)
		c := tx.Bucket(metaName).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if class, max := fn(string(k)); max > 0 {
				cl.counts[class]++
			}
		}
		return nil
	}, func() { db.classes.Store(cl) })
}

// IdleTopics inspects up to max topics after the name after ("" for the
// first) and returns those that hold no record and whose last record, or
// creation when they never had one, is at or before before: the topics
// DeleteIdle would delete (it checks again). last is the last name
// inspected, "" once every topic was. It reads bbolt in one short read
// transaction, one seek per topic, and skips the topics of the log's tail.
func (db *DB) IdleTopics(after string, max int, before time.Time) (idle []broker.TopicInfo, last string, err error) {
	if err := db.rlock(); err != nil {
		return nil, "", err
	}
	defer db.mu.RUnlock()
	if max <= 0 {
		max = DefaultReadMax
	}
	cut := before.UnixMilli()
	err = db.bolt.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(metaName).Cursor()
		rc := tx.Bucket(recordsName).Cursor()
		var seek [recordKeySize]byte
		k, v := c.Seek([]byte(after))
		if k != nil && after != "" && string(k) == after {
			k, v = c.Next()
		}
		var prev []byte
		for n := 0; k != nil && n < max; k, v = c.Next() {
			n, prev = n+1, k
			m, err := decodeMetaEpoch(v, false)
			if err != nil {
				return fmt.Errorf("topic %q: %w", k, err)
			}
			if m.lastTime > cut {
				continue
			}
			if rk, _ := rc.Seek(putRecordKey(seek[:], m.id, 0)); rk != nil && keyID(rk) == m.id {
				continue // it holds records
			}
			if db.inTail(k) {
				continue // it has records in the log, not yet in bbolt
			}
			if m, err = decodeMeta(v); err != nil {
				return fmt.Errorf("topic %q: %w", k, err)
			}
			idle = append(idle, topicInfo(string(k), &m))
		}
		if k != nil {
			last = string(prev)
		}
		return nil
	})
	return idle, last, err
}

// inTail reports whether topic has records in the write-ahead log that
// bbolt does not have yet.
func (db *DB) inTail(topic []byte) bool {
	db.tail.mu.Lock()
	_, ok := db.tail.topics[string(topic)]
	db.tail.mu.Unlock()
	return ok
}

// DeleteIdle deletes, in one transaction, the logs and metadata of the
// given topics (as DeleteTopic does) that still have the given epoch, hold
// no record and whose last record (or creation) is at or before before, and
// returns the names of those it deleted. It runs in the committer's order
// with the appends around it: an append committed first keeps its topic,
// one committed after creates a new log with a new epoch. Consumer offsets
// in them are kept (they carry the old epoch).
func (db *DB) DeleteIdle(topics []broker.TopicInfo, before time.Time) (deleted []string, err error) {
	for _, info := range topics {
		if err := checkName(info.Topic); err != nil {
			return nil, err
		}
	}
	cut := before.UnixMilli()
	err = db.writeTx(func(tx *bbolt.Tx) error {
		deleted = deleted[:0]
		for _, info := range topics {
			t, err := loadTopic(tx, info.Topic)
			if errors.Is(err, broker.ErrTopicNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if t.m.epoch != info.Epoch || t.m.count != 0 || t.m.lastTime > cut {
				continue
			}
			if err := tx.Bucket(metaName).Delete([]byte(info.Topic)); err != nil {
				return err
			}
			deleted = append(deleted, info.Topic)
		}
		return nil
	}, func() {
		cl := db.classes.Load()
		for _, topic := range deleted {
			db.keys.drop(topic)
			cl.drop(topic)
		}
		db.topicN.Add(-int64(len(deleted)))
	})
	if err != nil {
		return nil, fmt.Errorf("store: delete idle topics: %w", err)
	}
	return deleted, nil
}
