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
// RetentionInterval; tests call it directly. It first waits until bbolt
// holds what the write-ahead log held when it was called, then work is done
// by the committer in bbolt transactions of at most 1,024 deletions per
// topic, grouped with the other direct writes queued at the same time;
// appends logged meanwhile wait for each such transaction.
// Trimming advances a topic's earliest offset, never its head; a topic
// trimmed empty keeps its head and has earliest = head+1. Trimming does not
// forget keys: a duplicate of a trimmed record still gets its offset, until
// the key expires (or the store is reopened, see the package documentation).
func (db *DB) RunRetention() error {
	// The candidates are read from bbolt: first let it take what the
	// write-ahead log holds.
	if err := db.waitApplied(); err != nil {
		return err
	}
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
		c := tx.Bucket(metaName).Cursor()
		rc := tx.Bucket(recordsName).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && after != "" && string(k) == after {
			k, v = c.Next()
		}
		var prev []byte
		for n := 0; k != nil && n < maintScanPage; k, v = c.Next() {
			n, prev = n+1, k
			m, err := decodeMetaEpoch(v, false)
			if err != nil {
				return fmt.Errorf("topic %q: %w", k, err)
			}
			due, err := db.oldestDue(k, &m, rc, nowMs)
			if err != nil {
				return fmt.Errorf("topic %q: %w", k, err)
			}
			if due {
				todo = append(todo, string(k))
			}
		}
		if k != nil {
			last = string(prev)
		}
		return nil
	})
	return todo, last, err
}

// limits returns the topic's effective retention and its age cut-off:
// records with time < ageCut are due. The topic's own retention
// (SetRetention) wins over Options.RetentionOf's, which wins over
// Options.Retention, field by field.
func (db *DB) limits(t *topicTx, nowMs int64) (r Retention, ageCut int64) {
	base := db.opts.Retention
	if f := db.opts.RetentionOf; f != nil {
		base = f(t.name).over(base)
	}
	r = t.m.ret.over(base)
	ageCut = math.MinInt64
	if r.MaxAge > 0 {
		ageCut = nowMs - r.MaxAge.Milliseconds()
	}
	return r, ageCut
}

// oldestDue reports whether the oldest record of the topic name whose
// stored metadata is m is due, deriving m's head, count and bytes on the way. It
// seeks the oldest record, and the last one only when the oldest is not
// also the last: a topic of one record costs one seek (a retention pass
// inspects every topic).
func (db *DB) oldestDue(name []byte, m *meta, rc *bbolt.Cursor, nowMs int64) (bool, error) {
	var seek [recordKeySize]byte
	k, v := rc.Seek(putRecordKey(seek[:], m.id, m.earliest))
	if k == nil || keyID(k) != m.id {
		return false, nil // nothing retained
	}
	first, lk, lv := v, k, v
	if nk, _ := rc.Next(); nk != nil && keyID(nk) == m.id {
		if k, v := lastRecord(rc, m.id); k != nil {
			lk, lv = k, v
		}
	}
	if err := m.last(keyOffset(lk), lv); err != nil {
		return false, err
	}
	t := topicTx{m: *m}
	if db.opts.RetentionOf != nil {
		t.name = string(name) // only RetentionOf needs it: no copy otherwise
	}
	r, ageCut := db.limits(&t, nowMs)
	return db.recordDue(&t, r, ageCut, first), nil
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
	// The records go into b.dead, deleted once every op is applied (see
	// flushDeletes); starting from earliest skips those already there.
	var seek [recordKeySize]byte
	c := b.records.Cursor()
	for k, v := c.Seek(putRecordKey(seek[:], t.m.id, t.m.earliest)); k != nil && keyID(k) == t.m.id && budget > 0; k, v = c.Next() {
		if keyOffset(k) > t.base || !db.recordDue(t, r, ageCut, v) {
			break // never remove what this transaction appended
		}
		ms, total, _, data, err := decodeRecordTotal(v)
		if err != nil {
			return fmt.Errorf("topic %q offset %d: %w", t.name, keyOffset(k), err)
		}
		t.m.count--
		t.m.bytes -= int64(len(data))
		t.m.earliest = keyOffset(k) + 1
		t.m.cumBase = total
		if t.m.count == 0 {
			t.m.lastTime = max(t.m.lastTime, ms)
		}
		t.dirty = true
		b.dead = append(b.dead, bytes.Clone(k))
		budget--
	}
	o.more = budget == 0
	return nil
}
