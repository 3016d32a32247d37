package store

import (
	"bytes"
	"fmt"
	"sync"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

// topicBucket returns topic's bucket in tx, nil when the topic has no log.
func topicBucket(tx *bbolt.Tx, topic string) *bbolt.Bucket {
	return tx.Bucket(topicsName).Bucket([]byte(topic))
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
		tb := topicBucket(tx, topic)
		if tb == nil {
			return fmt.Errorf("%w: %q", broker.ErrTopicNotFound, topic)
		}
		lb := tb.Bucket(logName)
		if lb == nil {
			return fmt.Errorf("%w: topic %q: log bucket missing", ErrCorrupt, topic)
		}
		sp := kvPool.Get().(*[]kv)
		seen := (*sp)[:0]
		defer func() {
			clear(seen)
			*sp = seen[:0]
			kvPool.Put(sp)
		}()
		var seek [8]byte
		c := lb.Cursor()
		dataBytes, keyBytes := 0, 0
		for k, v := c.Seek(putOffset(seek[:], from)); k != nil && len(seen) < max; k, v = c.Next() {
			_, key, data, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("topic %q offset %d: %w", topic, getOffset(k), err)
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
			out[i] = broker.Record{Offset: getOffset(e.k), Time: ms, Data: arena[at : at+n : at+n]}
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
		tb := topicBucket(tx, topic)
		if tb == nil {
			return nil
		}
		m, err := decodeMeta(tb.Get(metaKey))
		if err != nil {
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
		topics := tx.Bucket(topicsName)
		c := topics.Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && after != "" && bytes.Equal(k, []byte(after)) {
			k, v = c.Next()
		}
		for ; k != nil && len(out) < max; k, v = c.Next() {
			if v != nil {
				continue // not a bucket
			}
			m, err := decodeMeta(topics.Bucket(k).Get(metaKey))
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
