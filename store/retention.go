package store

import (
	"fmt"
	"math"

	"go.etcd.io/bbolt"
)

// maintScanPage is how many topics one read transaction of RunRetention
// inspects.
const maintScanPage = 256

// RunRetention applies retention to every topic and forgets expired
// idempotency keys, then returns. The background loop calls it every
// RetentionInterval; tests call it directly. Work is done by the committer
// in transactions of at most 1,024 deletions per topic, which share their
// fsync with the appends queued at the same time, so appends keep flowing.
// Trimming advances a topic's earliest offset, never its head; a topic
// trimmed empty keeps its head and has earliest = head+1.
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
			return nil
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

// limits returns the topic's effective retention and key expiry cut-offs:
// records with time < ageCut and keys with time <= keyCut are due.
func (db *DB) limits(t *topicTx, nowMs int64) (r Retention, ageCut, keyCut int64) {
	r = t.m.ret.over(db.opts.Retention)
	ageCut = math.MinInt64
	if r.MaxAge > 0 {
		ageCut = nowMs - r.MaxAge.Milliseconds()
	}
	keyCut = math.MaxInt64 // idempotency off: forget every key
	if db.dedupOn() {
		keyCut = nowMs - db.opts.DedupWindow.Milliseconds()
	}
	return r, ageCut, keyCut
}

// needsMaint reports whether the topic's oldest record or key is due.
func (db *DB) needsMaint(t *topicTx, nowMs int64) bool {
	r, ageCut, keyCut := db.limits(t, nowMs)
	if _, v := t.log.Cursor().First(); v != nil && db.recordDue(t, r, ageCut, v) {
		return true
	}
	if t.m.keys > int64(db.opts.DedupMaxKeys) {
		return true
	}
	if k, v := t.ix.Cursor().First(); k != nil {
		_, ms, ok := t.lookupKey(v)
		return !ok || ms <= keyCut
	}
	return false
}

// recordDue reports whether the oldest record, v, must go.
func (db *DB) recordDue(t *topicTx, r Retention, ageCut int64, v []byte) bool {
	return (r.MaxMessages > 0 && t.m.count > r.MaxMessages) ||
		(r.MaxBytes > 0 && t.m.bytes > r.MaxBytes) ||
		recordTime(v) < ageCut
}

// applyMaint trims the topic's oldest records and forgets its expired or
// excess idempotency keys, at most maintBudget deletions in all.
func (db *DB) applyMaint(b *batch, o *op) error {
	t, err := b.topic(o.topic)
	if err != nil || t == nil {
		return err
	}
	r, ageCut, keyCut := db.limits(t, b.nowMs)
	budget := maintBudget
	c := t.log.Cursor()
	for k, v := c.First(); k != nil && budget > 0; k, v = c.First() {
		if getOffset(k) > t.base || !db.recordDue(t, r, ageCut, v) {
			break // never remove what this transaction appended
		}
		off, n := getOffset(k), recordDataLen(v)
		if err := c.Delete(); err != nil {
			return err
		}
		t.m.count--
		t.m.bytes -= n
		t.m.earliest = off + 1
		t.dirty = true
		budget--
	}
	ic := t.ix.Cursor()
	for k, v := ic.First(); k != nil && budget > 0; k, v = ic.First() {
		off, ms, ok := t.lookupKey(v)
		if ok && ms > keyCut && t.m.keys <= int64(db.opts.DedupMaxKeys) {
			break
		}
		if ok && off == getOffset(k) {
			if err := t.keys.Delete(v); err != nil {
				return err
			}
		}
		if err := ic.Delete(); err != nil {
			return err
		}
		t.m.keys--
		t.dirty = true
		budget--
	}
	o.more = budget == 0
	return nil
}
