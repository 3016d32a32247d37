//go:build !race

package store

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/google/uuid"
)

// TestDedupKeyMemory: the key index holds about what the package
// documentation says per UUID key, however the keys spread over topics
// (the race detector's allocations would distort the figures).
func TestDedupKeyMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("fills an index of 100,000 keys")
	}
	const n = 100_000
	for _, c := range []struct {
		name   string
		topics int
		max    float64 // bytes per key; package doc: ≈ 140–170 in a topic, ≈ 260 alone in one
	}{{"one key per topic", n, 300}, {"ten keys per topic", n / 10, 200}, {"one topic", 1, 200}} {
		per := keyIndexBytesPerKey(n, c.topics)
		t.Logf("%s: %.0f bytes per key", c.name, per)
		if per > c.max {
			t.Errorf("%s: %.0f bytes per key, want at most %.0f", c.name, per, c.max)
		}
	}
}

// TestDedupKeyMemoryReleased: once the keys of a burst expire, the index
// gives their memory back (Go's maps keep their room when entries go).
func TestDedupKeyMemoryReleased(t *testing.T) {
	if testing.Short() {
		t.Skip("fills an index of 100,000 keys")
	}
	const n = 100_000
	x := newKeyIndex()
	var before, full, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		x.add(fmt.Sprintf("burst.%07d", i), uuid.NewString(), 1, int64(i), n, n)
	}
	x.add("steady", "k", 1, n, n, n)
	runtime.GC()
	runtime.ReadMemStats(&full)
	x.expire(n - 1) // all but the last key
	runtime.GC()
	runtime.ReadMemStats(&after)
	held, left := int64(full.HeapAlloc-before.HeapAlloc), int64(after.HeapAlloc)-int64(before.HeapAlloc)
	t.Logf("%d keys: %d KiB; one left: %d KiB", n+1, held>>10, left>>10)
	if x.count("") != 1 || left > held/20 {
		t.Fatalf("after the burst expired: %d keys, %d of %d KiB still held", x.count(""), left>>10, held>>10)
	}
	if err := x.check(); err != nil {
		t.Fatal(err)
	}
}
