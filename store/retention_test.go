package store

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
)

func TestRetention(t *testing.T) {
	type want struct{ earliest, head uint64 }
	cases := []struct {
		name    string
		opts    Retention // Options.Retention
		topic   *Retention
		n       int           // records of 10 bytes, one second apart
		advance time.Duration // after appending
		want    want
	}{
		{"max messages", Retention{MaxMessages: 7}, nil, 20, 0, want{14, 20}},
		{"max bytes", Retention{MaxBytes: 55}, nil, 20, 0, want{16, 20}},
		{"max bytes exact", Retention{MaxBytes: 50}, nil, 20, 0, want{16, 20}},
		{"max age", Retention{MaxAge: 5 * time.Second}, nil, 20, 0, want{16, 20}},
		{"max age all", Retention{MaxAge: 5 * time.Second}, nil, 20, time.Hour, want{21, 20}},
		{"within limits", Retention{MaxMessages: 20, MaxBytes: 200}, nil, 20, 0, want{1, 20}},
		{"strictest wins", Retention{MaxMessages: 10, MaxBytes: 30}, nil, 20, 0, want{18, 20}},
		{"topic override", Retention{MaxMessages: 7}, &Retention{MaxMessages: 3}, 20, 0, want{18, 20}},
		{"topic inherits", Retention{MaxMessages: 7}, &Retention{MaxBytes: 1 << 20}, 20, 0, want{14, 20}},
		{"topic unlimited", Retention{MaxMessages: 7}, &Retention{MaxMessages: -1}, 20, 0, want{1, 20}},
		{"over one op's budget", Retention{MaxMessages: 5}, nil, 3000, 0, want{2996, 3000}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clk := newClock()
			opts := testOptions()
			opts.Now, opts.Retention = clk.Now, c.opts
			db, _ := openTest(t, opts)
			data := "0123456789"
			if c.n > 100 {
				// Faster: replicate in large runs.
				var recs []broker.Record
				for i := 1; i <= c.n; i++ {
					recs = append(recs, broker.Record{Offset: uint64(i), Time: clk.Now().UnixMilli(), Data: []byte(data)})
				}
				if err := db.AppendAt("t", "e", recs); err != nil {
					t.Fatal(err)
				}
			}
			for i := 1; i <= c.n && c.n <= 100; i++ {
				mustAppend(t, db, "t", data, "")
				clk.Advance(time.Second)
			}
			if c.topic != nil {
				if err := db.SetRetention("t", *c.topic); err != nil {
					t.Fatal(err)
				}
			}
			clk.Advance(c.advance)
			if err := db.RunRetention(); err != nil {
				t.Fatal(err)
			}
			info := mustTopic(t, db, "t")
			count := int64(c.want.head + 1 - c.want.earliest)
			if info.Earliest != c.want.earliest || info.Head != c.want.head || info.Count != count || info.Bytes != 10*count {
				t.Fatalf("after retention: %+v, want earliest %d head %d", info, c.want.earliest, c.want.head)
			}
			if got := offsets(readAll(t, db, "t")); !slices.Equal(got, span(c.want.earliest, c.want.head)) {
				t.Fatalf("offsets %v", got)
			}
			// Appends continue at head+1, whatever was trimmed.
			if a := mustAppend(t, db, "t", data, ""); a.Offset != c.want.head+1 {
				t.Fatalf("next append at %d", a.Offset)
			}
			if info := mustTopic(t, db, "t"); info.Earliest != c.want.earliest && !(count == 0 && info.Earliest == c.want.head+1) {
				t.Fatalf("after the next append: %+v", info)
			}
		})
	}
}

func TestRetentionPersisted(t *testing.T) {
	db, dir := openTest(t, nil)
	for range 10 {
		mustAppend(t, db, "t", "x", "")
	}
	if err := db.SetRetention("t", Retention{MaxMessages: 4}); err != nil {
		t.Fatal(err)
	}
	if err := db.SetRetention("missing", Retention{}); err == nil {
		t.Fatal("SetRetention on a missing topic succeeded")
	}
	db = reopen(t, db, dir, nil)
	if err := db.RunRetention(); err != nil {
		t.Fatal(err)
	}
	if info := mustTopic(t, db, "t"); info.Earliest != 7 || info.Head != 10 {
		t.Fatalf("after reopen and retention: %+v", info)
	}
	// Clearing the setting brings back the defaults (no trimming here).
	if err := db.SetRetention("t", Retention{}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		mustAppend(t, db, "t", "x", "")
	}
	if err := db.RunRetention(); err != nil {
		t.Fatal(err)
	}
	if info := mustTopic(t, db, "t"); info.Earliest != 7 || info.Head != 20 {
		t.Fatalf("after clearing: %+v", info)
	}
}

// TestRetentionBackground lets the loop trim while appends go on.
func TestRetentionBackground(t *testing.T) {
	opts := testOptions()
	opts.RetentionInterval = 5 * time.Millisecond
	opts.Retention = Retention{MaxMessages: 50}
	db, _ := openTest(t, opts)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		a := mustAppend(t, db, "t", fmt.Sprint(i), "")
		if a.Offset != uint64(i+1) {
			t.Fatalf("append %d got offset %d", i, a.Offset)
		}
		if info := mustTopic(t, db, "t"); info.Earliest > 1 && i >= 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background loop never trimmed")
		}
	}
}

// TestRetentionQueuedBehindAppends queues a retention pass behind appends
// that the write-ahead log takes: retention works on bbolt once it holds
// them, so it counts them, and the hook still reports every append.
func TestRetentionQueuedBehindAppends(t *testing.T) {
	db, _ := openTest(t, nil)
	for range 3 {
		mustAppend(t, db, "t", "x", "")
	}
	if err := db.SetRetention("t", Retention{MaxMessages: 2}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var hooked []uint64
	db.SetCommitHook(func(batch []broker.Committed) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range batch {
			hooked = append(hooked, offsets(c.Records)...)
		}
	})
	release := pause(t, db)
	var results []<-chan result
	for range 5 {
		results = append(results, appendAsync(db, "t", "y", ""))
	}
	retained := make(chan error, 1)
	go func() { retained <- db.RunRetention() }()
	waitFor(t, func() bool { return len(db.queue) == 6 })
	release()
	for _, r := range results {
		if res := <-r; res.err != nil {
			t.Fatal(res.err)
		}
	}
	if err := <-retained; err != nil {
		t.Fatal(err)
	}
	if info := mustTopic(t, db, "t"); info.Earliest != 7 || info.Head != 8 || info.Count != 2 {
		t.Fatalf("after retention behind appends: %+v, want 7..8", info)
	}
	if got := offsets(readAll(t, db, "t")); !slices.Equal(got, span(7, 8)) {
		t.Fatalf("read %v, want 7..8", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(hooked, span(4, 8)) {
		t.Fatalf("hook saw %v", hooked)
	}
}

// TestRetentionSharesABatchWithNeighbours trims a topic whole in the same
// transaction as appends to the topics on either side of its records: the
// topics' logs share the records bucket, and an append finds its topic's
// head from the last record, across the leaves retention empties.
func TestRetentionSharesABatchWithNeighbours(t *testing.T) {
	db, _ := openTest(t, nil)
	data := make([]byte, 100)
	for _, topic := range []string{"a", "b", "c"} {
		recs := make([]broker.Record, 3000)
		for i := range recs {
			recs[i] = broker.Record{Offset: uint64(i + 1), Time: time.Now().UnixMilli(), Data: data}
		}
		if err := db.AppendAt(topic, "e", recs); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.SetRetention("b", Retention{MaxMessages: 1}); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		release := pause(t, db)
		done := make(chan error, 1)
		go func() { done <- db.RunRetention() }()
		waitFor(t, func() bool { return len(db.queue) >= 1 })
		ra, rc := appendAsync(db, "a", "x", ""), appendAsync(db, "c", "x", "")
		rb := appendAsync(db, "b", "x", "")
		release()
		for _, r := range []<-chan result{ra, rc, rb} {
			res := <-r
			if res.err != nil {
				t.Fatal(res.err)
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		for _, topic := range []string{"a", "c"} {
			if info := mustTopic(t, db, topic); info.Head != uint64(3001+round) || info.Count != int64(3001+round) {
				t.Fatalf("round %d: %s: %+v", round, topic, info)
			}
		}
		if err := db.Check(); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.RunRetention(); err != nil {
		t.Fatal(err)
	}
	if info := mustTopic(t, db, "b"); info.Head != 3003 || info.Count != 1 || info.Earliest != 3003 {
		t.Fatalf("b: %+v", info)
	}
}
