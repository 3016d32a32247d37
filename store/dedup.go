package store

import (
	"container/heap"
	"fmt"
	"math"
	"strings"

	"go.etcd.io/bbolt"
)

// keyIndex remembers idempotency keys in memory: per topic, key → the first
// record's offset and time, in a queue in offset order (which is time
// order: record times never decrease within a topic). One map, shared by
// all topics, finds a (topic, key) pair's queue entry. A heap orders the
// topics by the time of their oldest key, so that the globally oldest key
// is found at once when DedupMaxKeysTotal is reached or keys expire.
//
// Memory is what the keys need plus a small, fixed part per topic holding
// keys (its name, its queue's header, an entry in topics and in the heap):
// a topic holds no map of its own, and its queue starts with room for one
// entry and doubles, so a topic with one key costs about as much as a key.
// BenchmarkDedupKeyMemory measures it.
//
// The index belongs to the committer goroutine: it is read and changed only
// by operations the committer runs (and by Open before the committer
// starts), so it needs no lock.
type keyIndex struct {
	topics map[string]*topicKeys
	keys   map[topicKey]uint64 // → sequence number of the key's queue entry
	heap   keyHeap             // topics with a non-empty queue, oldest front first

	// The most keys and topics held since the maps were last built: Go's
	// maps keep their room when entries go, so once they hold less than a
	// quarter of it they are built again (see shrink).
	peakKeys, peakTopics int
}

// shrinkMin is the fewest entries of a map worth building again.
const shrinkMin = 4096

// rebuilt returns a copy of m sized for what it holds (maps.Clone may keep
// the room). Building it after its size fell to a quarter costs O(1) per
// entry removed since.
func rebuilt[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// topicKey is a key of one topic, as the index's map holds it.
type topicKey struct {
	t   *topicKeys
	key string
}

// topicKeys is one topic's keys.
type topicKeys struct {
	name string
	q    keyQueue
	live int32 // keys of the topic in keyIndex.keys
	hi   int32 // position in keyIndex.heap; -1 when not in it
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
	return &keyIndex{topics: make(map[string]*topicKeys), keys: make(map[topicKey]uint64)}
}

// total returns the number of keys remembered in all topics.
func (x *keyIndex) total() int { return len(x.keys) }

// lookup returns the offset and time remembered for key in topic.
func (x *keyIndex) lookup(topic, key string) (off uint64, ms int64, ok bool) {
	tk := x.topics[topic]
	if tk == nil {
		return 0, 0, false
	}
	seq, ok := x.keys[topicKey{tk, key}]
	if !ok {
		return 0, 0, false
	}
	e := tk.q.at(seq)
	return e.off, e.ms, true
}

// remove forgets tk's key if it maps to seq (any seq when all is set), and
// reports whether it did.
func (x *keyIndex) remove(tk *topicKeys, key string, seq uint64, all bool) bool {
	k := topicKey{tk, key}
	if cur, ok := x.keys[k]; ok && (all || cur == seq) {
		delete(x.keys, k)
		tk.live--
		if x.peakKeys >= shrinkMin && len(x.keys) < x.peakKeys/4 {
			x.keys = rebuilt(x.keys)
			x.peakKeys = len(x.keys)
		}
		return true
	}
	return false
}

// forget removes key from topic; its queue entry becomes stale.
func (x *keyIndex) forget(topic, key string) {
	if tk := x.topics[topic]; tk != nil {
		x.remove(tk, key, 0, true)
	}
}

// add remembers key for the record at off, time ms, of topic, first
// forgetting the oldest keys of the topic past maxTopic and the globally
// oldest past maxTotal. Offsets must grow within a topic. The index keeps
// key: the caller must pass a string that does not pin a larger buffer
// (strings.Clone). It keeps its own copy of topic.
func (x *keyIndex) add(topic, key string, off uint64, ms int64, maxTopic, maxTotal int) {
	if tk := x.topics[topic]; tk != nil {
		for int(tk.live) >= maxTopic && x.evictFront(tk) {
		}
	}
	for len(x.keys) >= maxTotal && len(x.heap) > 0 && x.evictFront(x.heap[0]) {
	}
	tk := x.topics[topic] // evicting may have dropped it
	if tk == nil {
		name := strings.Clone(topic)
		tk = &topicKeys{name: name, hi: -1}
		x.topics[name] = tk
		x.peakTopics = max(x.peakTopics, len(x.topics))
	}
	x.keys[topicKey{tk, key}] = tk.q.push(keyEntry{key: key, off: off, ms: ms})
	x.peakKeys = max(x.peakKeys, len(x.keys))
	tk.live++
	if tk.hi < 0 {
		heap.Push(&x.heap, tk)
	}
}

// evictFront forgets tk's oldest key, dropping stale entries before it. It
// reports whether a key was forgotten.
func (x *keyIndex) evictFront(tk *topicKeys) bool {
	for tk.q.len() > 0 {
		seq, e := tk.q.popFront()
		live := x.remove(tk, e.key, seq, false)
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
			heap.Fix(&x.heap, int(tk.hi))
		}
	default:
		if tk.hi >= 0 {
			heap.Remove(&x.heap, int(tk.hi))
		}
		if x.topics[tk.name] == tk {
			delete(x.topics, tk.name)
			if x.peakTopics >= shrinkMin && len(x.topics) < x.peakTopics/4 {
				x.topics = rebuilt(x.topics)
				x.peakTopics = len(x.topics)
			}
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
		x.remove(tk, e.key, seq, false)
	}
	x.fixed(tk)
}

// drop forgets all of topic's keys (ResetTopic, DeleteTopic).
func (x *keyIndex) drop(topic string) {
	tk := x.topics[topic]
	if tk == nil {
		return
	}
	for tk.q.len() > 0 {
		seq, e := tk.q.back()
		tk.q.popBack()
		x.remove(tk, e.key, seq, false)
	}
	x.fixed(tk)
}

// count returns how many keys topic holds ("" for all topics).
func (x *keyIndex) count(topic string) int {
	if topic == "" {
		return len(x.keys)
	}
	if tk := x.topics[topic]; tk != nil {
		return int(tk.live)
	}
	return 0
}

// check verifies the index's invariants (for Check).
func (x *keyIndex) check() error {
	live := make(map[*topicKeys]int32, len(x.topics))
	for k, seq := range x.keys {
		tk := k.t
		if x.topics[tk.name] != tk {
			return fmt.Errorf("%w: idempotency index: key %q of a topic it no longer holds (%q)", ErrCorrupt, k.key, tk.name)
		}
		if seq < tk.q.first || seq >= tk.q.first+uint64(tk.q.len()) || tk.q.at(seq).key != k.key {
			return fmt.Errorf("%w: idempotency index of topic %q: key %q lost its entry", ErrCorrupt, tk.name, k.key)
		}
		live[tk]++
	}
	for name, tk := range x.topics {
		if tk.name != name || tk.q.len() == 0 || tk.hi < 0 || int(tk.hi) >= len(x.heap) || x.heap[tk.hi] != tk {
			return fmt.Errorf("%w: idempotency index of topic %q out of place", ErrCorrupt, name)
		}
		if live[tk] != tk.live {
			return fmt.Errorf("%w: idempotency index of topic %q holds %d keys, counted %d", ErrCorrupt, name, live[tk], tk.live)
		}
	}
	if len(x.heap) != len(x.topics) {
		return fmt.Errorf("%w: idempotency index holds %d topics, %d in its heap", ErrCorrupt, len(x.topics), len(x.heap))
	}
	return nil
}

// keyQueue is a ring buffer of entries numbered by consecutive sequence
// numbers; first is the front's. It starts with room for one entry.
type keyQueue struct {
	buf   []keyEntry // len is a power of two, or 0
	head  uint32     // index of the front in buf
	n     uint32
	first uint64 // sequence number of the front
}

func (q *keyQueue) len() int { return int(q.n) }

func (q *keyQueue) at(seq uint64) *keyEntry {
	return &q.buf[(int(q.head)+int(seq-q.first))&(len(q.buf)-1)]
}

func (q *keyQueue) push(e keyEntry) (seq uint64) {
	if int(q.n) == len(q.buf) {
		q.resize(max(1, 2*len(q.buf)))
	}
	q.buf[(int(q.head)+int(q.n))&(len(q.buf)-1)] = e
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
	q.head = uint32((int(q.head) + 1) & (len(q.buf) - 1))
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
// keys does not hold memory after they are forgotten, and lets an empty
// queue's buffer go.
func (q *keyQueue) shrink() {
	switch {
	case q.n == 0:
		q.buf, q.head = nil, 0
	case len(q.buf) > 4 && int(q.n) <= len(q.buf)/4:
		q.resize(len(q.buf) / 2)
	}
}

func (q *keyQueue) resize(size int) {
	buf := make([]keyEntry, size)
	for i := range int(q.n) {
		buf[i] = q.buf[(int(q.head)+i)&(len(q.buf)-1)]
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
	h[i].hi, h[j].hi = int32(i), int32(j)
}

func (h *keyHeap) Push(v any) {
	tk := v.(*topicKeys)
	tk.hi = int32(len(*h))
	*h = append(*h, tk)
}

func (h *keyHeap) Pop() any {
	old := *h
	tk := old[len(old)-1]
	old[len(old)-1] = nil
	tk.hi = -1
	*h = old[:len(old)-1]
	if cap(old) >= shrinkMin && len(*h) < cap(old)/4 {
		*h = append(keyHeap(nil), *h...) // give the room of a burst back
	}
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
				if x := db.keys; x.total() >= db.opts.DedupMaxKeysTotal && len(x.heap) > 0 {
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
