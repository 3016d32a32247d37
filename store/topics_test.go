package store

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// TestMaxTopics: appends and Ensure create at most MaxTopics topics, also
// when many new ones arrive in one batch; existing topics take appends; a
// deleted topic frees its place; the count survives a reopen.
func TestMaxTopics(t *testing.T) {
	opts := testOptions()
	opts.MaxTopics = 5
	db, dir := openTest(t, opts)
	mustAppend(t, db, "a", "1", "")
	if _, err := db.Ensure(t.Context(), "b"); err != nil {
		t.Fatal(err)
	}

	// 20 new topics queued at once: 3 fit.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := range 20 {
		wg.Add(1)
		db.AppendAsync(fmt.Sprintf("n%02d", i), []byte("1"), "", func(_ broker.Appended, err error) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, broker.ErrTooManyTopics):
				refused++
			default:
				t.Errorf("append: %v", err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	if ok != 3 || refused != 17 || db.TopicCount() != 5 {
		t.Fatalf("%d stored, %d refused, %d topics; want 3, 17, 5", ok, refused, db.TopicCount())
	}
	if _, err := db.Append(t.Context(), "z", []byte("1"), ""); !errors.Is(err, broker.ErrTooManyTopics) {
		t.Fatalf("append to a new topic beyond the limit: %v", err)
	}
	if _, err := db.Ensure(t.Context(), "z"); !errors.Is(err, broker.ErrTooManyTopics) {
		t.Fatalf("Ensure beyond the limit: %v", err)
	}
	if _, ok, _ := db.Topic("z"); ok {
		t.Fatal("a refused topic was created")
	}
	mustAppend(t, db, "a", "2", "") // existing topics are not refused
	if err := db.DeleteTopic("b"); err != nil {
		t.Fatal(err)
	}
	if db.TopicCount() != 4 {
		t.Fatalf("after a delete: %d topics", db.TopicCount())
	}
	mustAppend(t, db, "z", "1", "")
	db = reopen(t, db, dir, opts)
	if db.TopicCount() != 5 {
		t.Fatalf("after reopen: %d topics", db.TopicCount())
	}
	if _, err := db.Append(t.Context(), "y", []byte("1"), ""); !errors.Is(err, broker.ErrTooManyTopics) {
		t.Fatalf("after reopen, beyond the limit: %v", err)
	}
}

// TestDeleteIdle: a topic that holds nothing is listed and deleted once it
// has been idle since its creation or its last record; one with records, a
// newer epoch, or a recent write is kept.
func TestDeleteIdle(t *testing.T) {
	clk := newClock()
	opts := testOptions()
	opts.Now = clk.Now
	opts.Retention = Retention{MaxAge: time.Hour}
	db, _ := openTest(t, opts)
	idle := func(before time.Time) []string {
		t.Helper()
		var names []string
		after := ""
		for {
			page, last, err := db.IdleTopics(after, 2, before)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range page {
				names = append(names, i.Topic)
			}
			if last == "" {
				return names
			}
			after = last
		}
	}
	empty, err := db.Ensure(t.Context(), "empty")
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, db, "full", "1", "k")
	trimmed := mustAppend(t, db, "trimmed", "1", "k")
	for i := range 5 {
		mustAppend(t, db, fmt.Sprint("other", i), "1", "")
	}
	if got := idle(clk.Now().Add(-time.Second)); len(got) != 0 {
		t.Fatalf("idle before anything was idle: %v", got)
	}
	if got := deleteIdle(t, db, clk.Now().Add(-time.Second), "empty", empty.Epoch); len(got) != 0 {
		t.Fatalf("DeleteIdle of a topic created after the cut = %v", got)
	}

	clk.Advance(2 * time.Hour) // retention empties every topic with records
	if err := db.RunRetention(); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, db, "full", "2", "")
	if got := idle(clk.Now().Add(-time.Minute)); fmt.Sprint(got) != "[empty other0 other1 other2 other3 other4 trimmed]" {
		t.Fatalf("idle = %v", got)
	}
	n := db.TopicCount()
	got := deleteIdle(t, db, clk.Now().Add(-time.Minute),
		"empty", "another epoch", // kept: another epoch
		"full", mustTopic(t, db, "full").Epoch, // kept: a record
		"empty", empty.Epoch, "trimmed", trimmed.Epoch, "never", "x")
	if fmt.Sprint(got) != "[empty trimmed]" {
		t.Fatalf("DeleteIdle deleted %v, want [empty trimmed]", got)
	}
	for _, topic := range got {
		if _, ok, _ := db.Topic(topic); ok {
			t.Fatalf("%s still has a log", topic)
		}
	}
	if got := deleteIdle(t, db, clk.Now(), "empty", empty.Epoch); len(got) != 0 {
		t.Fatalf("DeleteIdle of a deleted topic = %v", got)
	}
	if got := db.TopicCount(); got != n-2 {
		t.Fatalf("TopicCount = %d, want %d", got, n-2)
	}
	// The key of the deleted topic went with it: a new log starts at 1.
	if a := mustAppend(t, db, "trimmed", "again", "k"); a.Dup || a.Offset != 1 || a.Epoch == trimmed.Epoch {
		t.Fatalf("append to a deleted topic = %+v", a)
	}
}

// deleteIdle calls DeleteIdle with (topic, epoch) pairs.
func deleteIdle(t *testing.T, db *DB, before time.Time, pairs ...string) []string {
	t.Helper()
	var infos []broker.TopicInfo
	for i := 0; i < len(pairs); i += 2 {
		infos = append(infos, broker.TopicInfo{Topic: pairs[i], Epoch: pairs[i+1]})
	}
	got, err := db.DeleteIdle(infos, before)
	if err != nil {
		t.Fatal(err)
	}
	return got
}
