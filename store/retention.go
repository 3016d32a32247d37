package store

import (
	"bytes"
	"fmt"
	"math"

	"go.etcd.io/bbolt"
)

// maintScanPage is how many topics one read transaction of RunRetention
// inspects.
const maintScanPage = 256

// RunRetention forgets expired idempotency keys and applies retention to
// every topic, then returns. The background loop calls it every
// RetentionInterval; tests call it directly. Work is done by the committer
// in transactions of at most 1,024 deletions per topic, which share their
// fsync with the appends queued at the same time, so appends keep flowing.
// Trimming advances a topic's earliest offset, never its head; a topic
// trimmed empty keeps its head and has earliest = head+1. Trimming does not
// forget keys: a duplicate of a trimmed record still gets its offset, until
// the key expires (or the store is reopened, see the package documentation).
func (db *DB) RunRetention() error {
	after := ""
	for {
		todo, last, err := db.maintCandidates(after)
		if err != nil {
			return err
		}
		for len(todo) > 0 {
			if todo, err = db.maintain(todo); err != nil {
				return err
			}
		}
		if last == "" {
			// Every commit expires keys too; this covers a store
			// without appends.
			return db.runSync(newOp(opExpire))
		}
		after = last
	}
}

// maintain queues one retention op per topic, waits for all, and returns the
// topics with work left.
func (db *DB) maintain(topics []string) (more []string, err error) {
	ops := make([]*op, 0, len(topics))
	for _, name := range topics {
		o := newOp(opMaint)
		o.topic, o.sync = name, true
		if err = db.enqueue(nil, o); err != nil {
			releaseOp(o)
			break
		}
		ops = append(ops, o)
	}
	for _, o := range ops {
		<-o.ch
		if o.err != nil && err == nil {
			err = fmt.Errorf("store: retention of %q: %w", o.topic, o.err)
		}
		if o.more {
			more = append(more, o.topic)
		}
		releaseOp(o)
	}
	return more, err
}

// maintCandidates inspects up to maintScanPage topics after the name after
// and returns those needing work, and the last name inspected ("" at the
// end).
func (db *DB) maintCandidates(after string) (todo []string, last string, err error) {
	if err := db.rlock(); err != nil {
		return nil, "", err
	}
	defer db.mu.RUnlock()
	nowMs := db.opts.Now().UnixMilli()
	err = db.bolt.View(func(tx *bbolt.Tx) error {
		topics := tx.Bucket(topicsName)
		c := topics.Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && after != "" && string(k) == after {
			k, v = c.Next()
		}
		for n := 0; k != nil && n < maintScanPage; k, v = c.Next() {
			if v != nil {
				continue
			}
			n++
			last = string(k)
			t, err := loadTopic(tx, last)
			if err != nil {
				return err
			}
			if db.needsMaint(t, nowMs) {
				todo = append(todo, last)
			}
		}
		if k == nil {
			last = ""
		}
		return nil
	})
	return todo, last, err
}

// limits returns the topic's effective retention and its age cut-off:
// records with time < ageCut are due.
func (db *DB) limits(t *topicTx, nowMs int64) (r Retention, ageCut int64) {
	r = t.m.ret.over(db.opts.Retention)
	ageCut = math.MinInt64
	if r.MaxAge > 0 {
		ageCut = nowMs - r.MaxAge.Milliseconds()
	}
	return r, ageCut
}

// needsMaint reports whether the topic's oldest record is due.
func (db *DB) needsMaint(t *topicTx, nowMs int64) bool {
	r, ageCut := db.limits(t, nowMs)
	_, v := t.log.Cursor().First()
	return v != nil && db.recordDue(t, r, ageCut, v)
}

// recordDue reports whether the oldest record, v, must go.
func (db *DB) recordDue(t *topicTx, r Retention, ageCut int64, v []byte) bool {
	return (r.MaxMessages > 0 && t.m.count > r.MaxMessages) ||
		(r.MaxBytes > 0 && t.m.bytes > r.MaxBytes) ||
		recordTime(v) < ageCut
}

// applyMaint trims the topic's oldest records, at most maintBudget of them.
func (db *DB) applyMaint(b *batch, o *op) error {
	t, err := b.topic(o.topic)
	if err != nil || t == nil {
		return err
	}
	r, ageCut := db.limits(t, b.nowMs)
	budget := maintBudget
	// Walk forward first, then delete: a cursor that deletes as it goes
	// walks the leaves it emptied again on every step.
	var dead [][]byte
	c := t.log.Cursor()
	for k, v := c.First(); k != nil && budget > 0; k, v = c.Next() {
		if getOffset(k) > t.base || !db.recordDue(t, r, ageCut, v) {
			break // never remove what this transaction appended
		}
		t.m.count--
		t.m.bytes -= recordDataLen(v)
		t.m.earliest = getOffset(k) + 1
		t.dirty = true
		dead = append(dead, bytes.Clone(k))
		budget--
	}
	for _, k := range dead {
		if err := t.log.Delete(k); err != nil {
			return err
		}
	}
	o.more = budget == 0
	return nil
}
