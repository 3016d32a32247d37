package store

import (
	"container/heap"
	"fmt"
	"math"

	"go.etcd.io/bbolt"
)

// keyIndex remembers idempotency keys in memory: per topic, key → the first
// record's offset and time, in a map and a queue in offset order (which is
// time order: record times never decrease within a topic). A heap orders the
// topics by the time of their oldest key, so that the globally oldest key is
// found at once when DedupMaxKeysTotal is reached or keys expire.
//
// The index belongs to the committer goroutine: it is read and changed only
// by operations the committer runs (and by Open before the committer
// starts), so it needs no lock.
type keyIndex struct {
	topics map[string]*topicKeys
	heap   keyHeap // topics with a non-empty queue, oldest front first
	total  int     // keys remembered in all topics
}

// topicKeys is one topic's keys.
type topicKeys struct {
	name string
	keys map[string]uint64 // key → sequence number of its queue entry
	q    keyQueue
	hi   int // position in keyIndex.heap; -1 when not in it
}

// keyEntry is an entry of a topic's queue. An entry whose key maps to
// another sequence number (or to none) is stale: the key was forgotten
// out of order, and the entry is skipped when it reaches the front.
type keyEntry struct {
	key string
	off uint64
	ms  int64
}

func newKeyIndex() *keyIndex {
	return &keyIndex{topics: make(map[string]*topicKeys)}
}

// lookup returns the offset and time remembered for key in topic.
func (x *keyIndex) lookup(topic, key string) (off uint64, ms int64, ok bool) {
	tk := x.topics[topic]
	if tk == nil {
		return 0, 0, false
	}
	seq, ok := tk.keys[key]
	if !ok {
		return 0, 0, false
	}
	e := tk.q.at(seq)
	return e.off, e.ms, true
}

// forget removes key from topic; its queue entry becomes stale.
func (x *keyIndex) forget(topic, key string) {
	if tk := x.topics[topic]; tk != nil {
		if _, ok := tk.keys[key]; ok {
			delete(tk.keys, key)
			x.total--
		}
	}
}

// add remembers key for the record at off, time ms, of topic, first
// forgetting the oldest keys of the topic past maxTopic and the globally
// oldest past maxTotal. Offsets must grow within a topic. The index keeps
// key: the caller must pass a string that does not pin a larger buffer
// (strings.Clone).
func (x *keyIndex) add(topic, key string, off uint64, ms int64, maxTopic, maxTotal int) {
	if tk := x.topics[topic]; tk != nil {
		for len(tk.keys) >= maxTopic && x.evictFront(tk) {
		}
	}
	for x.total >= maxTotal && len(x.heap) > 0 && x.evictFront(x.heap[0]) {
	}
	tk := x.topics[topic] // evicting may have dropped it
	if tk == nil {
		tk = &topicKeys{name: topic, keys: make(map[string]uint64), hi: -1}
		x.topics[topic] = tk
	}
	tk.keys[key] = tk.q.push(keyEntry{key: key, off: off, ms: ms})
	x.total++
	if tk.hi < 0 {
		heap.Push(&x.heap, tk)
	}
}

// evictFront forgets tk's oldest key, dropping stale entries before it. It
// reports whether a key was forgotten.
func (x *keyIndex) evictFront(tk *topicKeys) bool {
	for tk.q.len() > 0 {
		seq, e := tk.q.popFront()
		cur, ok := tk.keys[e.key]
		live := ok && cur == seq
		if live {
			delete(tk.keys, e.key)
			x.total--
		}
		x.fixed(tk)
		if live {
			return true
		}
	}
	return false
}

// fixed restores the heap after tk's front changed, and drops tk when it
// holds nothing.
func (x *keyIndex) fixed(tk *topicKeys) {
	switch {
	case tk.q.len() > 0:
		if tk.hi >= 0 {
			heap.Fix(&x.heap, tk.hi)
		}
	default:
		if tk.hi >= 0 {
			heap.Remove(&x.heap, tk.hi)
		}
		if x.topics[tk.name] == tk {
			delete(x.topics, tk.name)
		}
	}
}

// expire forgets every key with time <= cut, oldest first.
func (x *keyIndex) expire(cut int64) {
	for len(x.heap) > 0 {
		tk := x.heap[0]
		if _, e := tk.q.front(); e.ms > cut {
			return
		}
		x.evictFront(tk)
	}
}

// trimAbove forgets topic's keys of records with offsets above off: the
// newest ones (TruncateAfter, a failed transaction).
func (x *keyIndex) trimAbove(topic string, off uint64) {
	tk := x.topics[topic]
	if tk == nil {
		return
	}
	for tk.q.len() > 0 {
		seq, e := tk.q.back()
		if e.off <= off {
			break
		}
		tk.q.popBack()
		if cur, ok := tk.keys[e.key]; ok && cur == seq {
			delete(tk.keys, e.key)
			x.total--
		}
	}
	x.fixed(tk)
}

// drop forgets all of topic's keys (ResetTopic, DeleteTopic).
func (x *keyIndex) drop(topic string) {
	tk := x.topics[topic]
	if tk == nil {
		return
	}
	x.total -= len(tk.keys)
	clear(tk.keys)
	tk.q = keyQueue{}
	x.fixed(tk)
}

// count returns how many keys topic holds ("" for all topics).
func (x *keyIndex) count(topic string) int {
	if topic == "" {
		return x.total
	}
	if tk := x.topics[topic]; tk != nil {
		return len(tk.keys)
	}
	return 0
}

// check verifies the index's invariants (for Check).
func (x *keyIndex) check() error {
	total := 0
	for name, tk := range x.topics {
		if tk.name != name || tk.q.len() == 0 || tk.hi < 0 || tk.hi >= len(x.heap) || x.heap[tk.hi] != tk {
			return fmt.Errorf("%w: idempotency index of topic %q out of place", ErrCorrupt, name)
		}
		for key, seq := range tk.keys {
			if seq < tk.q.first || seq >= tk.q.first+uint64(tk.q.len()) || tk.q.at(seq).key != key {
				return fmt.Errorf("%w: idempotency index of topic %q: key %q lost its entry", ErrCorrupt, name, key)
			}
		}
		total += len(tk.keys)
	}
	if total != x.total || len(x.heap) != len(x.topics) {
		return fmt.Errorf("%w: idempotency index holds %d keys in %d topics, counted %d in %d", ErrCorrupt, total, len(x.topics), x.total, len(x.heap))
	}
	return nil
}

// keyQueue is a ring buffer of entries numbered by consecutive sequence
// numbers; first is the front's.
type keyQueue struct {
	buf   []keyEntry // len is a power of two, or 0
	head  int        // index of the front in buf
	n     int
	first uint64 // sequence number of the front
}

func (q *keyQueue) len() int { return q.n }

func (q *keyQueue) at(seq uint64) *keyEntry {
	return &q.buf[(q.head+int(seq-q.first))&(len(q.buf)-1)]
}

func (q *keyQueue) push(e keyEntry) (seq uint64) {
	if q.n == len(q.buf) {
		q.resize(max(16, 2*len(q.buf)))
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = e
	q.n++
	return q.first + uint64(q.n-1)
}

func (q *keyQueue) front() (uint64, keyEntry) { return q.first, q.buf[q.head] }

func (q *keyQueue) back() (uint64, keyEntry) {
	return q.first + uint64(q.n-1), *q.at(q.first + uint64(q.n-1))
}

func (q *keyQueue) popFront() (uint64, keyEntry) {
	seq, e := q.first, q.buf[q.head]
	q.buf[q.head] = keyEntry{}
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
	q.first++
	q.shrink()
	return seq, e
}

func (q *keyQueue) popBack() {
	*q.at(q.first + uint64(q.n-1)) = keyEntry{}
	q.n--
	q.shrink()
}

// shrink halves the buffer when it is a quarter full, so that a burst of
// keys does not hold memory after they are forgotten.
func (q *keyQueue) shrink() {
	if len(q.buf) > 16 && q.n <= len(q.buf)/4 {
		q.resize(len(q.buf) / 2)
	}
}

func (q *keyQueue) resize(size int) {
	buf := make([]keyEntry, size)
	for i := range q.n {
		buf[i] = q.buf[(q.head+i)&(len(q.buf)-1)]
	}
	q.buf, q.head = buf, 0
}

// keyHeap is a min-heap of topics by the time of their front entry.
type keyHeap []*topicKeys

func (h keyHeap) Len() int { return len(h) }

func (h keyHeap) Less(i, j int) bool {
	_, a := h[i].q.front()
	_, b := h[j].q.front()
	return a.ms < b.ms
}

func (h keyHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hi, h[j].hi = i, j
}

func (h *keyHeap) Push(v any) {
	tk := v.(*topicKeys)
	tk.hi = len(*h)
	*h = append(*h, tk)
}

func (h *keyHeap) Pop() any {
	old := *h
	tk := old[len(old)-1]
	old[len(old)-1] = nil
	tk.hi = -1
	*h = old[:len(old)-1]
	return tk
}

// rebuildScanFactor bounds the records Open reads per topic to rebuild its
// keys: at most rebuildScanFactor×DedupMaxKeys, keyed or not.
const rebuildScanFactor = 8

// rebuildKeys fills the index from the logs: for each topic it reads the
// records backwards from the head until they are older than DedupWindow,
// DedupMaxKeys keys are found or rebuildScanFactor×DedupMaxKeys records are
// read, and remembers the newest record of each key; beyond
// DedupMaxKeysTotal it keeps the newest keys of all topics. Keys of records
// that retention removed are not recovered.
func (db *DB) rebuildKeys() error {
	if !db.dedupOn() {
		return nil
	}
	cut := db.opts.Now().UnixMilli() - db.opts.DedupWindow.Milliseconds()
	maxKeys := db.opts.DedupMaxKeys
	maxScan := int64(rebuildScanFactor) * int64(maxKeys)
	return db.bolt.View(func(tx *bbolt.Tx) error {
		records := tx.Bucket(recordsName)
		var found []keyEntry
		seen := make(map[string]struct{})
		return tx.Bucket(metaName).ForEach(func(name, mv []byte) error {
			m, err := decodeMeta(mv)
			if err != nil {
				return fmt.Errorf("topic %q: %w", name, err)
			}
			found = found[:0]
			clear(seen)
			c := records.Cursor()
			var scanned int64
			for k, v := lastRecord(c, m.id); k != nil && keyID(k) == m.id && len(found) < maxKeys && scanned < maxScan; k, v = c.Prev() {
				scanned++
				ms, key, _, err := decodeRecord(v)
				if err != nil {
					return fmt.Errorf("topic %q offset %d: %w", name, keyOffset(k), err)
				}
				if ms <= cut {
					break
				}
				if len(key) == 0 {
					continue
				}
				if _, dup := seen[string(key)]; dup {
					continue // an older record of a key forgotten before the newer was stored
				}
				s := string(key)
				seen[s] = struct{}{}
				found = append(found, keyEntry{key: s, off: keyOffset(k), ms: ms})
			}
			topic := string(name)
			for i := len(found) - 1; i >= 0; i-- {
				e := found[i]
				if x := db.keys; x.total >= db.opts.DedupMaxKeysTotal && len(x.heap) > 0 {
					if _, oldest := x.heap[0].q.front(); e.ms < oldest.ms {
						continue // older than every key kept: the bound forgets it first
					}
				}
				db.keys.add(topic, e.key, e.off, e.ms, maxKeys, db.opts.DedupMaxKeysTotal)
			}
			return nil
		})
	})
}

// keyCut returns the time at or before which keys are expired at nowMs.
func (db *DB) keyCut(nowMs int64) int64 {
	if !db.dedupOn() {
		return math.MaxInt64
	}
	return nowMs - db.opts.DedupWindow.Milliseconds()
}
