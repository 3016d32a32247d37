package store

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

// loadMeta returns topic's metadata, with head, count, bytes and the last
// time taken from its last record; ok is false when the topic has no log.
func loadMeta(metaB, records *bbolt.Bucket, topic string) (m meta, ok bool, err error) {
	v := metaB.Get([]byte(topic))
	if v == nil {
		return m, false, nil
	}
	if m, err = decodeMeta(v); err != nil {
		return m, false, fmt.Errorf("topic %q: %w", topic, err)
	}
	if err := m.derive(records.Cursor()); err != nil {
		return m, false, fmt.Errorf("topic %q: %w", topic, err)
	}
	return m, true, nil
}

// derive sets m's derived fields from its topic's last record.
func (m *meta) derive(c *bbolt.Cursor) error {
	if k, v := lastRecord(c, m.id); k != nil {
		return m.last(keyOffset(k), v)
	}
	m.empty()
	return nil
}

// lastRecord returns the last record of the topic with the given id, nil
// when it has none. It must not be used after deletions in the same
// transaction: stepping back over a leaf page they emptied, the cursor
// stops there.
func lastRecord(c *bbolt.Cursor, id uint64) (k, v []byte) {
	var seek [recordKeySize]byte
	if k, v = c.Seek(putRecordKey(seek[:], id+1, 0)); k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil || keyID(k) != id {
		return nil, nil
	}
	return k, v
}

// kv is a log entry seen in a read transaction; it aliases the mapped file.
type kv struct{ k, v []byte }

var kvPool = sync.Pool{New: func() any { s := make([]kv, 0, 256); return &s }}

// Read returns records of topic with offsets >= from in ascending order: at
// most max records and about maxBytes of data, but always at least one
// record when one exists (see broker.Store). A from below the topic's
// earliest offset starts at earliest. max <= 0 means DefaultReadMax and
// maxBytes <= 0 DefaultReadBytes. A topic without a log gives
// broker.ErrTopicNotFound. The records are copies, in one allocation per
// call, which the caller may keep.
func (db *DB) Read(topic string, from uint64, max, maxBytes int) ([]broker.Record, error) {
	if max <= 0 {
		max = DefaultReadMax
	}
	if maxBytes <= 0 {
		maxBytes = DefaultReadBytes
	}
	if err := db.rlock(); err != nil {
		return nil, err
	}
	defer db.mu.RUnlock()
	db.direct.RLock()
	defer db.direct.RUnlock()
	// The tail first: what leaves it is in bbolt by then, so a read
	// transaction begun afterwards has it.
	tt, inTail := db.tailState(topic)
	first := tt.m.head + 1 // the first offset only the tail has
	if len(tt.recs) > 0 {
		first = tt.recs[0].Offset
	}
	if inTail && from >= first {
		return tailRecords(tt.recs, from, max, maxBytes, nil, 0, 0), nil
	}
	var out []broker.Record
	err := db.bolt.View(func(tx *bbolt.Tx) error {
		m := tt.m
		if !inTail {
			v := tx.Bucket(metaName).Get([]byte(topic))
			if v == nil {
				return fmt.Errorf("%w: %q", broker.ErrTopicNotFound, topic)
			}
			var err error
			if m, err = decodeMeta(v); err != nil {
				return fmt.Errorf("topic %q: %w", topic, err)
			}
		}
		sp := kvPool.Get().(*[]kv)
		seen := (*sp)[:0]
		defer func() {
			clear(seen)
			*sp = seen[:0]
			kvPool.Put(sp)
		}()
		var seek [recordKeySize]byte
		c := tx.Bucket(recordsName).Cursor()
		dataBytes, keyBytes := 0, 0
		full := false // a limit stopped the scan before the tail's records
		for k, v := c.Seek(putRecordKey(seek[:], m.id, from)); k != nil && keyID(k) == m.id && (!inTail || keyOffset(k) < first); k, v = c.Next() {
			_, key, data, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("topic %q offset %d: %w", topic, keyOffset(k), err)
			}
			if len(seen) == max || len(seen) > 0 && dataBytes+len(data) > maxBytes {
				full = true
				break
			}
			seen = append(seen, kv{k, v})
			dataBytes += len(data)
			keyBytes += len(key)
		}
		if inTail && !full {
			out = tailRecords(tt.recs, first, max, maxBytes, seen, dataBytes, keyBytes)
			return nil
		}
		if len(seen) == 0 {
			out = []broker.Record{}
			return nil
		}
		// One allocation for all data, one string for all keys.
		arena := make([]byte, dataBytes)
		var keyBuf []byte
		if keyBytes > 0 {
			keyBuf = make([]byte, 0, keyBytes)
		}
		out = make([]broker.Record, len(seen))
		at := 0
		for i, e := range seen {
			ms, key, data, _ := decodeRecord(e.v)
			n := copy(arena[at:], data)
			out[i] = broker.Record{Offset: keyOffset(e.k), Time: ms, Data: arena[at : at+n : at+n]}
			at += n
			keyBuf = append(keyBuf, key...)
		}
		if keyBytes > 0 {
			keys, at := string(keyBuf), 0
			for i, e := range seen {
				_, key, _, _ := decodeRecord(e.v)
				out[i].Key = keys[at : at+len(key)]
				at += len(key)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: read: %w", err)
	}
	return out, nil
}

// tailRecords returns copies of the records seen in bbolt (with their data
// and key bytes) followed by those of recs (the tail's, consecutive
// offsets) from offset from, within max records and about maxBytes of data
// (at least one record when there is one), in one allocation for all data
// and one string for all keys, like Read.
func tailRecords(recs []broker.Record, from uint64, max, maxBytes int, seen []kv, dataBytes, keyBytes int) []broker.Record {
	if len(recs) > 0 && from > recs[0].Offset {
		recs = recs[min(from-recs[0].Offset, uint64(len(recs))):]
	}
	n := 0
	for n < len(recs) && len(seen)+n < max {
		if len(seen)+n > 0 && dataBytes+len(recs[n].Data) > maxBytes {
			break
		}
		dataBytes += len(recs[n].Data)
		keyBytes += len(recs[n].Key)
		n++
	}
	recs = recs[:n]
	out := make([]broker.Record, 0, len(seen)+n)
	arena := make([]byte, 0, dataBytes)
	keyBuf := make([]byte, 0, keyBytes)
	for _, e := range seen {
		ms, key, data, _ := decodeRecord(e.v)
		at := len(arena)
		arena = append(arena, data...)
		keyBuf = append(keyBuf, key...)
		out = append(out, broker.Record{Offset: keyOffset(e.k), Time: ms, Data: arena[at:len(arena):len(arena)], Key: string(key)})
	}
	for _, r := range recs {
		at := len(arena)
		arena = append(arena, r.Data...)
		keyBuf = append(keyBuf, r.Key...)
		out = append(out, broker.Record{Offset: r.Offset, Time: r.Time, Data: arena[at:len(arena):len(arena)], Key: r.Key})
	}
	if keyBytes > 0 {
		keys, at := string(keyBuf), 0
		for i := range out {
			k := len(out[i].Key)
			out[i].Key = keys[at : at+k]
			at += k
		}
	}
	return out
}

// Topic returns a topic's metadata; ok is false when it has no log.
func (db *DB) Topic(topic string) (info broker.TopicInfo, ok bool, err error) {
	if err := db.rlock(); err != nil {
		return info, false, err
	}
	defer db.mu.RUnlock()
	if tt, ok := db.tailState(topic); ok {
		return topicInfo(topic, &tt.m), true, nil
	}
	err = db.bolt.View(func(tx *bbolt.Tx) error {
		m, found, err := loadMeta(tx.Bucket(metaName), tx.Bucket(recordsName), topic)
		if err != nil || !found {
			return err
		}
		info, ok = topicInfo(topic, &m), true
		return nil
	})
	if err != nil {
		return broker.TopicInfo{}, false, fmt.Errorf("store: topic %q: %w", topic, err)
	}
	return info, ok, nil
}

func topicInfo(topic string, m *meta) broker.TopicInfo {
	return broker.TopicInfo{Topic: topic, Epoch: m.epoch, Earliest: m.earliest, Head: m.head, Count: m.count, Bytes: m.bytes}
}

// Topics lists topics in name order (byte order), starting after the name
// after ("" for the first page), at most max of them (DefaultReadMax when
// max <= 0).
func (db *DB) Topics(after string, max int) ([]broker.TopicInfo, error) {
	if max <= 0 {
		max = DefaultReadMax
	}
	if err := db.rlock(); err != nil {
		return nil, err
	}
	defer db.mu.RUnlock()
	// Topics the log created may not be in bbolt yet: take them from the
	// tail first (one that leaves it meanwhile is in bbolt by then).
	created := db.tailCreated(after, max)
	var out []broker.TopicInfo
	err := db.bolt.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(metaName).Cursor()
		rc := tx.Bucket(recordsName).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && after != "" && bytes.Equal(k, []byte(after)) {
			k, v = c.Next()
		}
		for ; k != nil && len(out) < max; k, v = c.Next() {
			m, err := decodeMeta(v)
			if err == nil {
				err = m.derive(rc)
			}
			if err != nil {
				return fmt.Errorf("topic %q: %w", k, err)
			}
			out = append(out, topicInfo(string(k), &m))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: topics: %w", err)
	}
	// The tail's state is newer than bbolt's.
	db.tail.mu.Lock()
	for i := range out {
		if tt := db.tail.topics[out[i].Topic]; tt != nil {
			out[i] = topicInfo(out[i].Topic, &tt.m)
		}
	}
	db.tail.mu.Unlock()
	if len(created) == 0 {
		return out, nil
	}
	merged := make([]broker.TopicInfo, 0, min(len(out)+len(created), max))
	for len(merged) < max && (len(out) > 0 || len(created) > 0) {
		switch {
		case len(created) == 0 || len(out) > 0 && out[0].Topic < created[0].Topic:
			merged, out = append(merged, out[0]), out[1:]
		case len(out) == 0 || created[0].Topic < out[0].Topic:
			merged, created = append(merged, created[0]), created[1:]
		default: // in both: the tail's state is the newer
			merged, out, created = append(merged, created[0]), out[1:], created[1:]
		}
	}
	return merged, nil
}

// tailCreated returns the first max topics after the name after that the
// log created and the tail still holds, in name order.
func (db *DB) tailCreated(after string, max int) []broker.TopicInfo {
	tl := &db.tail
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if tl.created == 0 {
		return nil
	}
	var out []broker.TopicInfo
	for name, tt := range tl.topics {
		if tt.created && name > after {
			out = append(out, topicInfo(name, &tt.m))
		}
	}
	slices.SortFunc(out, func(a, b broker.TopicInfo) int { return strings.Compare(a.Topic, b.Topic) })
	return out[:min(len(out), max)]
}
