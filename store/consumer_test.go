package store

import (
	"errors"
	"testing"

	"github.com/brokerd/brokerd/broker"
)

func commit(t *testing.T, db *DB, consumer, topic, epoch string, offset uint64) broker.ConsumerOffset {
	t.Helper()
	ch := make(chan broker.ConsumerOffset, 1)
	db.CommitAsync(consumer, topic, epoch, offset, func(co broker.ConsumerOffset, err error) {
		if err != nil {
			t.Errorf("CommitAsync: %v", err)
		}
		ch <- co
	})
	return <-ch
}

func TestConsumerCommits(t *testing.T) {
	db, dir := openTest(t, nil)
	steps := []struct {
		epoch      string
		offset     uint64
		wantEpoch  string
		wantOffset uint64
	}{
		{"e1", 5, "e1", 5},
		{"e1", 7, "e1", 7},
		{"e1", 3, "e1", 7}, // lower: ignored
		{"e1", 7, "e1", 7},
		{"e2", 2, "e2", 2}, // new epoch replaces, even lower
		{"e2", 9, "e2", 9},
		{"e1", 100, "e1", 100}, // any other epoch replaces
	}
	for i, s := range steps {
		co := commit(t, db, "alice", "t", s.epoch, s.offset)
		if co.Epoch != s.wantEpoch || co.Offset != s.wantOffset || co.Consumer != "alice" || co.Topic != "t" || co.Updated.IsZero() {
			t.Fatalf("step %d: commit %s/%d = %+v", i, s.epoch, s.offset, co)
		}
		got, ok, err := db.Consumer("alice", "t")
		if err != nil || !ok || got.Epoch != s.wantEpoch || got.Offset != s.wantOffset {
			t.Fatalf("step %d: Consumer = %+v, %v, %v", i, got, ok, err)
		}
	}
	commit(t, db, "alice", "a.b", "x", 1)
	commit(t, db, "alice", "z", "x", 2)
	commit(t, db, "alicia", "t", "x", 3)
	commit(t, db, "alic", "t", "x", 4)

	check := func(db *DB) {
		t.Helper()
		list, err := db.Consumers("alice")
		if err != nil {
			t.Fatal(err)
		}
		var topics []string
		for _, co := range list {
			topics = append(topics, co.Topic)
			if co.Consumer != "alice" {
				t.Fatalf("Consumers(alice) returned %+v", co)
			}
		}
		if len(topics) != 3 || topics[0] != "a.b" || topics[1] != "t" || topics[2] != "z" || list[1].Offset != 100 {
			t.Fatalf("Consumers(alice) = %+v", list)
		}
		if _, ok, err := db.Consumer("bob", "t"); ok || err != nil {
			t.Fatalf("Consumer(bob) = %v, %v", ok, err)
		}
		if list, err := db.Consumers("bob"); len(list) != 0 || err != nil {
			t.Fatalf("Consumers(bob) = %v, %v", list, err)
		}
	}
	check(db)
	db = reopen(t, db, dir, nil)
	check(db)
	if co := commit(t, db, "alice", "t", "e1", 50); co.Offset != 100 {
		t.Fatalf("commit after reopen moved backwards: %+v", co)
	}
}

func TestConsumerValidation(t *testing.T) {
	db, _ := openTest(t, nil)
	ch := make(chan error, 1)
	db.CommitAsync("", "t", "e", 1, func(_ broker.ConsumerOffset, err error) { ch <- err })
	if err := <-ch; !errors.Is(err, ErrInvalidConsumer) {
		t.Fatalf("empty consumer: %v", err)
	}
	db.CommitAsync("c", "", "e", 1, func(_ broker.ConsumerOffset, err error) { ch <- err })
	if err := <-ch; !errors.Is(err, ErrInvalidTopic) {
		t.Fatalf("empty topic: %v", err)
	}
}
