package store

import (
	"fmt"
	"testing"
	"time"
)

// TestDedupSurvivesReopen: keys published before a restart are duplicates
// after it while within the window, and expired ones are not.
func TestDedupSurvivesReopen(t *testing.T) {
	clk := newClock()
	opts := &Options{NoSync: true, RetentionInterval: -1, Now: clk.Now, DedupWindow: time.Minute}
	db, dir := openTest(t, opts)
	first := map[string]uint64{}
	for i := range 5 {
		k := fmt.Sprint("old", i)
		first[k] = mustAppend(t, db, "t", "x", k).Offset
		mustAppend(t, db, "t", "no key", "")
	}
	clk.Advance(30 * time.Second)
	for i := range 5 {
		k := fmt.Sprint("new", i)
		first[k] = mustAppend(t, db, "t", "x", k).Offset
		first["u"+k] = mustAppend(t, db, "u", "x", k).Offset
	}
	head := mustTopic(t, db, "t").Head

	db = reopen(t, db, dir, opts)
	if n := keyCount(t, db, ""); n != 15 {
		t.Fatalf("keys after reopen = %d, want 15", n)
	}
	clk.Advance(29 * time.Second) // old keys are 59 s old
	for k, off := range first {
		topic, key := "t", k
		if k[0] == 'u' {
			topic, key = "u", k[1:]
		}
		if a := mustAppend(t, db, topic, "dup", key); !a.Dup || a.Offset != off {
			t.Fatalf("%s/%s after reopen = %+v, want a duplicate of %d", topic, key, a, off)
		}
	}

	db = reopen(t, db, dir, opts)
	clk.Advance(time.Second) // old keys expire, new ones are 30 s old
	if a := mustAppend(t, db, "t", "again", "old0"); a.Dup || a.Offset != head+1 {
		t.Fatalf("expired key after reopen = %+v, want offset %d", a, head+1)
	}
	if a := mustAppend(t, db, "t", "dup", "new0"); !a.Dup || a.Offset != first["new0"] {
		t.Fatalf("key within the window after reopen = %+v", a)
	}

	// Reopened after the window, nothing is remembered.
	clk.Advance(time.Minute)
	db = reopen(t, db, dir, opts)
	if n := keyCount(t, db, ""); n != 0 {
		t.Fatalf("keys after the window = %d", n)
	}
}

// TestDedupRebuildBounds: the rebuild keeps the newest record of a key and
// at most DedupMaxKeys keys per topic, the newest.
func TestDedupRebuildBounds(t *testing.T) {
	opts := &Options{NoSync: true, RetentionInterval: -1, DedupMaxKeys: 2}
	db, dir := openTest(t, opts)
	mustAppend(t, db, "t", "1", "a")
	mustAppend(t, db, "t", "2", "b")
	mustAppend(t, db, "t", "3", "c") // forgets a
	if a := mustAppend(t, db, "t", "4", "a"); a.Dup || a.Offset != 4 {
		t.Fatalf("evicted key = %+v", a)
	}
	db = reopen(t, db, dir, opts)
	if n := keyCount(t, db, "t"); n != 2 {
		t.Fatalf("keys after reopen = %d, want 2", n)
	}
	if a := mustAppend(t, db, "t", "x", "a"); !a.Dup || a.Offset != 4 {
		t.Fatalf("a after reopen = %+v, want a duplicate of 4", a)
	}
	if a := mustAppend(t, db, "t", "x", "c"); !a.Dup || a.Offset != 3 {
		t.Fatalf("c after reopen = %+v, want a duplicate of 3", a)
	}
	if a := mustAppend(t, db, "t", "x", "b"); a.Dup || a.Offset != 5 {
		t.Fatalf("b after reopen = %+v, want offset 5", a)
	}
}

// TestDedupGlobalBound: DedupMaxKeysTotal bounds the keys of all topics
// together, forgetting the globally oldest first, also when reopening.
func TestDedupGlobalBound(t *testing.T) {
	clk := newClock()
	opts := &Options{NoSync: true, RetentionInterval: -1, Now: clk.Now, DedupMaxKeysTotal: 3}
	db, dir := openTest(t, opts)
	for _, topic := range []string{"a", "b", "c", "d"} { // d forgets a's key
		mustAppend(t, db, topic, "1", "k")
		clk.Advance(time.Second)
	}
	if n := keyCount(t, db, ""); n != 3 {
		t.Fatalf("keys = %d, want 3", n)
	}
	for _, topic := range []string{"b", "c", "d"} {
		if a := mustAppend(t, db, topic, "2", "k"); !a.Dup || a.Offset != 1 {
			t.Fatalf("%s: %+v, want a duplicate", topic, a)
		}
	}
	if a := mustAppend(t, db, "a", "2", "k"); a.Dup || a.Offset != 2 { // forgets b's
		t.Fatalf("a: %+v, want offset 2", a)
	}
	if a := mustAppend(t, db, "b", "2", "k"); a.Dup || a.Offset != 2 { // forgets c's
		t.Fatalf("b: %+v, want offset 2", a)
	}
	if a := mustAppend(t, db, "d", "3", "k"); !a.Dup || a.Offset != 1 {
		t.Fatalf("d: %+v, want a duplicate", a)
	}

	// Many topics: the total holds, each topic's newest key survives longest.
	for i := range 50 {
		mustAppend(t, db, fmt.Sprint("many", i), "1", "k")
		clk.Advance(time.Millisecond)
	}
	if n := keyCount(t, db, ""); n != 3 {
		t.Fatalf("keys after 50 topics = %d, want 3", n)
	}
	if a := mustAppend(t, db, "many49", "2", "k"); !a.Dup {
		t.Fatalf("newest topic's key forgotten: %+v", a)
	}

	// Reopening with a lower bound keeps the newest keys.
	opts.DedupMaxKeysTotal = 2
	db = reopen(t, db, dir, opts)
	if n := keyCount(t, db, ""); n != 2 {
		t.Fatalf("keys after reopen = %d, want 2", n)
	}
	for _, topic := range []string{"many48", "many49"} {
		if a := mustAppend(t, db, topic, "2", "k"); !a.Dup {
			t.Fatalf("%s after reopen: %+v, want a duplicate", topic, a)
		}
	}
	if a := mustAppend(t, db, "many47", "2", "k"); a.Dup {
		t.Fatalf("many47 after reopen: %+v, want a new record", a)
	}
}

// TestDedupTruncateAndDelete: keys of records removed by TruncateAfter,
// ResetTopic and DeleteTopic are forgotten.
func TestDedupTruncateAndDelete(t *testing.T) {
	db, _ := openTest(t, nil)
	for i := range 5 {
		mustAppend(t, db, "t", "x", fmt.Sprint("k", i))
		mustAppend(t, db, "u", "x", fmt.Sprint("k", i))
	}
	if err := db.TruncateAfter("t", 3); err != nil {
		t.Fatal(err)
	}
	if n := keyCount(t, db, "t"); n != 3 {
		t.Fatalf("keys after truncate = %d", n)
	}
	if a := mustAppend(t, db, "t", "y", "k4"); a.Dup || a.Offset != 4 {
		t.Fatalf("key of a truncated record = %+v", a)
	}
	if err := db.DeleteTopic("t"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ResetTopic("u"); err != nil {
		t.Fatal(err)
	}
	if n := keyCount(t, db, ""); n != 0 {
		t.Fatalf("keys after delete and reset = %d", n)
	}
	if a := mustAppend(t, db, "t", "y", "k0"); a.Dup || a.Offset != 1 {
		t.Fatalf("key of a deleted topic = %+v", a)
	}
}
