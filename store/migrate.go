package store

import (
	"bytes"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/bbolt"
)

// What one migration transaction copies at most: records (a topic counting
// as one more) and their bytes.
// Variables, so that tests can make a migration take many transactions.
var (
	migrateRecords = 50_000
	migrateBytes   = 32 << 20
)

// migrateHook, when set (by tests), runs after each migration transaction.
var migrateHook func()

// migrate turns a store of format 1 or 2, a bucket per topic under topics/,
// into format 3: it copies each topic's records into records, with their
// totals, and its metadata into meta, then deletes the topic's bucket, a
// bounded number of records per transaction (a long log takes several).
// Its first transaction writes the new format marker with brokerd/migrating
// holding the old one, so that no earlier brokerd opens a half-migrated
// store; a crash midway leaves that marker, and the next Open goes on where
// the last committed transaction stopped: a topic already in meta resumes
// after its last copied record. The last transaction deletes topics/ and
// brokerd/migrating. Format 1's idempotency key buckets go with their
// topic's bucket.
func migrate(bdb *bbolt.DB, log *slog.Logger) error {
	began, logged := time.Now(), time.Now()
	var from string
	var topics, records int
	for done := false; !done; {
		if time.Since(logged) > 10*time.Second {
			logged = time.Now()
			log.Info("store: migrating to format "+formatVersion, "topics", topics, "records", records)
		}
		err := bdb.Update(func(tx *bbolt.Tx) error {
			root := tx.Bucket(rootName)
			if v := root.Get(migratingKey); v != nil && from == "" {
				from = string(v)
				log.Info("store: resuming the migration to format "+formatVersion, "from", from)
			}
			if v := root.Get(formatKey); string(v) != formatVersion {
				from = string(v)
				log.Info("store: migrating to format "+formatVersion, "from", from)
				if err := root.Put(migratingKey, []byte(from)); err != nil {
					return err
				}
				if err := root.Put(formatKey, []byte(formatVersion)); err != nil {
					return err
				}
			}
			metaB, err := tx.CreateBucketIfNotExists(metaName)
			if err != nil {
				return err
			}
			recs, err := tx.CreateBucketIfNotExists(recordsName)
			if err != nil {
				return err
			}
			recs.FillPercent = 1
			old := tx.Bucket(topicsNameV2)
			left := budget{recs: migrateRecords, bytes: migrateBytes}
			for old != nil && left.recs > 0 && left.bytes > 0 {
				k, v := old.Cursor().First()
				if k == nil {
					break
				}
				if v != nil {
					return fmt.Errorf("%w: topics/%q is not a bucket", ErrCorrupt, k)
				}
				name := bytes.Clone(k)
				finished, n, err := migrateTopic(metaB, recs, old.Bucket(name), name, &left)
				if err != nil {
					return fmt.Errorf("migrate topic %q: %w", name, err)
				}
				records += n
				if !finished {
					break
				}
				if err := old.DeleteBucket(name); err != nil {
					return err
				}
				topics++
			}
			if old != nil {
				if k, _ := old.Cursor().First(); k != nil {
					return nil
				}
				if err := tx.DeleteBucket(topicsNameV2); err != nil {
					return err
				}
			}
			done = true
			return root.Delete(migratingKey)
		})
		if err != nil {
			return fmt.Errorf("store: migrate to format %s: %w", formatVersion, err)
		}
		if migrateHook != nil {
			migrateHook()
		}
	}
	log.Info("store: migrated to format "+formatVersion+": one bucket of records for all topics", "from", from, "topics", topics, "records", records, "took", time.Since(began).Round(time.Millisecond))
	return nil
}

type budget struct{ recs, bytes int }

// migrateTopic copies the records of one topic of format 1 or 2 (its bucket
// tb) that are not yet in recs, within the budget left, and reports
// whether it copied the last one.
func migrateTopic(metaB, recs, tb *bbolt.Bucket, name []byte, left *budget) (finished bool, n int, err error) {
	left.recs-- // a topic counts as a record: empty ones are not free
	om, err := decodeMetaV2(tb.Get(metaKeyV2))
	if err != nil {
		return false, 0, err
	}
	lb := tb.Bucket(logNameV2)
	if lb == nil {
		return false, 0, fmt.Errorf("%w: log bucket missing", ErrCorrupt)
	}
	var m meta
	if v := metaB.Get(name); v != nil {
		// Resumed: its earlier records are already copied.
		if m, err = decodeMeta(v); err != nil {
			return false, 0, err
		}
	} else {
		id, err := metaB.NextSequence()
		if err != nil {
			return false, 0, err
		}
		m = meta{id: id, epoch: om.epoch, earliest: om.earliest, lastTime: om.lastTime, ret: om.ret}
		if err := metaB.Put(name, m.encode()); err != nil {
			return false, 0, err
		}
	}
	if err := m.derive(recs.Cursor()); err != nil {
		return false, 0, err
	}
	next, total := m.head+1, m.total
	var seek [8]byte
	c := lb.Cursor()
	k, v := c.Seek(putOffset(seek[:], next))
	// At least one record per call, whatever is left: every transaction
	// makes progress.
	for ; k != nil && (n == 0 || left.recs > 0 && left.bytes > 0); k, v = c.Next() {
		if off := getOffset(k); off != next {
			return false, n, fmt.Errorf("%w: offset %d where %d was expected", ErrCorrupt, off, next)
		}
		ms, key, data, err := decodeRecordV2(v)
		if err != nil {
			return false, n, fmt.Errorf("offset %d: %w", next, err)
		}
		total += uint64(len(data))
		val, _ := putRecord(make([]byte, recordSize(total, string(key), data)), ms, total, string(key), data)
		if err := recs.Put(putRecordKey(make([]byte, recordKeySize), m.id, next), val); err != nil {
			return false, n, err
		}
		next++
		n++
		left.recs--
		left.bytes -= len(v)
	}
	if k != nil {
		return false, n, nil
	}
	if got, want := next-1, om.head; got != want || int64(total-m.cumBase) != om.bytes {
		return false, n, fmt.Errorf("%w: log ends at %d with %d bytes, metadata says %d with %d", ErrCorrupt, got, total-m.cumBase, want, om.bytes)
	}
	return true, n, nil
}
