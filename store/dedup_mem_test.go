package store

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/google/uuid"
)

// keyIndexBytesPerKey fills a key index with n UUID keys spread over the
// given number of topics (round robin) and returns the heap it holds per
// key, measured after a garbage collection.
func keyIndexBytesPerKey(n, topics int) float64 {
	names := make([]string, topics)
	for i := range names {
		names[i] = fmt.Sprintf("probe.%07d", i)
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = uuid.NewString()
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := newKeyIndex()
	for i, k := range keys {
		x.add(names[i%topics], strings.Clone(k), uint64(i/topics+1), int64(i), n, n)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(x)
	runtime.KeepAlive(names)
	runtime.KeepAlive(keys)
	return (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / float64(n)
}

// BenchmarkDedupKeyMemory reports the memory the idempotency key index
// holds per UUID key, with one key per topic and with every key in one
// topic.
func BenchmarkDedupKeyMemory(b *testing.B) {
	const n = 200_000
	for _, c := range []struct {
		name   string
		topics int
	}{{"one_key_per_topic", n}, {"ten_keys_per_topic", n / 10}, {"one_topic", 1}} {
		b.Run(c.name, func(b *testing.B) {
			var per float64
			for b.Loop() {
				per = keyIndexBytesPerKey(n, c.topics)
			}
			b.ReportMetric(per, "B/key")
		})
	}
}
