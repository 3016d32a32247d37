package broker

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestEphemeralStoreOrder: concurrent appends to an ephemeral topic reach
// the commit hook once each, in offset order, before their done, and
// other topics go to the durable store.
func TestEphemeralStoreOrder(t *testing.T) {
	ps, err := NewPolicies(Policy{}, []Policy{{Match: "e.*", Ephemeral: true, Retention: Retention{MaxMessages: 50}}})
	if err != nil {
		t.Fatal(err)
	}
	durable := newMemStore()
	e := newEphemeralStore(durable, ps.For, time.Now)
	defer e.close()
	var mu sync.Mutex
	seen := map[string]uint64{}
	var bad atomic.Int64
	e.SetCommitHook(func(batch []Committed) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range batch {
			for _, r := range c.Records {
				if r.Offset != seen[c.Topic]+1 {
					bad.Add(1)
				}
				seen[c.Topic] = r.Offset
			}
		}
	})
	const writers, per = 8, 200
	var wg sync.WaitGroup
	var done atomic.Int64
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := "e.a"
			if w%4 == 3 {
				topic = "d.a"
			}
			var inner sync.WaitGroup
			for range per {
				inner.Add(1)
				e.AppendAsync(topic, []byte("1"), "", func(a Appended, err error) {
					defer inner.Done()
					mu.Lock()
					if err != nil || seen[topic] < a.Offset {
						bad.Add(1) // failed, or done before the hook saw it
					}
					mu.Unlock()
					done.Add(1)
				})
			}
			inner.Wait()
		}()
	}
	wg.Wait()
	if bad.Load() != 0 || done.Load() != writers*per {
		t.Fatalf("%d out of order or early, %d done of %d", bad.Load(), done.Load(), writers*per)
	}
	info, ok, _ := e.Topic("e.a")
	if !ok || info.Head != 6*per || info.Count != 50 || info.Earliest != 6*per-49 {
		t.Fatalf("e.a: %+v", info)
	}
	if _, ok, _ := durable.Topic("e.a"); ok {
		t.Fatal("the ephemeral topic reached the durable store")
	}
	if info, ok, _ := e.Topic("d.a"); !ok || info.Head != 2*per {
		t.Fatalf("d.a: %+v %v", info, ok)
	}
}

// agingStore returns an ephemeral store whose e.* topics keep records for
// a minute, on a clock the test moves.
func agingStore(t *testing.T) (e *ephemeralStore, now *atomic.Int64) {
	t.Helper()
	ps, err := NewPolicies(Policy{}, []Policy{{Match: "e.*", Ephemeral: true, Retention: Retention{MaxAge: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	now = new(atomic.Int64)
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	e = newEphemeralStore(newMemStore(), ps.For, func() time.Time { return time.Unix(0, now.Load()) })
	t.Cleanup(e.close)
	e.SetCommitHook(func([]Committed) {})
	return e, now
}

// TestEphemeralStoreAge: records past the policy's max age are dropped
// by the sweep; the head stays.
func TestEphemeralStoreAge(t *testing.T) {
	e, now := agingStore(t)
	for range 3 {
		if _, err := e.Append(t.Context(), "e.a", []byte("1"), ""); err != nil {
			t.Fatal(err)
		}
	}
	now.Add(int64(2 * time.Minute))
	deadline := time.Now().Add(15 * time.Second)
	for {
		info, _, _ := e.Topic("e.a")
		if info.Count == 0 && info.Head == 3 && info.Earliest == 4 && info.Bytes == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("records past their age still held: %+v", info)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if recs, err := e.Read("e.a", 1, 10, 0); err != nil || len(recs) != 0 {
		t.Fatalf("read after expiry: %v %v", recs, err)
	}
}

// TestEphemeralStoreMemory: ephemeral topics together never hold more than
// the memory bound, whatever a client publishes to how many of them; the
// largest topic gives back first, and offsets go on.
func TestEphemeralStoreMemory(t *testing.T) {
	ps, err := NewPolicies(Policy{}, []Policy{{Match: "e.*", Ephemeral: true, Retention: Retention{MaxMessages: 1 << 20, MaxBytes: 1 << 30}}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEphemeralStore(newMemStore(), ps.For, time.Now)
	defer e.close()
	e.SetCommitHook(func([]Committed) {})
	e.maxCost = 1 << 20
	small := []byte(`"s"`)
	if _, err := e.Append(t.Context(), "e.small", small, ""); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1024)
	for i := range data {
		data[i] = 'x'
	}
	data[0], data[len(data)-1] = '"', '"'
	var last Appended
	for i := range 4000 {
		topic := "e.big"
		if i%4 == 0 {
			topic = "e.other"
		}
		a, err := e.Append(t.Context(), topic, data, "")
		if err != nil {
			t.Fatal(err)
		}
		if topic == "e.big" {
			last = a
		}
		e.mu.Lock()
		c := e.cost
		e.mu.Unlock()
		if c > e.maxCost {
			t.Fatalf("after %d publishes the ephemeral topics hold %d bytes, over the bound of %d", i+1, c, e.maxCost)
		}
	}
	big, _, _ := e.Topic("e.big")
	if big.Head != last.Offset || big.Count == 0 || big.Earliest <= 1 {
		t.Fatalf("the big topic: %+v, last offset %d: offsets go on, its oldest records went", big, last.Offset)
	}
	if s, _, _ := e.Topic("e.small"); s.Count != 1 {
		t.Fatalf("the small topic lost its record (%+v) while bigger ones held more", s)
	}
	var sum int64
	e.mu.Lock()
	for _, l := range e.topics {
		sum += l.cost
	}
	c := e.cost
	e.mu.Unlock()
	if sum != c {
		t.Fatalf("the total %d is not the sum of the topics %d", c, sum)
	}
}

// TestEphemeralStoreReclaim: ephemeral topics holding no record are found
// idle once their last record (or creation) is old enough, deleted only if
// nothing was appended since, and a deletion frees a place under the cap;
// a topic created again gets a new epoch.
func TestEphemeralStoreReclaim(t *testing.T) {
	e, now := agingStore(t)
	clock := e.now
	e.maxTopics = 3
	r := e.reclaimer()
	names := func(list []TopicInfo) []string {
		var out []string
		for _, ti := range list {
			out = append(out, ti.Topic)
		}
		return out
	}
	ensure := func(topic string) (TopicInfo, error) { return e.Ensure(t.Context(), topic) }

	a, _ := ensure("e.a")
	if _, err := e.Append(t.Context(), "e.b", []byte("1"), ""); err != nil {
		t.Fatal(err)
	}
	c, _ := ensure("e.c")
	if _, err := ensure("e.d"); !errors.Is(err, ErrTooManyTopics) {
		t.Fatalf("a fourth topic over a cap of 3: %v", err)
	}
	if idle, _, _ := r.IdleTopics("", 10, clock().Add(-time.Second)); len(idle) != 0 {
		t.Fatalf("topics idle before they were created: %v", names(idle))
	}
	idle, last, _ := r.IdleTopics("", 10, clock())
	if got := names(idle); !slices.Equal(got, []string{"e.a", "e.c"}) || last != "" {
		t.Fatalf("idle: %v, last %q; want e.a and e.c (e.b holds a record)", got, last)
	}
	var paged []string
	for after := ""; ; {
		idle, last, _ := r.IdleTopics(after, 1, clock())
		paged = append(paged, names(idle)...)
		if last == "" {
			break
		}
		after = last
	}
	if !slices.Equal(paged, []string{"e.a", "e.c"}) {
		t.Fatalf("idle one at a time: %v", paged)
	}

	// A record appended after the idle list was made keeps e.a; a stale
	// epoch deletes nothing.
	if _, err := e.Append(t.Context(), "e.a", []byte("2"), ""); err != nil {
		t.Fatal(err)
	}
	stale := c
	stale.Epoch = "another"
	if del, _ := r.DeleteIdle([]TopicInfo{a, stale}, clock()); len(del) != 0 {
		t.Fatalf("deleted %v: e.a has a record, e.c another epoch", del)
	}
	if del, _ := r.DeleteIdle([]TopicInfo{c}, clock()); !slices.Equal(del, []string{"e.c"}) {
		t.Fatalf("deleted %v, want e.c", del)
	}
	if _, err := ensure("e.d"); err != nil {
		t.Fatalf("a topic in the place freed: %v", err)
	}

	// Records past their age go; the topics are idle from their last
	// record on, and deleted ones come back in a new epoch.
	now.Add(int64(2 * time.Minute))
	deadline := time.Now().Add(15 * time.Second)
	for {
		ia, _, _ := e.Topic("e.a")
		ib, _, _ := e.Topic("e.b")
		if ia.Count == 0 && ib.Count == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("records past their age still held: %+v %+v", ia, ib)
		}
		time.Sleep(10 * time.Millisecond)
	}
	idle, _, _ = r.IdleTopics("", 10, clock().Add(-time.Minute))
	if got := names(idle); !slices.Equal(got, []string{"e.a", "e.b", "e.d"}) {
		t.Fatalf("idle after expiry: %v", got)
	}
	if del, _ := r.DeleteIdle(idle, clock().Add(-time.Minute)); len(del) != 3 {
		t.Fatalf("deleted %v", del)
	}
	if n := len(e.topics); n != 0 || e.cost != 0 {
		t.Fatalf("%d topics and %d bytes left", n, e.cost)
	}
	again, err := ensure("e.a")
	if err != nil || again.Epoch == a.Epoch || again.Head != 0 {
		t.Fatalf("e.a created again: %+v %v (old epoch %s)", again, err, a.Epoch)
	}
}
