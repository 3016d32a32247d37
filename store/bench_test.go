package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/brokerd/brokerd/broker"
)

// BenchmarkAppend measures durable (fsync'd) appends by concurrent callers
// of Append, each waiting for its record before sending the next. keys=none
// appends without an idempotency key; keys=random gives every append a
// random UUID v4 key (what the JavaScript client sends), keys=ordered a
// time-ordered one (UUID v7), at 256 appenders. Keys are made before the
// timer starts, so that only the store's work is measured.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{128, 4096} {
		for _, appenders := range []int{1, 16, 256} {
			b.Run(fmt.Sprintf("keys=none/size=%d/appenders=%d", size, appenders), func(b *testing.B) {
				benchAppend(b, size, appenders, noKey)
			})
		}
	}
	for _, keys := range []struct {
		name string
		next func() string
	}{{"random", randomKey}, {"ordered", orderedKey}} {
		for _, size := range []int{128, 4096} {
			b.Run(fmt.Sprintf("keys=%s/size=%d/appenders=256", keys.name, size), func(b *testing.B) {
				benchAppend(b, size, 256, keys.next)
			})
		}
	}
}

// BenchmarkAppendTopics appends 128-byte records to many topics at once,
// the appenders taking the topics round robin in a shuffled order (so that
// consecutive appends do not go to topics created one after the other,
// whose records a store might keep side by side): each group commit writes
// to many topics' logs.
func BenchmarkAppendTopics(b *testing.B) {
	for _, topics := range []int{1, 10, 100, 1000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("topics=%d/appenders=256", topics), func(b *testing.B) {
			db, _ := openTest(b, &Options{RetentionInterval: -1})
			names := make([]string, topics)
			for i := range names {
				names[i] = fmt.Sprintf("bench.%d", i)
			}
			// Create the topics from many goroutines: they share commits.
			var created atomic.Int64
			var cg sync.WaitGroup
			for range 256 {
				cg.Go(func() {
					for n := created.Add(1); n <= int64(topics); n = created.Add(1) {
						if _, err := db.Ensure(context.Background(), names[n-1]); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			cg.Wait()
			rand.New(rand.NewPCG(1, 2)).Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
			var commits atomic.Int64
			db.SetCommitHook(func([]broker.Committed) { commits.Add(1) })
			pages := writes(db)
			data := make([]byte, 128)
			var next atomic.Int64
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range 256 {
				wg.Go(func() {
					for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
						if _, err := db.Append(context.Background(), names[int(n)%topics], data, ""); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
			b.ReportMetric(float64(b.N)/float64(max(commits.Load(), 1)), "records/commit")
			b.ReportMetric(float64(writes(db)-pages)/float64(max(commits.Load(), 1)), "pages/commit")
		})
	}
}

func noKey() string { return "" }

func randomKey() string { return uuid.New().String() }

func orderedKey() string { return uuid.Must(uuid.NewV7()).String() }

func benchAppend(b *testing.B, size, appenders int, key func() string) {
	db, _ := openTest(b, &Options{RetentionInterval: -1})
	var commits atomic.Int64
	db.SetCommitHook(func([]broker.Committed) { commits.Add(1) })
	data := make([]byte, size)
	for i := range data {
		data[i] = 'a' + byte(i%26)
	}
	keys := make([]string, b.N)
	for i := range keys {
		keys[i] = key()
	}
	ctx := context.Background()
	var next, dups atomic.Int64
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range appenders {
		wg.Go(func() {
			for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
				a, err := db.Append(ctx, "bench", data, keys[n-1])
				if err != nil {
					b.Error(err)
					return
				}
				if a.Dup {
					dups.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if n := dups.Load(); n > 0 {
		b.Fatalf("%d appends with fresh keys reported as duplicates", n)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(b.N)/float64(max(commits.Load(), 1)), "records/commit")
}

// replay is a 1,000,000-record topic built once for BenchmarkReplay.
var replay struct {
	once sync.Once
	dir  string
	db   *DB
	err  error
}

const replayRecords = 1_000_000

func replayDB(b *testing.B) *DB {
	replay.once.Do(func() {
		if replay.dir, replay.err = os.MkdirTemp("", "store-replay-"); replay.err != nil {
			return
		}
		if replay.db, replay.err = Open(replay.dir, &Options{NoSync: true, RetentionInterval: -1}); replay.err != nil {
			return
		}
		data := make([]byte, 128)
		for i := range data {
			data[i] = 'a' + byte(i%26)
		}
		now := time.Now().UnixMilli()
		const run = 8192
		recs := make([]broker.Record, 0, run)
		for off := uint64(1); off <= replayRecords; off++ {
			recs = append(recs, broker.Record{Offset: off, Time: now, Data: data})
			if len(recs) == run || off == replayRecords {
				if replay.err = replay.db.AppendAt("replay", "e", recs); replay.err != nil {
					return
				}
				recs = recs[:0]
			}
		}
	})
	if replay.err != nil {
		b.Fatal(replay.err)
	}
	return replay.db
}

// closeReplay releases the replay topic; TestMain calls it.
func closeReplay() {
	if replay.db != nil {
		_ = replay.db.Close()
	}
	if replay.dir != "" {
		_ = os.RemoveAll(replay.dir)
	}
}

// BenchmarkReplay reads a 1,000,000-record topic of 128-byte records from
// the start in pages of 1,000, as a subscriber catching up does; one op is
// one record.
func BenchmarkReplay(b *testing.B) {
	db := replayDB(b)
	b.SetBytes(128)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	from := uint64(1)
	for n := 0; n < b.N; {
		recs, err := db.Read("replay", from, 1000, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		if len(recs) == 0 {
			from = 1
			continue
		}
		n += len(recs)
		from = recs[len(recs)-1].Offset + 1
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
}

// BenchmarkCommit measures durable consumer commits by concurrent callers,
// each waiting for its commit before sending the next.
func BenchmarkCommit(b *testing.B) {
	for _, committers := range []int{1, 256} {
		b.Run(fmt.Sprintf("committers=%d", committers), func(b *testing.B) {
			db, _ := openTest(b, &Options{RetentionInterval: -1})
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for c := range committers {
				consumer := fmt.Sprint("consumer-", c)
				wg.Go(func() {
					done := make(chan error, 1)
					for {
						n := next.Add(1)
						if n > int64(b.N) {
							return
						}
						db.CommitAsync(consumer, "bench", "e", uint64(n), func(_ broker.ConsumerOffset, err error) { done <- err })
						if err := <-done; err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "commits/s")
		})
	}
}

// BenchmarkTruncate measures TruncateAfter dropping a topic's whole log of
// records 128-byte records, as a follower drops a suffix its owner never
// acknowledged; one op is one truncation.
func BenchmarkTruncate(b *testing.B) {
	for _, records := range []int{1_000, 20_000} {
		b.Run(fmt.Sprintf("records=%d", records), func(b *testing.B) {
			db, _ := openTest(b, &Options{RetentionInterval: -1})
			recs := make([]broker.Record, records)
			for i := range recs {
				recs[i] = broker.Record{Offset: uint64(i + 1), Time: 1, Data: make([]byte, 128)}
			}
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				for i := 0; i < len(recs); i += 1000 {
					if err := db.AppendAt("trunc", "e", recs[i:min(i+1000, len(recs))]); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				if err := db.TruncateAfter("trunc", 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// writes returns the pages db's transactions have written.
func writes(db *DB) int64 {
	st := db.bolt.Stats()
	return st.TxStats.GetWrite()
}
