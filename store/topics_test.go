package store

import (
	"errors"
	"fmt"
	"strings"
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
	ok, refused := appendNewTopics(t, db, "n", 20)
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

// appendNewTopics queues one append to each of n new topics named prefix
// and a number, all at once, and counts those stored and those refused
// with ErrTooManyTopics.
func appendNewTopics(t *testing.T, db *DB, prefix string, n int) (ok, refused int) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range n {
		wg.Add(1)
		db.AppendAsync(fmt.Sprintf("%s%02d", prefix, i), []byte("1"), "", func(_ broker.Appended, err error) {
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
	return ok, refused
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

// TestTopicClasses: a class's bound refuses new topics of the class only,
// concurrent creations included; a deletion frees a place; new classes
// recount the topics the store holds; AppendAt is not bounded; nil removes
// the bounds.
func TestTopicClasses(t *testing.T) {
	db, dir := openTest(t, testOptions())
	mustAppend(t, db, "room.old", "1", "") // held before the classes are set
	classes := func(max int) broker.TopicClass {
		return func(topic string) (string, int) {
			if strings.HasPrefix(topic, "room.") {
				return "rooms", max
			}
			return "", 0
		}
	}
	if err := db.SetTopicClasses(classes(4)); err != nil {
		t.Fatal(err)
	}
	ok, refused := appendNewTopics(t, db, "room.", 20)
	if ok != 3 || refused != 17 {
		t.Fatalf("%d stored, %d refused; want 3 (4 with room.old), 17", ok, refused)
	}
	if _, err := db.Ensure(t.Context(), "room.z"); !errors.Is(err, broker.ErrTooManyTopics) || !strings.Contains(err.Error(), "rooms") {
		t.Fatalf("Ensure beyond the class's bound: %v", err)
	}
	for i := range 10 { // other names are not bounded
		mustAppend(t, db, fmt.Sprintf("other.%d", i), "1", "")
	}
	mustAppend(t, db, "room.old", "2", "") // existing topics are not refused
	if err := db.AppendAt("room.copy", "epoch-1", []broker.Record{{Offset: 1, Time: 1, Data: []byte("1")}}); err != nil {
		t.Fatalf("a follower's copy is not bounded: %v", err)
	}

	// A deletion frees a place; a larger bound recounts what is held.
	if err := db.DeleteTopic("room.old"); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, db, "room.new", "1", "")
	if _, err := db.Append(t.Context(), "room.z", []byte("1"), ""); !errors.Is(err, broker.ErrTooManyTopics) {
		t.Fatalf("after a delete and a create: %v", err)
	}
	if err := db.SetTopicClasses(classes(7)); err != nil { // holds 5 with room.copy
		t.Fatal(err)
	}
	mustAppend(t, db, "room.y", "1", "")
	mustAppend(t, db, "room.z", "1", "")
	if _, err := db.Append(t.Context(), "room.x", []byte("1"), ""); !errors.Is(err, broker.ErrTooManyTopics) {
		t.Fatalf("beyond the raised bound: %v", err)
	}
	if err := db.SetTopicClasses(nil); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, db, "room.x", "1", "")

	// The classes are the caller's: a reopened store has none until set,
	// and setting them counts the topics on disk.
	db = reopen(t, db, dir, testOptions())
	mustAppend(t, db, "room.w", "1", "")
	if err := db.SetTopicClasses(classes(9)); err != nil { // holds 9
		t.Fatal(err)
	}
	if _, err := db.Ensure(t.Context(), "room.v"); !errors.Is(err, broker.ErrTooManyTopics) {
		t.Fatalf("after reopen, beyond the bound: %v", err)
	}
}
