package store

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

var quiet = slog.New(slog.DiscardHandler)

// oldTopic is a topic as formats 1 and 2 stored it, in a bucket of its own.
type oldTopic struct {
	name, epoch string
	earliest    uint64 // recs[0].Offset; head+1 when recs is empty
	lastTime    int64  // the head record's time
	ret         Retention
	recs        []broker.Record
}

func (o *oldTopic) head() uint64 { return o.earliest + uint64(len(o.recs)) - 1 }

func (o *oldTopic) bytes() int64 {
	var n int64
	for _, r := range o.recs {
		n += int64(len(r.Data))
	}
	return n
}

// encodeMetaV2 is the metadata of formats 1 and 2 (see decodeMetaV2).
func encodeMetaV2(m meta) []byte {
	b := []byte{1, byte(len(m.epoch))}
	b = append(b, m.epoch...)
	for _, x := range [...]uint64{
		m.earliest, m.head, uint64(m.count), uint64(m.bytes), uint64(m.keys),
		uint64(m.lastTime), uint64(m.ret.MaxAge), uint64(m.ret.MaxBytes), uint64(m.ret.MaxMessages),
	} {
		b = binary.BigEndian.AppendUint64(b, x)
	}
	return b
}

// writeOldStore writes a store of format 1 or 2 in dir, as those versions
// of brokerd did: format 1 with each topic's idempotency key buckets k and
// x.
func writeOldStore(t testing.TB, dir, format string, topics []oldTopic, consumers []broker.ConsumerOffset) {
	t.Helper()
	bdb, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, &bbolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bbolt.Tx) error {
		root, err := tx.CreateBucket(rootName)
		if err != nil {
			return err
		}
		if err := root.Put(formatKey, []byte(format)); err != nil {
			return err
		}
		cb, err := tx.CreateBucket(consumersName)
		if err != nil {
			return err
		}
		for _, co := range consumers {
			if err := cb.Put(consumerKey(nil, co.Consumer, co.Topic), putConsumerVal(nil, co.Epoch, co.Offset, co.Updated.UnixMilli())); err != nil {
				return err
			}
		}
		topicsB, err := tx.CreateBucket(topicsNameV2)
		if err != nil {
			return err
		}
		for _, o := range topics {
			tb, err := topicsB.CreateBucket([]byte(o.name))
			if err != nil {
				return err
			}
			lb, err := tb.CreateBucket(logNameV2)
			if err != nil {
				return err
			}
			var keys int64
			for _, r := range o.recs {
				v := binary.BigEndian.AppendUint64(nil, uint64(r.Time))
				v = binary.AppendUvarint(v, uint64(len(r.Key)))
				v = append(append(v, r.Key...), r.Data...)
				if err := lb.Put(putOffset(make([]byte, 8), r.Offset), v); err != nil {
					return err
				}
				if r.Key != "" {
					keys++
				}
			}
			if format == formatV1 {
				k, err := tb.CreateBucket([]byte("k"))
				if err != nil {
					return err
				}
				x, err := tb.CreateBucket([]byte("x"))
				if err != nil {
					return err
				}
				for _, r := range o.recs {
					if r.Key != "" {
						if err := k.Put([]byte(r.Key), putOffset(make([]byte, 16), r.Offset)); err != nil {
							return err
						}
						if err := x.Put(putOffset(make([]byte, 8), r.Offset), []byte(r.Key)); err != nil {
							return err
						}
					}
				}
			} else {
				keys = 0
			}
			m := meta{epoch: o.epoch, earliest: o.earliest, head: o.head(), count: int64(len(o.recs)), bytes: o.bytes(), keys: keys, lastTime: o.lastTime, ret: o.ret}
			if err := tb.Put(metaKeyV2, encodeMetaV2(m)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := bdb.Close(); err != nil {
		t.Fatal(err)
	}
}

// oldTopics makes n topics of a few records each (some keyed), one long
// log, one trimmed log and one trimmed empty, with records stamped around
// now (ms).
func oldTopics(seed uint64, n int, now int64) []oldTopic {
	r := rand.New(rand.NewPCG(seed, 1))
	var out []oldTopic
	add := func(name string, earliest uint64, recs int) {
		o := oldTopic{name: name, epoch: fmt.Sprintf("epoch-%s", name), earliest: earliest}
		ms := now - int64(recs)
		for i := range recs {
			data := make([]byte, r.IntN(300))
			for j := range data {
				data[j] = byte(r.Uint32())
			}
			key := ""
			if i%3 == 0 {
				key = fmt.Sprintf("%s-k%d", name, i)
			}
			ms += int64(r.IntN(2))
			o.recs = append(o.recs, broker.Record{Offset: earliest + uint64(i), Time: ms, Key: key, Data: data})
		}
		o.lastTime = ms
		if r.IntN(4) == 0 {
			o.ret = Retention{MaxMessages: int64(1 + r.IntN(1000)), MaxAge: -1}
		}
		out = append(out, o)
	}
	for i := range n {
		add(fmt.Sprintf("t.%04d", i), 1, r.IntN(12))
	}
	add("long", 1, 3000)
	add("trimmed", 41, 25)
	add("trimmed.empty", 18, 0)
	return out
}

// checkMigrated checks that db holds exactly the topics of an old store.
func checkMigrated(t testing.TB, db *DB, topics []oldTopic) {
	t.Helper()
	all, err := db.Topics("", 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(topics) {
		t.Fatalf("%d topics after migration, want %d", len(all), len(topics))
	}
	for _, o := range topics {
		info := mustTopic(t, db, o.name)
		want := broker.TopicInfo{Topic: o.name, Epoch: o.epoch, Earliest: o.earliest, Head: o.head(), Count: int64(len(o.recs)), Bytes: o.bytes()}
		if info != want {
			t.Fatalf("topic %s after migration: %+v, want %+v", o.name, info, want)
		}
		got := readAll(t, db, o.name)
		if len(got) != len(o.recs) {
			t.Fatalf("topic %s: %d records after migration, want %d", o.name, len(got), len(o.recs))
		}
		for i, r := range got {
			w := o.recs[i]
			if r.Offset != w.Offset || r.Time != w.Time || r.Key != w.Key || string(r.Data) != string(w.Data) {
				t.Fatalf("topic %s record %d after migration: %+v, want %+v", o.name, i, r, w)
			}
		}
		if m := topicMeta(t, db, o.name); m.ret != o.ret || m.lastTime != o.lastTime {
			t.Fatalf("topic %s: retention %+v last time %d, want %+v %d", o.name, m.ret, m.lastTime, o.ret, o.lastTime)
		}
	}
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}

// setMigrateBudget makes each migration transaction copy at most recs
// records until the test ends.
func setMigrateBudget(t testing.TB, recs int) {
	old := migrateRecords
	migrateRecords = recs
	t.Cleanup(func() { migrateRecords = old })
}

func TestMigrate(t *testing.T) {
	for _, format := range []string{formatV1, formatV2} {
		t.Run(format, func(t *testing.T) {
			clk := newClock()
			now := clk.Now().UnixMilli()
			dir := t.TempDir()
			topics := oldTopics(7, 60, now)
			consumers := []broker.ConsumerOffset{
				{Consumer: "c", Topic: "long", Epoch: "epoch-long", Offset: 17, Updated: time.UnixMilli(now)},
				{Consumer: "c", Topic: "gone", Epoch: "e", Offset: 3, Updated: time.UnixMilli(now)},
			}
			writeOldStore(t, dir, format, topics, consumers)
			setMigrateBudget(t, 200)
			steps := 0
			migrateHook = func() { steps++ }
			t.Cleanup(func() { migrateHook = nil })

			opts := testOptions()
			opts.Now, opts.DedupWindow, opts.Logger = clk.Now, time.Hour, quiet
			db := openAt(t, dir, opts)
			if steps < 10 {
				t.Fatalf("migration took %d transactions, want many with a budget of 200 records", steps)
			}
			checkMigrated(t, db, topics)
			err := db.bolt.View(func(tx *bbolt.Tx) error {
				root := tx.Bucket(rootName)
				if v := root.Get(formatKey); string(v) != formatVersion || root.Get(migratingKey) != nil || tx.Bucket(topicsNameV2) != nil {
					t.Errorf("after migration: format %q, migrating %q, topics bucket %v", v, root.Get(migratingKey), tx.Bucket(topicsNameV2) != nil)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := db.Consumers("c")
			if err != nil || len(got) != 2 || got[0].Topic != "gone" || got[1].Offset != 17 || got[1].Epoch != "epoch-long" {
				t.Fatalf("consumers after migration: %+v, %v", got, err)
			}
			// Keys within the window are duplicates; appends go on at
			// head+1 with the same epoch, in every kind of log.
			long := topics[len(topics)-3]
			k := long.recs[len(long.recs)-3]
			if a := mustAppend(t, db, "long", "again", k.Key); !a.Dup || a.Offset != k.Offset {
				t.Fatalf("key %s after migration = %+v, want a duplicate of %d", k.Key, a, k.Offset)
			}
			for _, o := range topics[len(topics)-3:] {
				if a := mustAppend(t, db, o.name, "new", ""); a.Dup || a.Offset != o.head()+1 || a.Epoch != o.epoch || a.Time < o.lastTime {
					t.Fatalf("append to %s after migration = %+v, want offset %d", o.name, a, o.head()+1)
				}
			}
			db = reopen(t, db, dir, opts)
			if info := mustTopic(t, db, "trimmed.empty"); info.Head != 18 || info.Earliest != 18 || info.Count != 1 {
				t.Fatalf("trimmed.empty after an append and a reopen: %+v", info)
			}
		})
	}
}

// TestMigrateRefusesBadOldStore: a format-2 store whose metadata does not
// match its log is not migrated half-way silently.
func TestMigrateRefusesBadOldStore(t *testing.T) {
	dir := t.TempDir()
	topics := oldTopics(3, 3, time.Now().UnixMilli())
	topics[0].recs = append(topics[0].recs, broker.Record{Offset: topics[0].head() + 5, Time: 1, Data: []byte("x")})
	writeOldStore(t, dir, formatV2, topics, nil)
	opts := testOptions()
	opts.Logger = quiet
	_, err := Open(dir, opts)
	if err == nil {
		t.Fatal("Open migrated a store with a gap")
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v", err)
	}
}

var crashMigrations = flag.Int("crash.migrations", 4, "migrations TestCrashMigration interrupts with kill -9")

// migrateDirEnv names the directory TestCrashMigrationChild opens; unset,
// the child test skips.
const migrateDirEnv = "BROKERD_STORE_MIGRATE_DIR"

// TestCrashMigrationChild is the process TestCrashMigration kills: it opens
// a store of format 2, which migrates it in transactions of 50 records,
// printing a line after each.
func TestCrashMigrationChild(t *testing.T) {
	dir := os.Getenv(migrateDirEnv)
	if dir == "" {
		t.Skip("run by TestCrashMigration")
	}
	migrateRecords = 50
	out := bufio.NewWriter(os.Stdout)
	migrateHook = func() {
		fmt.Fprintln(out, "step")
		_ = out.Flush()
	}
	db, err := Open(dir, &Options{RetentionInterval: -1, LockTimeout: 5 * time.Second, Logger: quiet})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	fmt.Fprintln(out, "done")
	_ = out.Flush()
	_ = db.Close()
}

// TestCrashMigration kills processes migrating a store of format 2 with
// SIGKILL, at random steps, up to three times per store, then opens it and
// checks that it holds exactly what the old store held.
func TestCrashMigration(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	seed := time.Now().UnixNano()
	r := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d", seed)
	kills := 0
	for cycle := range *crashMigrations {
		dir := t.TempDir()
		topics := oldTopics(uint64(seed)+uint64(cycle), 200, time.Now().UnixMilli())
		writeOldStore(t, dir, formatV2, topics, nil)
		for range 3 {
			// About 130 steps migrate it all: kill within the first 100.
			at := r.IntN(100)
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashMigrationChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), migrateDirEnv+"="+dir)
			cmd.Stderr = os.Stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(stdout)
			steps, done := 0, false
			for sc.Scan() {
				if sc.Text() == "done" {
					done = true
					break
				}
				if steps++; steps > at {
					_ = cmd.Process.Kill()
					kills++
					break
				}
			}
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if done {
				break
			}
		}
		db := openAt(t, dir, &Options{RetentionInterval: -1, Logger: quiet})
		checkMigrated(t, db, topics)
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if kills == 0 {
		t.Fatal("no migration was interrupted")
	}
	t.Logf("%d stores, %d migrations killed", *crashMigrations, kills)
}

// TestMigrateTinyBudget: a budget smaller than a topic still moves on.
func TestMigrateTinyBudget(t *testing.T) {
	dir := t.TempDir()
	topics := oldTopics(11, 20, time.Now().UnixMilli())
	writeOldStore(t, dir, formatV2, topics, nil)
	setMigrateBudget(t, 1)
	opts := testOptions()
	opts.Logger = quiet
	db := openAt(t, dir, opts)
	checkMigrated(t, db, topics)
}
