package store

import (
	"context"
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

	"github.com/brokerd/brokerd/broker"
)

// recTime is the base time of the records recs makes: recent, so that
// neither idempotency nor retention take them for old.
var recTime = time.Now().UnixMilli()

func recs(from, to uint64, tag string) []broker.Record {
	var out []broker.Record
	for o := from; o <= to; o++ {
		out = append(out, broker.Record{Offset: o, Time: recTime + int64(o), Key: fmt.Sprint("k", o), Data: []byte(fmt.Sprintf("%s%d", tag, o))})
	}
	return out
}

func TestAppendAt(t *testing.T) {
	type step struct {
		epoch string
		recs  []broker.Record
		want  error
	}
	cases := []struct {
		name      string
		steps     []step
		wantFirst uint64
		wantHead  uint64
		wantHook  []uint64
	}{
		{"from one", []step{{"e", recs(1, 3, "a"), nil}}, 1, 3, span(1, 3)},
		{"continues", []step{{"e", recs(1, 3, "a"), nil}, {"e", recs(4, 6, "a"), nil}}, 1, 6, span(1, 6)},
		{"new topic from a trimmed log", []step{{"e", recs(100, 102, "a"), nil}, {"e", recs(103, 103, "a"), nil}}, 100, 103, span(100, 103)},
		{"gap", []step{{"e", recs(1, 3, "a"), nil}, {"e", recs(5, 6, "a"), ErrGap}}, 1, 3, span(1, 3)},
		{"not consecutive", []step{{"e", append(recs(1, 2, "a"), recs(4, 4, "a")...), ErrGap}}, 0, 0, nil},
		{"offset zero", []step{{"e", recs(0, 1, "a"), ErrGap}}, 0, 0, nil},
		{"identical overlap", []step{{"e", recs(1, 3, "a"), nil}, {"e", recs(2, 3, "a"), nil}}, 1, 3, span(1, 3)},
		{"overlap and more", []step{{"e", recs(1, 3, "a"), nil}, {"e", recs(2, 5, "a"), nil}}, 1, 5, span(1, 5)},
		{"conflict", []step{{"e", recs(1, 3, "a"), nil}, {"e", recs(3, 5, "b"), ErrConflict}}, 1, 3, span(1, 3)},
		{"conflict in time", []step{{"e", recs(1, 3, "a"), nil}, {"e", []broker.Record{{Offset: 3, Time: 1, Key: "k3", Data: []byte("a3")}}, ErrConflict}}, 1, 3, span(1, 3)},
		{"epoch mismatch", []step{{"e", recs(1, 3, "a"), nil}, {"f", recs(4, 4, "a"), ErrEpochMismatch}}, 1, 3, span(1, 3)},
		{"empty creates", []step{{"e", nil, nil}, {"e", recs(7, 8, "a"), nil}}, 7, 8, span(7, 8)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db, _ := openTest(t, nil)
			var mu sync.Mutex
			var hooked []uint64
			db.SetCommitHook(func(batch []broker.Committed) {
				mu.Lock()
				defer mu.Unlock()
				for _, cm := range batch {
					if cm.Epoch != "e" {
						t.Errorf("hook epoch %q", cm.Epoch)
					}
					hooked = append(hooked, offsets(cm.Records)...)
				}
			})
			for i, s := range c.steps {
				err := db.AppendAt("t", s.epoch, s.recs)
				if !errors.Is(err, s.want) || (err == nil) != (s.want == nil) {
					t.Fatalf("step %d: AppendAt = %v, want %v", i, err, s.want)
				}
			}
			info, ok, _ := db.Topic("t")
			if c.wantHead == 0 {
				if ok {
					t.Fatalf("topic exists: %+v", info)
				}
				return
			}
			if info.Epoch != "e" || info.Earliest != c.wantFirst || info.Head != c.wantHead {
				t.Fatalf("topic %+v, want %d..%d", info, c.wantFirst, c.wantHead)
			}
			got := readAll(t, db, "t")
			want := recs(c.wantFirst, c.wantHead, "a")
			if len(got) != len(want) {
				t.Fatalf("stored %d records, want %d", len(got), len(want))
			}
			for i := range got {
				if got[i].Offset != want[i].Offset || got[i].Time != want[i].Time || got[i].Key != want[i].Key || string(got[i].Data) != string(want[i].Data) {
					t.Fatalf("stored %+v, want %+v", got[i], want[i])
				}
			}
			mu.Lock()
			hookedNow := slices.Clone(hooked)
			mu.Unlock()
			if !slices.Equal(hookedNow, c.wantHook) {
				t.Fatalf("hook saw %v, want %v", hookedNow, c.wantHook)
			}
			// Replicated keys are remembered for when this node owns the topic.
			if a := mustAppend(t, db, "t", "new", fmt.Sprint("k", c.wantHead)); !a.Dup || a.Offset != c.wantHead {
				t.Fatalf("append with a replicated key = %+v", a)
			}
		})
	}
}

func TestAppendAtTooLarge(t *testing.T) {
	db, _ := openTest(t, &Options{NoSync: true, RetentionInterval: -1, MaxRecordBytes: 4})
	err := db.AppendAt("t", "e", []broker.Record{{Offset: 1, Data: []byte("12345")}})
	if !errors.Is(err, broker.ErrTooLarge) {
		t.Fatalf("AppendAt = %v", err)
	}
	if err := db.AppendAt("t", "", nil); err == nil {
		t.Fatal("AppendAt without an epoch succeeded")
	}
}

func TestTruncateAfter(t *testing.T) {
	cases := []struct {
		name         string
		n            uint64
		trimTo       int64 // MaxMessages applied before truncating; 0: none
		after        uint64
		wantEarliest uint64
		wantHead     uint64
	}{
		{"suffix", 10, 0, 6, 1, 6},
		{"everything", 10, 0, 0, 1, 0},
		{"at head", 10, 0, 10, 1, 10},
		{"above head", 10, 0, 20, 1, 10},
		{"below earliest", 10, 3, 5, 6, 5},
		{"keeps earliest", 10, 6, 7, 5, 7},
		{"several transactions", truncateBudget + 500, 0, 100, 1, 100},
		{"everything, many pages", 5000, 0, 0, 1, 0},
		{"everything, several transactions", truncateBudget + 500, 0, 0, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db, _ := openTest(t, nil)
			if err := db.AppendAt("t", "e", recs(1, c.n, "a")); err != nil {
				t.Fatal(err)
			}
			if c.trimTo > 0 {
				if err := db.SetRetention("t", Retention{MaxMessages: c.trimTo}); err != nil {
					t.Fatal(err)
				}
				if err := db.RunRetention(); err != nil {
					t.Fatal(err)
				}
			}
			if err := db.TruncateAfter("t", c.after); err != nil {
				t.Fatal(err)
			}
			info := mustTopic(t, db, "t")
			count := int64(c.wantHead + 1 - c.wantEarliest)
			if info.Epoch != "e" || info.Earliest != c.wantEarliest || info.Head != c.wantHead || info.Count != count {
				t.Fatalf("after truncate: %+v, want %d..%d", info, c.wantEarliest, c.wantHead)
			}
			if got := offsets(readAll(t, db, "t")); !slices.Equal(got, span(c.wantEarliest, c.wantHead)) {
				t.Fatalf("offsets %v", got[:min(len(got), 20)])
			}
			// Keys of removed records are forgotten, kept ones remembered.
			if c.wantHead < c.n {
				if a := mustAppend(t, db, "t", "x", fmt.Sprint("k", c.wantHead+1)); a.Dup || a.Offset != c.wantHead+1 {
					t.Fatalf("append with a removed record's key = %+v", a)
				}
			}
			if c.wantHead > 0 && c.wantHead >= c.wantEarliest {
				if a := mustAppend(t, db, "t", "x", fmt.Sprint("k", c.wantHead)); !a.Dup {
					t.Fatalf("append with a kept record's key = %+v", a)
				}
			}
			// The follower can take the owner's records again.
			if err := db.AppendAt("t", "e", recs(c.wantHead+1, c.wantHead+1, "b")); err != nil && c.wantHead == c.n {
				t.Fatal(err)
			}
		})
	}
	db, _ := openTest(t, nil)
	if err := db.TruncateAfter("missing", 1); !errors.Is(err, broker.ErrTopicNotFound) {
		t.Fatalf("TruncateAfter(missing) = %v", err)
	}
}

func TestClosed(t *testing.T) {
	db, _ := openTest(t, nil)
	mustAppend(t, db, "t", "{}", "")

	// What is queued when Close starts is committed.
	release := pause(t, db)
	queued := appendAsync(db, "t", "{}", "")
	closed := make(chan error)
	go func() { closed <- db.Close() }()
	release()
	if r := <-queued; r.err != nil || r.a.Offset != 2 {
		t.Fatalf("append queued before Close = %+v, %v", r.a, r.err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}

	isClosed := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, broker.ErrClosed) {
			t.Errorf("%s after Close = %v", name, err)
		}
	}
	_, err := db.Append(t.Context(), "t", []byte("{}"), "")
	isClosed("Append", err)
	isClosed("AppendAsync", (<-appendAsync(db, "t", "{}", "")).err)
	ch := make(chan error, 1)
	db.CommitAsync("c", "t", "e", 1, func(_ broker.ConsumerOffset, err error) { ch <- err })
	isClosed("CommitAsync", <-ch)
	_, err = db.Ensure(t.Context(), "t")
	isClosed("Ensure", err)
	_, err = db.Read("t", 1, 1, 1)
	isClosed("Read", err)
	_, _, err = db.Topic("t")
	isClosed("Topic", err)
	_, err = db.Topics("", 1)
	isClosed("Topics", err)
	_, _, err = db.Consumer("c", "t")
	isClosed("Consumer", err)
	_, err = db.Consumers("c")
	isClosed("Consumers", err)
	isClosed("AppendAt", db.AppendAt("t", "e", recs(1, 1, "a")))
	isClosed("TruncateAfter", db.TruncateAfter("t", 0))
	_, err = db.ResetTopic("t")
	isClosed("ResetTopic", err)
	isClosed("DeleteTopic", db.DeleteTopic("t"))
	isClosed("SetRetention", db.SetRetention("t", Retention{}))
	isClosed("RunRetention", db.RunRetention())
	isClosed("Check", db.Check())
	db.SetCommitHook(nil)
	if db.Size() <= 0 {
		t.Errorf("Size after Close = %d", db.Size())
	}
}

// TestCloseUnblocksSenders closes while appenders wait on a full queue.
func TestCloseUnblocksSenders(t *testing.T) {
	db, _ := openTest(t, &Options{NoSync: true, RetentionInterval: -1, MaxBatchRecords: 2})
	release := pause(t, db)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 { // the queue holds 4
		wg.Go(func() {
			_, err := db.Append(t.Context(), "t", []byte("{}"), "")
			errs <- err
		})
	}
	waitFor(t, func() bool { return len(db.queue) == cap(db.queue) })
	go func() { _ = db.Close() }()
	waitFor(t, db.isClosed)
	release()
	wg.Wait()
	close(errs)
	ok, closed := 0, 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, broker.ErrClosed):
			closed++
		default:
			t.Fatal(err)
		}
	}
	if ok+closed != 20 || closed == 0 {
		t.Fatalf("%d stored, %d refused", ok, closed)
	}
}

// TestBackupWhileAppending: Backup copies the store as it was when the copy
// began, from a read transaction that lets appends go on while the reader
// of the copy stalls; the copy opens as a store and passes Check.
func TestBackupWhileAppending(t *testing.T) {
	db, _ := openTest(t, nil)
	for i := 1; i <= 100; i++ {
		mustAppend(t, db, "bk.t", fmt.Sprintf(`{"i":%d}`, i), "")
	}
	pr, pw := io.Pipe()
	var size atomic.Int64
	type outcome struct {
		n   int64
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		n, err := db.Backup(pw, func(s int64) { size.Store(s) })
		pw.CloseWithError(err)
		done <- outcome{n, err}
	}()
	// One byte read: the copy has begun and now waits for its reader.
	first := make([]byte, 1)
	if _, err := io.ReadFull(pr, first); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for i := 101; i <= 150; i++ {
		if _, err := db.Append(ctx, "bk.t", []byte(fmt.Sprintf(`{"i":%d}`, i)), ""); err != nil {
			t.Fatalf("append %d while the copy waits: %v", i, err)
		}
	}
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write(first)
	copied, err := io.Copy(f, pr)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	o := <-done
	if o.err != nil || o.n != copied+1 || o.n != size.Load() {
		t.Fatalf("Backup = %d, %v; read %d bytes; size said %d", o.n, o.err, copied+1, size.Load())
	}
	if h := mustTopic(t, db, "bk.t").Head; h != 150 {
		t.Fatalf("head %d after the appends, want 150", h)
	}
	cp := openAt(t, dir, nil)
	if err := cp.Check(); err != nil {
		t.Fatalf("Check of the copy: %v", err)
	}
	got := readAll(t, cp, "bk.t")
	if !slices.Equal(offsets(got), span(1, 100)) || string(got[99].Data) != `{"i":100}` {
		t.Fatalf("the copy holds offsets %v, want 1-100 (the store when the copy began)", offsets(got))
	}
	if err := cp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Backup(io.Discard, nil); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Backup after Close: %v, want ErrClosed", err)
	}
}
