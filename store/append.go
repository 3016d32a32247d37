package store

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/brokerd/brokerd/broker"
)

// AppendAsync queues an append of data to topic (see broker.Store). It does
// no I/O, but blocks while the committer's queue is full (backpressure).
// The store keeps a reference to data until done is called; the caller must
// not modify it before. done may be nil. done runs on the notifier
// goroutine, except after Close, when it runs on a goroutine of its own with
// broker.ErrClosed. done must not block, and must not call AppendAsync or
// CommitAsync: with a full queue that would wait for the notifier, itself.
func (db *DB) AppendAsync(topic string, data []byte, key string, done func(broker.Appended, error)) {
	o := newOp(opAppend)
	o.topic, o.data, o.key, o.appendDone = topic, data, key, done
	o.err = db.checkAppend(topic, key, len(data))
	if err := db.enqueue(nil, o); err != nil {
		o.err = err
		go finish(o)
	}
}

// Append appends data to topic and waits until it is durable, or until ctx
// ends: then the append may still be committed later.
func (db *DB) Append(ctx context.Context, topic string, data []byte, key string) (broker.Appended, error) {
	if err := db.checkAppend(topic, key, len(data)); err != nil {
		return broker.Appended{}, err
	}
	if err := ctx.Err(); err != nil {
		return broker.Appended{}, err
	}
	o := newOp(opAppend)
	o.topic, o.data, o.key, o.sync = topic, data, key, true
	if err := db.enqueue(ctx, o); err != nil {
		releaseOp(o)
		return broker.Appended{}, err
	}
	select {
	case <-o.ch:
		a, err := o.app, o.err
		releaseOp(o)
		return a, err
	case <-ctx.Done():
		return broker.Appended{}, ctx.Err() // o is abandoned to the garbage collector
	}
}

// Ensure creates topic's log with a new epoch when it does not exist, durably
// and ordered with the appends around it, and returns its metadata. An
// existing topic is returned without a write.
func (db *DB) Ensure(ctx context.Context, topic string) (broker.TopicInfo, error) {
	if err := checkName(topic); err != nil {
		return broker.TopicInfo{}, err
	}
	if info, ok, err := db.Topic(topic); err != nil || ok {
		return info, err
	}
	if err := ctx.Err(); err != nil {
		return broker.TopicInfo{}, err
	}
	o := newOp(opEnsure)
	o.topic, o.sync = topic, true
	if err := db.enqueue(ctx, o); err != nil {
		releaseOp(o)
		return broker.TopicInfo{}, err
	}
	select {
	case <-o.ch:
		info, err := o.info, o.err
		releaseOp(o)
		return info, err
	case <-ctx.Done():
		return broker.TopicInfo{}, ctx.Err()
	}
}

// applyEnsure creates the topic when missing.
func (db *DB) applyEnsure(b *batch, o *op) error {
	t, _, err := db.topicOrCreate(b, o.topic)
	if err != nil {
		return err
	}
	o.info = topicInfo(o.topic, &t.m)
	return nil
}

// topicOrCreate returns the topic in the open transaction, creating it with
// a new epoch when missing.
func (db *DB) topicOrCreate(b *batch, topic string) (t *topicTx, created bool, err error) {
	t, err = b.topic(topic)
	if err != nil || t != nil {
		return t, false, err
	}
	class, err := db.admitTopic(b, topic)
	if err != nil {
		return nil, false, err
	}
	epoch, err := newEpochString()
	if err != nil {
		return nil, false, err
	}
	if t, err = b.create(topic, epoch); err != nil {
		return nil, false, err
	}
	if class != "" {
		b.countCreated(class)
	}
	return t, true, nil
}

func (db *DB) checkAppend(topic, key string, size int) error {
	if err := checkName(topic); err != nil {
		return err
	}
	if size > db.opts.MaxRecordBytes {
		return fmt.Errorf("%w: %d bytes, the limit is %d", broker.ErrTooLarge, size, db.opts.MaxRecordBytes)
	}
	if len(key) > MaxKeyBytes {
		return fmt.Errorf("%w: key of %d bytes, the limit is %d", broker.ErrTooLarge, len(key), MaxKeyBytes)
	}
	return nil
}

func checkName(topic string) error {
	if topic == "" || len(topic) > MaxTopicBytes {
		return fmt.Errorf("%w: %d bytes, must be 1 to %d", ErrInvalidTopic, len(topic), MaxTopicBytes)
	}
	return nil
}

// dedupOn reports whether idempotency keys are remembered.
func (db *DB) dedupOn() bool { return db.opts.DedupWindow > 0 }

// applyAppend stores one record, or finds its key within the dedup window.
func (db *DB) applyAppend(b *batch, o *op) error {
	t, created, err := db.topicOrCreate(b, o.topic)
	if err != nil {
		return err
	}
	keyed := o.key != "" && db.dedupOn()
	if keyed {
		if off, ms, ok := db.keys.lookup(o.topic, o.key); ok {
			if b.nowMs-ms < db.opts.DedupWindow.Milliseconds() {
				o.app = broker.Appended{Topic: o.topic, Epoch: t.m.epoch, Offset: off, Time: ms, Dup: true}
				return nil
			}
			db.keys.forget(o.topic, o.key)
		}
	}
	off, ms := t.m.head+1, max(b.nowMs, t.m.lastTime)
	at, err := t.put(b, off, ms, o.key, o.data)
	if err != nil {
		return err
	}
	if keyed {
		db.rememberKey(o.topic, strings.Clone(o.key), off, ms)
	}
	o.app = broker.Appended{Topic: o.topic, Epoch: t.m.epoch, Offset: off, Time: ms, Created: created}
	b.recs = append(b.recs, pending{t: t, rec: broker.Record{Offset: off, Time: ms, Key: o.key, Data: at}})
	return nil
}

// put writes the record at offset off = head+1 and advances head. It returns
// the stored copy of data (in the arena). The stored metadata does not
// change: head, count, bytes and the last time are read back from this
// record.
func (t *topicTx) put(b *batch, off uint64, ms int64, key string, data []byte) (stored []byte, err error) {
	total := t.m.total + uint64(len(data))
	lk := putRecordKey(b.alloc(recordKeySize), t.m.id, off)
	val, at := putRecord(b.alloc(recordSize(total, key, data)), ms, total, key, data)
	if b.wal {
		b.puts = append(b.puts, walPut{kind: walRecord, k: lk, v: val})
		t.pend = append(t.pend, broker.Record{Offset: off, Time: ms, Key: key, Data: val[at:]})
	} else if err := b.records.Put(lk, val); err != nil {
		return nil, err
	}
	t.m.head = off
	t.m.count++
	t.m.bytes += int64(len(data))
	t.m.total = total
	t.m.lastTime = max(t.m.lastTime, ms)
	return val[at:], nil
}

// rememberKey remembers an idempotency key (which the index keeps: it must
// not pin a larger buffer) for the record at off, within the bounds of
// DedupMaxKeys and DedupMaxKeysTotal. If the transaction fails, the
// committer forgets it again.
func (db *DB) rememberKey(topic, key string, off uint64, ms int64) {
	db.keys.add(topic, key, off, ms, db.opts.DedupMaxKeys, db.opts.DedupMaxKeysTotal)
}

// AppendAt stores records at the offsets they carry, for replication: a
// follower stores what the owner appended. The records must have
// consecutive offsets. Those at or below the topic's head must match what is
// stored byte for byte (Time, Key and Data; records already removed by
// retention are not compared) or AppendAt fails with ErrConflict; the first
// one above head must be head+1, else ErrGap. A topic without a log is
// created with epoch, its earliest offset being the first record's (so a
// follower can start from a trimmed log); an existing log with another epoch
// gives ErrEpochMismatch. Nothing is stored when an error is returned. The
// new records go through the committer like any append and are reported to
// the commit hook; their idempotency keys are remembered.
func (db *DB) AppendAt(topic, epoch string, recs []broker.Record) error {
	if err := checkName(topic); err != nil {
		return err
	}
	if epoch == "" || len(epoch) > 255 {
		return fmt.Errorf("store: append at %q: epoch must be 1 to 255 bytes", topic)
	}
	for i := range recs {
		r := &recs[i]
		if r.Offset == 0 || r.Offset != recs[0].Offset+uint64(i) {
			return fmt.Errorf("%w: append at %q: record %d has offset %d, want %d", ErrGap, topic, i, r.Offset, max(recs[0].Offset, 1)+uint64(i))
		}
		if len(r.Data) > db.opts.MaxRecordBytes || len(r.Key) > MaxKeyBytes {
			return fmt.Errorf("%w: append at %q: offset %d", broker.ErrTooLarge, topic, r.Offset)
		}
	}
	o := newOp(opAppendAt)
	o.topic, o.epoch, o.recs = topic, epoch, recs
	return db.runSync(o)
}

// applyAppendAt validates o against the stored log before writing anything.
func (db *DB) applyAppendAt(b *batch, o *op) error {
	t, err := b.topic(o.topic)
	if err != nil {
		return err
	}
	recs := o.recs
	if t != nil && t.m.epoch != o.epoch {
		o.err = fmt.Errorf("%w: topic %q has epoch %s, not %s", ErrEpochMismatch, o.topic, t.m.epoch, o.epoch)
		return nil
	}
	if t != nil && t.m.head > 0 && len(recs) > 0 {
		first := recs[0].Offset
		if first > t.m.head+1 {
			o.err = fmt.Errorf("%w: topic %q: head is %d, records start at %d", ErrGap, o.topic, t.m.head, first)
			return nil
		}
		skip := 0
		for ; skip < len(recs) && recs[skip].Offset <= t.m.head; skip++ {
			r := &recs[skip]
			if r.Offset < t.m.earliest {
				continue
			}
			ms, key, data, ok, err := b.recordAt(t, r.Offset)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%w: topic %q: offset %d missing below head", ErrCorrupt, o.topic, r.Offset)
			}
			if ms != r.Time || key != r.Key || !bytes.Equal(data, r.Data) {
				o.err = fmt.Errorf("%w: topic %q offset %d", ErrConflict, o.topic, r.Offset)
				return nil
			}
		}
		recs = recs[skip:]
	}
	if t == nil {
		if t, err = b.create(o.topic, o.epoch); err != nil {
			return err
		}
	}
	if t.m.head == 0 && t.m.count == 0 && len(recs) > 0 {
		t.m.earliest = recs[0].Offset
		t.m.empty()
		t.dirty = true
	}
	keyCut := db.keyCut(b.nowMs)
	for i := range recs {
		r := &recs[i]
		stored, err := t.put(b, r.Offset, r.Time, r.Key, r.Data)
		if err != nil {
			return err
		}
		// A key already remembered within the window keeps its first
		// record; one whose record is already past the window is not
		// remembered (it would be expired at once).
		if r.Key != "" && db.dedupOn() && r.Time > keyCut {
			_, ms, ok := db.keys.lookup(o.topic, r.Key)
			if ok && ms <= keyCut {
				db.keys.forget(o.topic, r.Key)
				ok = false
			}
			if !ok {
				db.rememberKey(o.topic, strings.Clone(r.Key), r.Offset, r.Time)
			}
		}
		b.recs = append(b.recs, pending{t: t, rec: broker.Record{Offset: r.Offset, Time: r.Time, Key: r.Key, Data: stored}})
	}
	return nil
}
