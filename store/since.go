package store

import (
	"cmp"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

// OffsetAt returns the first retained offset of topic whose record time is
// at or after ms (Head+1 when there is none), and the time of the earliest
// retained record (0 when nothing is retained). Record times never go back
// within a topic, so it is a binary search over the log: O(log n) seeks in
// one read transaction. A topic without a log gives
// broker.ErrTopicNotFound.
func (db *DB) OffsetAt(topic string, ms int64) (offset uint64, earliestTime int64, err error) {
	if err := db.rlock(); err != nil {
		return 0, 0, err
	}
	defer db.mu.RUnlock()
	db.direct.RLock()
	defer db.direct.RUnlock()
	// The tail first (see Read): bbolt holds the records before its first.
	tt, inTail := db.tailState(topic)
	var tailFrom uint64 // with inTail: search bbolt below it, then the tail
	if inTail {
		tailFrom = tt.m.head + 1
		if len(tt.recs) > 0 {
			tailFrom = tt.recs[0].Offset
		}
	}
	err = db.bolt.View(func(tx *bbolt.Tx) error {
		m, found := tt.m, inTail
		if !inTail {
			var err error
			if m, found, err = loadMeta(tx.Bucket(metaName), tx.Bucket(recordsName), topic); err != nil {
				return fmt.Errorf("topic %q: %w", topic, err)
			}
		}
		if !found {
			return fmt.Errorf("%w: %q", broker.ErrTopicNotFound, topic)
		}
		head := m.head
		if inTail {
			// Search bbolt's part; if nothing there is at or after ms,
			// the tail's records.
			m.head = tailFrom - 1
			defer func() {
				if offset != tailFrom {
					return
				}
				i, _ := slices.BinarySearchFunc(tt.recs, ms, func(r broker.Record, ms int64) int { return cmp.Compare(r.Time, ms) })
				offset = head + 1
				if i < len(tt.recs) {
					offset = tt.recs[i].Offset
				}
				if earliestTime == 0 && len(tt.recs) > 0 {
					earliestTime = tt.recs[0].Time
				}
			}()
		}
		c := tx.Bucket(recordsName).Cursor()
		var seek [recordKeySize]byte
		// at returns the first record at or after off: its offset and
		// whether its time is at or after ms (true when there is none).
		at := func(off uint64) (uint64, bool) {
			k, v := c.Seek(putRecordKey(seek[:], m.id, off))
			if k == nil || keyID(k) != m.id || keyOffset(k) > m.head {
				return m.head + 1, true
			}
			return keyOffset(k), recordTime(v) >= ms
		}
		if first, _ := at(m.earliest); first <= m.head {
			_, v := c.Seek(putRecordKey(seek[:], m.id, first))
			earliestTime = recordTime(v)
		}
		// The smallest lo in [earliest, head+1] whose first record at or
		// after it is at or after ms: the predicate is monotonic.
		lo, hi := m.earliest, m.head+1
		for lo < hi {
			mid := lo + (hi-lo)/2
			if _, ok := at(mid); ok {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		offset, _ = at(lo)
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("store: offset at: %w", err)
	}
	return offset, earliestTime, nil
}
