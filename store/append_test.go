package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/brokerd/brokerd/broker"
)

func TestAppendOffsets(t *testing.T) {
	db, _ := openTest(t, nil)
	for i := 1; i <= 50; i++ {
		for _, topic := range []string{"a", "b.c"} {
			a := mustAppend(t, db, topic, fmt.Sprintf(`{"n":%d}`, i), "")
			if a.Offset != uint64(i) || a.Dup || a.Topic != topic || a.Epoch == "" {
				t.Fatalf("append %d to %s = %+v", i, topic, a)
			}
		}
	}
	for _, topic := range []string{"a", "b.c"} {
		recs := readAll(t, db, topic)
		if got := offsets(recs); !slices.Equal(got, span(1, 50)) {
			t.Fatalf("%s offsets = %v", topic, got)
		}
		for i, r := range recs {
			if want := fmt.Sprintf(`{"n":%d}`, i+1); string(r.Data) != want || r.Key != "" || r.Time == 0 {
				t.Fatalf("%s record %d = %+v", topic, i, r)
			}
			if i > 0 && r.Time < recs[i-1].Time {
				t.Fatalf("time went back at %d", r.Offset)
			}
		}
		info := mustTopic(t, db, topic)
		want := broker.TopicInfo{Topic: topic, Epoch: info.Epoch, Earliest: 1, Head: 50, Count: 50, Bytes: int64(9*7 + 41*8)}
		if info != want {
			t.Fatalf("Topic(%s) = %+v, want %+v", topic, info, want)
		}
	}
}

func TestConcurrentAppends(t *testing.T) {
	db, _ := openTest(t, nil)
	const goroutines, each = 64, 40
	topics := []string{"x", "y", "z"}
	var (
		mu     sync.Mutex
		hooked = map[string][]uint64{}
	)
	db.SetCommitHook(func(batch []broker.Committed) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range batch {
			for _, r := range c.Records {
				hooked[c.Topic] = append(hooked[c.Topic], r.Offset)
			}
		}
	})
	got := make([][]broker.Appended, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				topic := topics[(g+i)%len(topics)]
				a, err := db.Append(context.Background(), topic, []byte(fmt.Sprintf("%d/%d", g, i)), "")
				if err != nil {
					t.Error(err)
					return
				}
				got[g] = append(got[g], a)
			}
		})
	}
	wg.Wait()
	seen := map[string]map[uint64]string{}
	for g, as := range got {
		for i, a := range as {
			if seen[a.Topic] == nil {
				seen[a.Topic] = map[uint64]string{}
			}
			if prev, dup := seen[a.Topic][a.Offset]; dup {
				t.Fatalf("offset %s/%d given twice: %s and %d/%d", a.Topic, a.Offset, prev, g, i)
			}
			seen[a.Topic][a.Offset] = fmt.Sprintf("%d/%d", g, i)
		}
	}
	total := 0
	for _, topic := range topics {
		recs := readAll(t, db, topic)
		total += len(recs)
		if got := offsets(recs); !slices.Equal(got, span(1, uint64(len(recs)))) {
			t.Fatalf("%s: offsets not 1..n: %v", topic, got)
		}
		for _, r := range recs {
			if seen[topic][r.Offset] != string(r.Data) {
				t.Fatalf("%s/%d holds %q, acked to %q", topic, r.Offset, r.Data, seen[topic][r.Offset])
			}
		}
		mu.Lock()
		if !slices.Equal(hooked[topic], span(1, uint64(len(recs)))) {
			t.Fatalf("%s: hook saw %v", topic, hooked[topic])
		}
		mu.Unlock()
	}
	if total != goroutines*each {
		t.Fatalf("stored %d records, want %d", total, goroutines*each)
	}
}

func TestAppendValidation(t *testing.T) {
	db, _ := openTest(t, &Options{NoSync: true, RetentionInterval: -1, MaxRecordBytes: 100})
	cases := []struct {
		name, topic, data, key string
		want                   error
	}{
		{"data too large", "t", string(make([]byte, 101)), "", broker.ErrTooLarge},
		{"data at limit", "t", string(make([]byte, 100)), "", nil},
		{"key too large", "t", "{}", string(make([]byte, MaxKeyBytes+1)), broker.ErrTooLarge},
		{"empty topic", "", "{}", "", ErrInvalidTopic},
		{"long topic", string(make([]byte, MaxTopicBytes+1)), "{}", "", ErrInvalidTopic},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := db.Append(t.Context(), c.topic, []byte(c.data), c.key)
			if !errors.Is(err, c.want) && !(err == nil && c.want == nil) {
				t.Fatalf("Append = %v, want %v", err, c.want)
			}
			r := <-appendAsync(db, c.topic, c.data, c.key)
			if !errors.Is(r.err, c.want) && !(r.err == nil && c.want == nil) {
				t.Fatalf("AppendAsync = %v, want %v", r.err, c.want)
			}
		})
	}
	if info := mustTopic(t, db, "t"); info.Head != 2 {
		t.Fatalf("head %d, want 2 (only the valid appends stored)", info.Head)
	}
}

func TestAppendContext(t *testing.T) {
	db, _ := openTest(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := db.Append(ctx, "t", []byte("{}"), ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a canceled context = %v", err)
	}
	// A caller that gives up while the committer is busy returns at once;
	// the append may still be stored.
	release := pause(t, db)
	ctx, cancel = context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := db.Append(ctx, "t", []byte("{}"), "")
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Append canceled while waiting = %v", err)
	}
	release()
	mustAppend(t, db, "t", "{}", "")
}

// TestBatchFailure makes a transaction fail: every op in it gets the error,
// the hook sees nothing, and the next append takes the offset the failed one
// would have had; its idempotency key is not remembered.
func TestBatchFailure(t *testing.T) {
	db, _ := openTest(t, nil)
	mustAppend(t, db, "ok", "1", "")
	var mu sync.Mutex
	var hooked []uint64
	db.SetCommitHook(func(batch []broker.Committed) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range batch {
			hooked = append(hooked, offsets(c.Records)...)
		}
	})
	failing := errors.New("no randomness")
	newEpochString = func() (string, error) { return "", failing }
	t.Cleanup(func() { newEpochString = newEpoch })

	release := pause(t, db)
	r1 := appendAsync(db, "ok", "2", "k")
	r2 := appendAsync(db, "new", "1", "")
	release()
	for _, r := range []result{<-r1, <-r2} {
		if !errors.Is(r.err, failing) || r.a != (broker.Appended{}) {
			t.Fatalf("op of the failed batch got %+v, %v", r.a, r.err)
		}
	}
	newEpochString = newEpoch
	if a := mustAppend(t, db, "ok", "2", "k"); a.Offset != 2 || a.Dup {
		t.Fatalf("append after a failed batch = %+v, want offset 2", a)
	}
	if _, ok, _ := db.Topic("new"); ok {
		t.Fatal("topic of the failed batch exists")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(hooked, []uint64{2}) {
		t.Fatalf("hook saw %v, want [2]", hooked)
	}
}

func TestDedup(t *testing.T) {
	type step struct {
		topic, key, data string
		advance          int // seconds to advance the clock before the step
		sameBatch        bool
		wantOffset       uint64
		wantDup          bool
	}
	cases := []struct {
		name  string
		opts  Options
		steps []step
	}{
		{"separate batches", Options{}, []step{
			{"t", "k", "a", 0, false, 1, false},
			{"t", "k", "b", 0, false, 1, true},
			{"t", "", "c", 0, false, 2, false},
			{"t", "k", "d", 0, false, 1, true},
		}},
		{"same batch", Options{}, []step{
			{"t", "k", "a", 0, true, 1, false},
			{"t", "k", "b", 0, true, 1, true},
			{"t", "j", "c", 0, true, 2, false},
			{"t", "j", "d", 0, true, 2, true},
		}},
		{"topics apart", Options{}, []step{
			{"t", "k", "a", 0, false, 1, false},
			{"u", "k", "b", 0, false, 1, false},
			{"u", "k", "c", 0, false, 1, true},
		}},
		{"within window", Options{DedupWindow: time.Minute}, []step{
			{"t", "k", "a", 0, false, 1, false},
			{"t", "k", "b", 59, false, 1, true},
		}},
		{"expired after window", Options{DedupWindow: time.Minute}, []step{
			{"t", "k", "a", 0, false, 1, false},
			{"t", "k", "b", 60, false, 2, false},
			{"t", "k", "c", 1, false, 2, true},
		}},
		{"count bound evicts oldest", Options{DedupMaxKeys: 3}, []step{
			{"t", "a", "1", 0, false, 1, false},
			{"t", "b", "2", 0, false, 2, false},
			{"t", "c", "3", 0, false, 3, false},
			{"t", "d", "4", 0, false, 4, false}, // forgets a
			{"t", "a", "5", 0, false, 5, false}, // forgets b
			{"t", "c", "6", 0, false, 3, true},
			{"t", "b", "7", 0, false, 6, false},
		}},
		{"off", Options{DedupWindow: -1}, []step{
			{"t", "k", "a", 0, false, 1, false},
			{"t", "k", "b", 0, false, 2, false},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clk := newClock()
			opts := c.opts
			opts.NoSync, opts.RetentionInterval, opts.Now = true, -1, clk.Now
			db, _ := openTest(t, &opts)
			var release func()
			var pending []<-chan result
			var pendingSteps []step
			check := func(s step, r result) {
				t.Helper()
				if r.err != nil || r.a.Offset != s.wantOffset || r.a.Dup != s.wantDup {
					t.Fatalf("append %+v = %+v, %v", s, r.a, r.err)
				}
			}
			flush := func() {
				if release != nil {
					release()
					release = nil
				}
				for i, ch := range pending {
					check(pendingSteps[i], <-ch)
				}
				pending, pendingSteps = nil, nil
			}
			for _, s := range c.steps {
				clk.Advance(time.Duration(s.advance) * time.Second)
				if !s.sameBatch {
					flush()
					check(s, <-appendAsync(db, s.topic, s.data, s.key))
					continue
				}
				if release == nil {
					release = pause(t, db)
				}
				pending = append(pending, appendAsync(db, s.topic, s.data, s.key))
				pendingSteps = append(pendingSteps, s)
			}
			flush()
		})
	}
}

func TestDedupDupReportsFirst(t *testing.T) {
	clk := newClock()
	db, _ := openTest(t, &Options{NoSync: true, RetentionInterval: -1, Now: clk.Now})
	first := mustAppend(t, db, "t", "a", "k")
	clk.Advance(time.Second)
	dup := mustAppend(t, db, "t", "b", "k")
	if !dup.Dup || dup.Offset != first.Offset || dup.Time != first.Time || dup.Epoch != first.Epoch {
		t.Fatalf("dup = %+v, first = %+v", dup, first)
	}
	recs := readAll(t, db, "t")
	if len(recs) != 1 || string(recs[0].Data) != "a" || recs[0].Key != "k" {
		t.Fatalf("stored %+v", recs)
	}
}

func TestDedupExpiryInBackground(t *testing.T) {
	clk := newClock()
	db, _ := openTest(t, &Options{NoSync: true, RetentionInterval: -1, Now: clk.Now, DedupWindow: time.Minute})
	for i := range 2000 {
		mustAppend(t, db, "t", "x", fmt.Sprint("k", i))
	}
	if n := keyCount(t, db, "t"); n != 2000 {
		t.Fatalf("keys = %d", n)
	}
	if err := db.RunRetention(); err != nil {
		t.Fatal(err)
	}
	if n := keyCount(t, db, "t"); n != 2000 {
		t.Fatalf("keys after retention within the window = %d", n)
	}
	clk.Advance(time.Minute)
	if err := db.RunRetention(); err != nil {
		t.Fatal(err)
	}
	if n := keyCount(t, db, ""); n != 0 {
		t.Fatalf("keys after expiry = %d", n)
	}
	if a := mustAppend(t, db, "t", "y", "k1"); a.Dup || a.Offset != 2001 {
		t.Fatalf("append after expiry = %+v", a)
	}
}

func TestEpochs(t *testing.T) {
	db, dir := openTest(t, nil)
	a := mustAppend(t, db, "a", "1", "k")
	b := mustAppend(t, db, "b", "1", "")
	for _, e := range []string{a.Epoch, b.Epoch} {
		u, err := uuid.Parse(e)
		if err != nil || u.Version() != 4 {
			t.Fatalf("epoch %q is not a UUID v4 (%v)", e, err)
		}
	}
	if a.Epoch == b.Epoch {
		t.Fatal("two topics share an epoch")
	}
	db = reopen(t, db, dir, nil)
	if info := mustTopic(t, db, "a"); info.Epoch != a.Epoch || info.Head != 1 {
		t.Fatalf("after reopen: %+v, epoch was %s", info, a.Epoch)
	}
	if a2 := mustAppend(t, db, "a", "2", ""); a2.Epoch != a.Epoch || a2.Offset != 2 {
		t.Fatalf("append after reopen = %+v", a2)
	}

	db.CommitAsync("c", "a", a.Epoch, 2, nil)
	if err := db.SetRetention("a", Retention{MaxMessages: 5}); err != nil {
		t.Fatal(err)
	}
	epoch, err := db.ResetTopic("a")
	if err != nil || epoch == a.Epoch || epoch == "" {
		t.Fatalf("ResetTopic = %q, %v", epoch, err)
	}
	info := mustTopic(t, db, "a")
	if want := (broker.TopicInfo{Topic: "a", Epoch: epoch, Earliest: 1}); info != want {
		t.Fatalf("after reset: %+v, want %+v", info, want)
	}
	if recs := mustRead(t, db, "a", 1, 10, 100); len(recs) != 0 {
		t.Fatalf("records survived the reset: %+v", recs)
	}
	if a3 := mustAppend(t, db, "a", "3", "k"); a3.Offset != 1 || a3.Dup || a3.Epoch != epoch {
		t.Fatalf("append after reset = %+v (keys must be forgotten)", a3)
	}
	if m := topicMeta(t, db, "a"); m.ret.MaxMessages != 5 {
		t.Fatalf("reset lost the retention setting: %+v", m.ret)
	}
	if co, ok, _ := db.Consumer("c", "a"); !ok || co.Epoch != a.Epoch {
		t.Fatalf("consumer after reset = %+v, %v", co, ok)
	}
	db = reopen(t, db, dir, nil)
	if info := mustTopic(t, db, "a"); info.Epoch != epoch || info.Head != 1 {
		t.Fatalf("after reopen: %+v", info)
	}
	if _, err := db.ResetTopic("missing"); !errors.Is(err, broker.ErrTopicNotFound) {
		t.Fatalf("ResetTopic(missing) = %v", err)
	}
}

func TestEnsure(t *testing.T) {
	db, _ := openTest(t, nil)
	info, err := db.Ensure(t.Context(), "t")
	if err != nil || info.Epoch == "" || info.Head != 0 || info.Earliest != 1 || info.Topic != "t" {
		t.Fatalf("Ensure = %+v, %v", info, err)
	}
	again, err := db.Ensure(t.Context(), "t")
	if err != nil || again != info {
		t.Fatalf("second Ensure = %+v, %v", again, err)
	}
	if a := mustAppend(t, db, "t", "{}", ""); a.Epoch != info.Epoch || a.Offset != 1 {
		t.Fatalf("append after Ensure = %+v", a)
	}
	if recs := mustRead(t, db, "t", 0, 10, 100); len(recs) != 1 {
		t.Fatalf("read = %v", recs)
	}
}

func TestReadPaging(t *testing.T) {
	db, _ := openTest(t, nil)
	for i := 1; i <= 20; i++ {
		key := ""
		if i%3 == 0 {
			key = fmt.Sprint("key", i)
		}
		mustAppend(t, db, "t", fmt.Sprintf("%010d", i), key) // 10 bytes each
	}
	cases := []struct {
		name          string
		from          uint64
		max, maxBytes int
		want          []uint64
	}{
		{"from zero", 0, 5, 1000, span(1, 5)},
		{"from middle", 7, 3, 1000, span(7, 9)},
		{"by bytes", 1, 100, 35, span(1, 3)},
		{"bytes exactly", 1, 100, 40, span(1, 4)},
		{"at least one", 4, 100, 1, span(4, 4)},
		{"to the end", 18, 100, 1000, span(18, 20)},
		{"past head", 21, 100, 1000, []uint64{}},
		{"defaults", 1, 0, 0, span(1, 20)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			recs := mustRead(t, db, "t", c.from, c.max, c.maxBytes)
			if got := offsets(recs); !slices.Equal(got, c.want) {
				t.Fatalf("offsets %v, want %v", got, c.want)
			}
			for _, r := range recs {
				wantKey := ""
				if r.Offset%3 == 0 {
					wantKey = fmt.Sprint("key", r.Offset)
				}
				if string(r.Data) != fmt.Sprintf("%010d", r.Offset) || r.Key != wantKey {
					t.Fatalf("record %+v", r)
				}
			}
		})
	}
	t.Run("copies", func(t *testing.T) {
		recs := mustRead(t, db, "t", 1, 2, 1000)
		recs[0].Data = append(recs[0].Data, "more"...)
		copy(recs[1].Data, "XXXXXXXXXX")
		if again := mustRead(t, db, "t", 1, 2, 1000); string(again[0].Data) != "0000000001" || string(again[1].Data) != "0000000002" {
			t.Fatalf("read returned shared memory: %q %q", again[0].Data, again[1].Data)
		}
		if string(recs[1].Data) != "XXXXXXXXXX" {
			t.Fatal("append to one record's data overwrote the next")
		}
	})
	t.Run("below earliest", func(t *testing.T) {
		if err := db.SetRetention("t", Retention{MaxMessages: 15}); err != nil {
			t.Fatal(err)
		}
		if err := db.RunRetention(); err != nil {
			t.Fatal(err)
		}
		if got := offsets(mustRead(t, db, "t", 2, 3, 1000)); !slices.Equal(got, span(6, 8)) {
			t.Fatalf("offsets %v", got)
		}
	})
	t.Run("not found", func(t *testing.T) {
		if _, err := db.Read("nope", 1, 1, 1); !errors.Is(err, broker.ErrTopicNotFound) {
			t.Fatalf("Read(nope) = %v", err)
		}
	})
}

func TestTopics(t *testing.T) {
	db, _ := openTest(t, nil)
	names := []string{"b", "a.x", "a", "c.d.e", "a.y"}
	for _, n := range names {
		mustAppend(t, db, n, "{}", "")
	}
	mustAppend(t, db, "a", "{}", "")
	slices.Sort(names)
	var got []string
	for after := ""; ; {
		page, err := db.Topics(after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 2 {
			t.Fatalf("page of %d", len(page))
		}
		for _, info := range page {
			got = append(got, info.Topic)
			wantHead := uint64(1)
			if info.Topic == "a" {
				wantHead = 2
			}
			if info.Head != wantHead || info.Count != int64(wantHead) || info.Epoch == "" {
				t.Fatalf("info %+v", info)
			}
		}
		after = page[len(page)-1].Topic
	}
	if !slices.Equal(got, names) {
		t.Fatalf("topics %v, want %v", got, names)
	}
	if page, _ := db.Topics("a.x", 0); len(page) != 3 || page[0].Topic != "a.y" {
		t.Fatalf("Topics(a.x) = %+v", page)
	}
	if _, ok, err := db.Topic("zz"); ok || err != nil {
		t.Fatalf("Topic(zz) = %v, %v", ok, err)
	}
	if err := db.DeleteTopic("b"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := db.Topic("b"); ok {
		t.Fatal("deleted topic exists")
	}
	if err := db.DeleteTopic("b"); !errors.Is(err, broker.ErrTopicNotFound) {
		t.Fatalf("DeleteTopic twice = %v", err)
	}
	a := mustAppend(t, db, "b", "{}", "")
	if a.Offset != 1 {
		t.Fatalf("append to a re-created topic = %+v", a)
	}
}

func TestHook(t *testing.T) {
	db, _ := openTest(t, nil)
	var (
		mu      sync.Mutex
		hooked  = map[string][]uint64{}
		readErr error
	)
	db.SetCommitHook(func(batch []broker.Committed) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range batch {
			if !slices.IsSorted(offsets(c.Records)) {
				readErr = fmt.Errorf("unsorted run %v", offsets(c.Records))
			}
			// Readable when reported.
			recs, err := db.Read(c.Topic, c.Records[0].Offset, len(c.Records), 1<<30)
			if err != nil || len(recs) != len(c.Records) {
				readErr = fmt.Errorf("read in hook: %d records, %v", len(recs), err)
			}
			for i, r := range c.Records {
				if i < len(recs) && (!bytes.Equal(recs[i].Data, r.Data) || recs[i].Time != r.Time || recs[i].Key != r.Key) {
					readErr = fmt.Errorf("hook record %+v, stored %+v", r, recs[i])
				}
			}
			hooked[c.Topic] = append(hooked[c.Topic], offsets(c.Records)...)
		}
	})
	const n = 300
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		topic := []string{"p", "q"}[i%2]
		key := ""
		if i%10 == 0 {
			key = "same" // dups are not reported
		}
		db.AppendAsync(topic, []byte(fmt.Sprint(i)), key, func(a broker.Appended, err error) {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				readErr = err
				return
			}
			if !slices.Contains(hooked[topic], a.Offset) {
				readErr = fmt.Errorf("done for %s/%d before the hook saw it", topic, a.Offset)
			}
		})
	}
	// A replicated run and a commit share the hook.
	if err := db.AppendAt("r", "epoch-1", []broker.Record{{Offset: 1, Time: 5, Data: []byte("x")}, {Offset: 2, Time: 6, Data: []byte("y")}}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if readErr != nil {
		t.Fatal(readErr)
	}
	for topic, offs := range hooked {
		h := mustTopic(t, db, topic).Head
		if !slices.Equal(offs, span(1, h)) {
			t.Fatalf("hook saw %s %v, want 1..%d once each", topic, offs, h)
		}
	}
	if len(hooked) != 3 {
		t.Fatalf("hook saw topics %v", hooked)
	}
}
