package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

// holdApplier stops db's applier before its next transaction until release
// is called: what is logged meanwhile stays in the log and the tail. Call it
// before the appends it must hold.
func holdApplier(t testing.TB, db *DB) (release func()) {
	t.Helper()
	gate := make(chan struct{})
	db.beforeApply = func() { <-gate }
	release = sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release)
	return release
}

// crashCopy copies dir's data file and log into a new directory, as a crash
// would leave them: the data file as of its last transaction, the log
// with every entry written.
func crashCopy(t testing.TB, dir string) string {
	t.Helper()
	to := t.TempDir()
	cp := func(from, to string) {
		src, err := os.Open(from)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		dst, err := os.Create(to)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		if err := dst.Close(); err != nil {
			t.Fatal(err)
		}
	}
	cp(filepath.Join(dir, FileName), filepath.Join(to, FileName))
	if err := os.Mkdir(filepath.Join(to, walDirName), 0o750); err != nil {
		t.Fatal(err)
	}
	segs, err := listSegments(filepath.Join(dir, walDirName))
	if err != nil {
		t.Fatal(err)
	}
	for _, base := range segs {
		cp(filepath.Join(dir, walDirName, segmentName(base)), filepath.Join(to, walDirName, segmentName(base)))
	}
	return to
}

// segments returns the segment files of dir's log.
func segments(t testing.TB, dir string) []uint64 {
	t.Helper()
	segs, err := listSegments(filepath.Join(dir, walDirName))
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

// TestWALReplay crashes with records only in the log (the applier held):
// the next Open replays them into bbolt, with new topics, their metadata
// and idempotency keys, and removes the old segments.
func TestWALReplay(t *testing.T) {
	db, dir := openTest(t, nil)
	mustAppend(t, db, "old", "1", "")
	waitFor(t, func() bool { _, ok := db.tailState("old"); return !ok })
	release := holdApplier(t, db)
	for i := range 10 {
		mustAppend(t, db, "old", fmt.Sprint(i+2), "")
		mustAppend(t, db, "new", fmt.Sprint(i+1), fmt.Sprint("k", i))
	}
	if _, err := db.Ensure(t.Context(), "empty"); err != nil {
		t.Fatal(err)
	}
	crashed := crashCopy(t, dir)
	release()

	db2 := openAt(t, crashed, nil)
	for topic, head := range map[string]uint64{"old": 11, "new": 10, "empty": 0} {
		if info := mustTopic(t, db2, topic); info.Head != head || info.Earliest != 1 {
			t.Fatalf("%s after the replay: %+v, want head %d", topic, info, head)
		}
	}
	recs := readAll(t, db2, "new")
	if !slices.Equal(offsets(recs), span(1, 10)) || string(recs[9].Data) != "10" || recs[9].Key != "k9" {
		t.Fatalf("new after the replay: %v", recs)
	}
	if a := mustAppend(t, db2, "new", "dup", "k3"); !a.Dup || a.Offset != 4 {
		t.Fatalf("a replayed key: %+v, want a duplicate of offset 4", a)
	}
	// Topic ids go on after those the log gave.
	if a := mustAppend(t, db2, "newer", "x", ""); a.Offset != 1 {
		t.Fatalf("append to a new topic: %+v", a)
	}
	ids := map[uint64]string{}
	for _, name := range []string{"old", "new", "empty", "newer"} {
		id := topicMeta(t, db2, name).id
		if other, dup := ids[id]; dup {
			t.Fatalf("%s and %s share id %d", name, other, id)
		}
		ids[id] = name
	}
	if n := len(segments(t, crashed)); n != 1 {
		t.Fatalf("%d log segments after the replay, want the new one", n)
	}
}

// TestWALTornTail cuts the log's last entry short, or damages it: the log
// ends before it, the appends after the reopen go on from there gap-free,
// and a second crash replays them (the damaged entry does not hide them).
func TestWALTornTail(t *testing.T) {
	for _, damage := range []string{"short", "flipped", "zeros"} {
		t.Run(damage, func(t *testing.T) {
			db, dir := openTest(t, nil)
			release := holdApplier(t, db)
			for i := range 5 {
				mustAppend(t, db, "t", fmt.Sprint(i+1), "")
			}
			crashed := crashCopy(t, dir)
			release()
			seg := filepath.Join(crashed, walDirName, segmentName(segments(t, crashed)[0]))
			b, err := os.ReadFile(seg)
			if err != nil {
				t.Fatal(err)
			}
			// The last entry holds record 5 alone (appends were one by one).
			switch damage {
			case "short":
				b = b[:len(b)-3]
			case "flipped":
				b[len(b)-2] ^= 0x40
			case "zeros":
				b = append(b, make([]byte, 100)...)
			}
			if err := os.WriteFile(seg, b, 0o600); err != nil {
				t.Fatal(err)
			}
			db2 := openAt(t, crashed, nil)
			want := uint64(4)
			if damage == "zeros" {
				want = 5
			}
			if info := mustTopic(t, db2, "t"); info.Head != want {
				t.Fatalf("after a %s last entry: %+v, want head %d", damage, info, want)
			}
			release2 := holdApplier(t, db2)
			for i := range 3 {
				if a := mustAppend(t, db2, "t", fmt.Sprint("again", i), ""); a.Offset != want+1+uint64(i) {
					t.Fatalf("append after the replay: %+v", a)
				}
			}
			crashed2 := crashCopy(t, crashed)
			release2()
			db3 := openAt(t, crashed2, nil)
			recs := readAll(t, db3, "t")
			if !slices.Equal(offsets(recs), span(1, want+3)) || string(recs[want].Data) != "again0" {
				t.Fatalf("after the second crash: %v", offsets(recs))
			}
		})
	}
}

// TestWALReadsTheTail reads records that only the log and the tail hold:
// Read (also across bbolt and the tail, and within limits), Topic, Topics
// and OffsetAt see them, before and after the applier runs.
func TestWALReadsTheTail(t *testing.T) {
	clk := newClock()
	opts := testOptions()
	opts.Now = clk.Now
	db, _ := openTest(t, opts)
	for i := range 3 {
		mustAppend(t, db, "b", fmt.Sprint(i+1), "")
		clk.Advance(time.Second)
	}
	waitFor(t, func() bool { _, ok := db.tailState("b"); return !ok })
	release := holdApplier(t, db)
	for i := 3; i < 6; i++ {
		mustAppend(t, db, "b", fmt.Sprint(i+1), "")
		clk.Advance(time.Second)
	}
	mustAppend(t, db, "a", "x", "key")
	mustAppend(t, db, "c", "y", "")
	check := func(when string) {
		t.Helper()
		if got := offsets(mustRead(t, db, "b", 1, 100, 1<<20)); !slices.Equal(got, span(1, 6)) {
			t.Fatalf("%s: read b from 1: %v", when, got)
		}
		if got := offsets(mustRead(t, db, "b", 2, 3, 1<<20)); !slices.Equal(got, span(2, 4)) {
			t.Fatalf("%s: read b from 2, 3 records: %v", when, got)
		}
		if got := offsets(mustRead(t, db, "b", 3, 100, 2)); !slices.Equal(got, span(3, 4)) {
			t.Fatalf("%s: read b from 3, 2 bytes: %v", when, got)
		}
		if got := mustRead(t, db, "b", 5, 100, 1<<20); !slices.Equal(offsets(got), span(5, 6)) || string(got[1].Data) != "6" {
			t.Fatalf("%s: read b from 5: %v", when, got)
		}
		if got := mustRead(t, db, "a", 0, 0, 0); len(got) != 1 || got[0].Key != "key" || string(got[0].Data) != "x" {
			t.Fatalf("%s: read a: %+v", when, got)
		}
		if got := mustRead(t, db, "b", 7, 100, 1<<20); len(got) != 0 {
			t.Fatalf("%s: read b past the head: %v", when, got)
		}
		if info := mustTopic(t, db, "b"); info.Head != 6 || info.Count != 6 || info.Bytes != 6 {
			t.Fatalf("%s: topic b: %+v", when, info)
		}
		page, err := db.Topics("", 2)
		if err != nil || len(page) != 2 || page[0].Topic != "a" || page[1].Topic != "b" || page[1].Head != 6 {
			t.Fatalf("%s: topics: %+v, %v", when, page, err)
		}
		if page, err = db.Topics("a", 10); err != nil || len(page) != 2 || page[1].Topic != "c" || page[1].Head != 1 {
			t.Fatalf("%s: topics after a: %+v, %v", when, page, err)
		}
		start := newClock().Now().UnixMilli()
		for ms, want := range map[int64]uint64{start: 1, start + 1500: 3, start + 4000: 5, start + 5000: 6, start + 9000: 7} {
			off, first, err := db.OffsetAt("b", ms)
			if err != nil || off != want || first != start {
				t.Fatalf("%s: offset at %d: %d, %d, %v; want %d, %d", when, ms-start, off, first, err, want, start)
			}
		}
	}
	if _, ok := db.tailState("b"); !ok {
		t.Fatal("b is not in the tail while the applier is held")
	}
	check("in the tail")
	release()
	waitFor(t, func() bool { _, ok := db.tailState("b"); return !ok })
	check("applied")
}

// TestWALBackpressure holds the applier with a small tail: commits stop
// once the tail is full, so appends wait instead of filling memory, and go
// on when the applier runs again.
func TestWALBackpressure(t *testing.T) {
	opts := testOptions()
	opts.MaxTailBytes = 4 << 10
	opts.MaxBatchRecords = 8
	db, _ := openTest(t, opts)
	release := holdApplier(t, db)
	var acked atomic.Int64
	var wg sync.WaitGroup
	data := make([]byte, 100)
	wg.Add(101)
	go func() {
		for i := range 101 {
			db.AppendAsync(fmt.Sprint("t", i%7), data, "", func(_ broker.Appended, err error) {
				if err != nil {
					t.Error(err)
				}
				acked.Add(1)
				wg.Done()
			})
		}
	}()
	// The tail fills, and every record it holds is acknowledged.
	var n int64
	waitFor(t, func() bool {
		db.tail.mu.Lock()
		defer db.tail.mu.Unlock()
		n = 0
		for _, tt := range db.tail.topics {
			n += int64(len(tt.recs))
		}
		return db.tail.bytes >= opts.MaxTailBytes && acked.Load() == n
	})
	time.Sleep(100 * time.Millisecond) // nothing more may be acknowledged
	db.tail.mu.Lock()
	bytes := db.tail.bytes
	db.tail.mu.Unlock()
	if acked.Load() != n || n >= 100 || bytes > opts.MaxTailBytes+8*(100+tailRecOverhead+64) {
		t.Fatalf("with the applier held: %d acknowledged (then %d), tail %d bytes", n, acked.Load(), bytes)
	}
	release()
	wg.Wait()
	if acked.Load() != 101 {
		t.Fatalf("%d acknowledged", acked.Load())
	}
}

// TestWALDirectOpsWait: operations that work on bbolt directly wait until
// it holds what the log holds, so that they see every logged record.
func TestWALDirectOpsWait(t *testing.T) {
	db, _ := openTest(t, nil)
	release := holdApplier(t, db)
	for i := range 5 {
		mustAppend(t, db, "t", fmt.Sprint(i+1), fmt.Sprint("k", i))
	}
	info := mustTopic(t, db, "t")
	truncated := make(chan error, 1)
	go func() { truncated <- db.TruncateAfter("t", 2) }()
	select {
	case err := <-truncated:
		t.Fatalf("TruncateAfter returned while the applier was held: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if err := <-truncated; err != nil {
		t.Fatal(err)
	}
	if got := offsets(readAll(t, db, "t")); !slices.Equal(got, span(1, 2)) {
		t.Fatalf("after TruncateAfter(2): %v", got)
	}
	// The truncated keys are forgotten; the log goes on from 3.
	if a := mustAppend(t, db, "t", "again", "k3"); a.Dup || a.Offset != 3 {
		t.Fatalf("append after the truncation: %+v", a)
	}
	// AppendAt checks against the logged records.
	if err := db.AppendAt("t", info.Epoch, []broker.Record{{Offset: 3, Time: 1, Data: []byte("other")}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("AppendAt over a logged record: %v", err)
	}
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestWALSegments closes segments as they fill and removes them once bbolt
// covers them; a reopen replays nothing.
func TestWALSegments(t *testing.T) {
	old := walSegment
	walSegment = 4 << 10
	t.Cleanup(func() { walSegment = old })
	db, dir := openTest(t, nil)
	data := make([]byte, 1000)
	for i := range 40 {
		mustAppend(t, db, fmt.Sprint("t", i%3), string(data), "")
	}
	// The applier removes the files after it let go of the tail's lock.
	waitFor(t, func() bool {
		db.tail.mu.Lock()
		defer db.tail.mu.Unlock()
		return db.tail.applied == db.tail.end && len(db.tail.segs) == 1 && len(segments(t, dir)) == 1
	})
	if segs := segments(t, dir); len(segs) != 1 || segs[0] == 0 {
		t.Fatalf("segments once applied: %v", segs)
	}
	db = reopen(t, db, dir, nil)
	for i := range 3 {
		if info := mustTopic(t, db, fmt.Sprint("t", i)); info.Count != 14-int64(i+2)/3 {
			t.Fatalf("t%d: %+v", i, info)
		}
	}
}

// TestWALUpgradesFormat3: a store of format 3 becomes format 4 (the same
// layout with the log) when it opens.
func TestWALUpgradesFormat3(t *testing.T) {
	db, dir := openTest(t, nil)
	mustAppend(t, db, "t", "x", "")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	setFormat(t, dir, formatV3)
	db = openAt(t, dir, nil)
	if got := formatOf(t, db); got != formatVersion {
		t.Fatalf("format %q after the open", got)
	}
	if info := mustTopic(t, db, "t"); info.Head != 1 {
		t.Fatalf("topic after the upgrade: %+v", info)
	}
}

// setFormat writes format as the closed store's format marker.
func setFormat(t testing.TB, dir, format string) {
	t.Helper()
	bdb, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bbolt.Tx) error { return tx.Bucket(rootName).Put(formatKey, []byte(format)) })
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// formatOf returns the open store's format marker.
func formatOf(t testing.TB, db *DB) (format string) {
	t.Helper()
	err := db.bolt.View(func(tx *bbolt.Tx) error {
		format = string(tx.Bucket(rootName).Get(formatKey))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return format
}

// TestWALAppendAt stores replicated records through the log: AppendAt
// compares what it is given with the records of its own batch, of the tail
// and of bbolt, and a crash replays what it logged.
func TestWALAppendAt(t *testing.T) {
	db, dir := openTest(t, nil)
	// A log batch can be held as it begins, so that what queues meanwhile
	// joins it.
	var armed atomic.Bool
	held, gate := make(chan struct{}), make(chan struct{})
	db.beforeLog = func() {
		if armed.CompareAndSwap(true, false) {
			close(held)
			<-gate
		}
	}
	closeGate := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(closeGate)
	const epoch = "e1"
	base := time.Now().UnixMilli()
	recs := func(from, to uint64, tag string) []broker.Record {
		var out []broker.Record
		for off := from; off <= to; off++ {
			out = append(out, broker.Record{Offset: off, Time: base + int64(off), Key: fmt.Sprint("k", off), Data: []byte(fmt.Sprint(tag, off))})
		}
		return out
	}
	if err := db.AppendAt("f", epoch, recs(1, 3, "d")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := db.tailState("f"); return !ok })
	release := holdApplier(t, db)
	if err := db.AppendAt("f", epoch, recs(2, 6, "d")); err != nil {
		t.Fatalf("AppendAt over bbolt's records: %v", err)
	}
	// Two overlapping AppendAts in one batch, over the tail's records.
	armed.Store(true)
	errs := make(chan error, 2)
	go func() { errs <- db.AppendAt("f", epoch, recs(5, 8, "d")) }()
	<-held
	go func() { errs <- db.AppendAt("f", epoch, recs(7, 10, "d")) }()
	waitFor(t, func() bool { return len(db.queue) == 1 })
	var commits atomic.Int64
	db.SetCommitHook(func([]broker.Committed) { commits.Add(1) })
	closeGate()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("AppendAt in one batch: %v", err)
		}
	}
	if n := commits.Load(); n != 1 {
		t.Fatalf("the two AppendAts took %d commits, want 1", n)
	}
	db.SetCommitHook(nil)
	for _, from := range []uint64{2, 5, 9} {
		if err := db.AppendAt("f", epoch, recs(from, from, "x")); !errors.Is(err, ErrConflict) {
			t.Fatalf("a different record at %d: %v, want ErrConflict", from, err)
		}
	}
	if err := db.AppendAt("f", epoch, recs(12, 12, "d")); !errors.Is(err, ErrGap) {
		t.Fatalf("AppendAt past head+1: %v, want ErrGap", err)
	}
	if err := db.AppendAt("f", "e2", recs(11, 11, "d")); !errors.Is(err, ErrEpochMismatch) {
		t.Fatalf("AppendAt with another epoch: %v, want ErrEpochMismatch", err)
	}
	// A new topic from a trimmed log starts at its first record.
	if err := db.AppendAt("g", epoch, recs(40, 41, "d")); err != nil {
		t.Fatal(err)
	}
	crashed := crashCopy(t, dir)
	release()
	for _, d := range []*DB{db, openAt(t, crashed, nil)} {
		got := readAll(t, d, "f")
		if !slices.Equal(offsets(got), span(1, 10)) || string(got[9].Data) != "d10" || got[9].Key != "k10" || got[9].Time != base+10 {
			t.Fatalf("f: %v", got)
		}
		if info := mustTopic(t, d, "g"); info.Earliest != 40 || info.Head != 41 || info.Epoch != epoch {
			t.Fatalf("g: %+v", info)
		}
		if a := mustAppend(t, d, "f", "dup", "k4"); !a.Dup || a.Offset != 4 {
			t.Fatalf("a replicated key: %+v", a)
		}
	}
}
