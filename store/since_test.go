package store

import (
	"errors"
	"testing"

	"github.com/brokerd/brokerd/broker"
)

func TestOffsetAt(t *testing.T) {
	db, _ := openTest(t, testOptions())
	// Times 100, 100, 200, 300, 300, 300, 400 at offsets 1..7.
	times := []int64{100, 100, 200, 300, 300, 300, 400}
	recs := make([]broker.Record, len(times))
	for i, ms := range times {
		recs[i] = broker.Record{Offset: uint64(i + 1), Time: ms, Data: []byte(`1`)}
	}
	if err := db.AppendAt("t", "e1", recs); err != nil {
		t.Fatal(err)
	}
	check := func(ms int64, wantOff uint64, wantEarliest int64) {
		t.Helper()
		off, et, err := db.OffsetAt("t", ms)
		if err != nil || off != wantOff || et != wantEarliest {
			t.Errorf("OffsetAt(%d) = %d, %d, %v; want %d, %d", ms, off, et, err, wantOff, wantEarliest)
		}
	}
	for _, c := range []struct {
		ms   int64
		want uint64
	}{{0, 1}, {100, 1}, {101, 3}, {200, 3}, {250, 4}, {300, 4}, {301, 7}, {400, 7}, {401, 8}, {1 << 50, 8}} {
		check(c.ms, c.want, 100)
	}

	// Trim the first three: the search starts at the earliest retained.
	if err := db.SetRetention("t", Retention{MaxMessages: 4, MaxAge: -1, MaxBytes: -1}); err != nil {
		t.Fatal(err)
	}
	if err := db.RunRetention(); err != nil {
		t.Fatal(err)
	}
	if info, _, _ := db.Topic("t"); info.Earliest != 4 {
		t.Fatalf("earliest after retention = %d, want 4", info.Earliest)
	}
	check(0, 4, 300)
	check(300, 4, 300)
	check(301, 7, 300)
	check(500, 8, 300)

	// A log with nothing retained.
	if err := db.SetRetention("t", Retention{MaxMessages: 0, MaxAge: -1, MaxBytes: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Ensure(t.Context(), "empty"); err != nil {
		t.Fatal(err)
	}
	if off, et, err := db.OffsetAt("empty", 5); off != 1 || et != 0 || err != nil {
		t.Errorf("OffsetAt(empty) = %d, %d, %v; want 1, 0", off, et, err)
	}
	if _, _, err := db.OffsetAt("none", 5); !errors.Is(err, broker.ErrTopicNotFound) {
		t.Errorf("OffsetAt(none) err = %v, want ErrTopicNotFound", err)
	}
}

func BenchmarkOffsetAt(b *testing.B) {
	db, _ := openTest(b, testOptions())
	const n = 100000
	recs := make([]broker.Record, 0, 1000)
	for i := 1; i <= n; i++ {
		recs = append(recs, broker.Record{Offset: uint64(i), Time: int64(i / 3), Data: []byte(`{"x":1}`)})
		if len(recs) == cap(recs) {
			if err := db.AppendAt("t", "e", recs); err != nil {
				b.Fatal(err)
			}
			recs = recs[:0]
		}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, _, err := db.OffsetAt("t", int64(i%(n/3))); err != nil {
			b.Fatal(err)
		}
	}
}
