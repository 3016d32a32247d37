package store

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// fillTopics appends one record to each of n new topics.
func fillTopics(tb testing.TB, db *DB, n int) {
	tb.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i := range n {
		wg.Add(1)
		db.AppendAsync(fmt.Sprintf("probe.%07d", i), []byte(`{"n":1}`), "", func(_ broker.Appended, err error) {
			if err != nil {
				mu.Lock()
				first = err
				mu.Unlock()
			}
			wg.Done()
		})
	}
	wg.Wait()
	if first != nil {
		tb.Fatal(first)
	}
}

// BenchmarkRetentionPass measures one retention pass over a store of many
// topics holding one record each, none of them due: the cost the
// background loop pays every RetentionInterval, in wall and CPU time per
// topic. BROKERD_BENCH_TOPICS sets
// the number of topics (default 100,000).
func BenchmarkRetentionPass(b *testing.B) {
	n := 100_000
	if s := os.Getenv("BROKERD_BENCH_TOPICS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	opts := testOptions()
	db, _ := openTest(b, opts)
	fillTopics(b, db, n)
	if err := db.RunRetention(); err != nil { // waits until bbolt has the records
		b.Fatal(err)
	}
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	for b.Loop() {
		if err := db.RunRetention(); err != nil {
			b.Fatal(err)
		}
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N)/float64(n), "ns/topic")
	// The process's CPU time (every goroutine's, the collector's too).
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/float64(n), "cpu-ns/topic")
}

// BenchmarkTopicClassesCount: what SetTopicClasses costs (the publishes
// wait meanwhile): one pass over BROKERD_BENCH_TOPICS topic names (default
// 100,000), each classified by ten policies as the broker does.
func BenchmarkTopicClassesCount(b *testing.B) {
	n := 100_000
	if s := os.Getenv("BROKERD_BENCH_TOPICS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	db, _ := openTest(b, testOptions())
	fillTopics(b, db, n)
	var list []broker.Policy
	for i := range 10 {
		list = append(list, broker.Policy{Match: "p" + strconv.Itoa(i) + ".*.x", MaxTopics: 1000})
	}
	ps, err := broker.NewPolicies(broker.Policy{MaxTopics: 1 << 30}, list)
	if err != nil {
		b.Fatal(err)
	}
	class := func(topic string) (string, int) {
		p := ps.For(topic)
		return p.Name, p.MaxTopics
	}
	start := time.Now()
	for b.Loop() {
		if err := db.SetTopicClasses(class); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N)/float64(n), "ns/topic")
}

// BenchmarkOpenIdleTopics measures what opening a store of
// BROKERD_BENCH_TOPICS idle topics (default 100,000, one record each,
// written an hour before) holds: the Go heap per topic after a collection,
// and the growth of the process's resident memory, which also counts the
// pages of the mapped file that Open read.
func BenchmarkOpenIdleTopics(b *testing.B) {
	n := 100_000
	if s := os.Getenv("BROKERD_BENCH_TOPICS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	opts := testOptions()
	hourAgo := time.Now().Add(-time.Hour)
	opts.Now = func() time.Time { return hourAgo }
	db, dir := openTest(b, opts)
	fillTopics(b, db, n)
	if err := db.Close(); err != nil {
		b.Fatal(err)
	}
	var heap, rss float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		rss0 := vmRSS(b)
		db, err := Open(dir, testOptions())
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = float64(int64(after.HeapInuse) - int64(before.HeapInuse))
		rss = float64(vmRSS(b) - rss0)
		runtime.KeepAlive(db)
		if err := db.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(heap/float64(n), "heap-B/topic")
	b.ReportMetric(rss/float64(n), "rss-B/topic")
}

// vmRSS returns this process's resident memory in bytes.
func vmRSS(tb testing.TB) int64 {
	tb.Helper()
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Skip("no /proc/self/status:", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	tb.Skip("no VmRSS")
	return 0
}
