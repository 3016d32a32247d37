//go:build !race

package store

import "testing"

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
