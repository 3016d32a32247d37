package store

import (
	"bytes"
	"fmt"
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
	var out []broker.Record
	err := db.bolt.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(metaName).Get([]byte(topic))
		if v == nil {
			return fmt.Errorf("%w: %q", broker.ErrTopicNotFound, topic)
		}
		m, err := decodeMeta(v)
		if err != nil {
			return fmt.Errorf("topic %q: %w", topic, err)
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
		for k, v := c.Seek(putRecordKey(seek[:], m.id, from)); k != nil && keyID(k) == m.id && len(seen) < max; k, v = c.Next() {
			_, key, data, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("topic %q offset %d: %w", topic, keyOffset(k), err)
			}
			if len(seen) > 0 && dataBytes+len(data) > maxBytes {
				break
			}
			seen = append(seen, kv{k, v})
			dataBytes += len(data)
			keyBytes += len(key)
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

// Topic returns a topic's metadata; ok is false when it has no log.
func (db *DB) Topic(topic string) (info broker.TopicInfo, ok bool, err error) {
	if err := db.rlock(); err != nil {
		return info, false, err
	}
	defer db.mu.RUnlock()
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
	return out, nil
}
