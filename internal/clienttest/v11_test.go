package clienttest_test

import (
	"errors"
	"testing"
	"time"

	client "github.com/brokerd/brokerd/clients/go"
)

// Protocol v1.1 in the Go client: features, last, since, pattern
// subscriptions that resume, ack with epoch.

func TestFeaturesLastSince(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	infos := make(chan client.ConnInfo, 4)
	c := dial(t, tb, client.WithOnConnect(func(ci client.ConnInfo) { infos <- ci }))
	ci := <-infos
	for _, f := range []string{"last", "since", "pattern_replay", "ack_epoch", "presence"} {
		if !ci.HasFeature(f) {
			t.Errorf("ConnInfo %+v lacks %s", ci, f)
		}
	}
	for i := uint64(1); i <= 10; i++ {
		if _, err := c.Publish(ctx, "room", data(i)); err != nil {
			t.Fatal(err)
		}
	}
	var last collector
	s, err := c.Subscribe(ctx, "room", last.handle, client.SubOptions{Last: 3})
	if err != nil {
		t.Fatal(err)
	}
	if info := s.Info(); info.From != 8 || info.Head != 10 {
		t.Fatalf("last 3: %+v, want from 8", info)
	}
	checkSeq(t, last.wait(t, 3), 8, 10)
	_ = s.Unsubscribe(ctx)

	var since collector
	if _, err := c.Subscribe(ctx, "room", since.handle, client.SubOptions{Since: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	checkSeq(t, since.wait(t, 10), 1, 10)
	if _, err := c.Subscribe(ctx, "other", since.handle, client.SubOptions{Last: 1, From: client.Earliest}); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("Last with From: %v", err)
	}
	if _, err := c.Subscribe(ctx, "other.*", since.handle, client.SubOptions{Last: 1}); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("pattern with Last: %v", err)
	}
}

// A pattern subscription replays with Since, follows live, resumes after
// the broker restarts with no gap and no duplicate per topic, including
// topics first written while it was away; its Positions resume it in
// another client.
func TestPatternResume(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	p := dial(t, tb)
	pub := func(topic string, from, to uint64) {
		t.Helper()
		for i := from; i <= to; i++ {
			if _, err := p.Publish(ctx, topic, data(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	pub("feed.a", 1, 5)
	pub("feed.b", 1, 3)
	c := dial(t, tb)
	var col collector
	s, err := c.Subscribe(ctx, "feed.*", col.handle, client.SubOptions{Since: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	col.wait(t, 8)
	tb.restart()
	pub("feed.a", 6, 8)
	pub("feed.c", 1, 2) // first written while the subscriber may be away
	msgs := col.wait(t, 13)
	byTopic := map[string][]client.Message{}
	for _, m := range msgs {
		if m.Pattern != "feed.*" {
			t.Fatalf("message %+v", m)
		}
		byTopic[m.Topic] = append(byTopic[m.Topic], m)
	}
	checkSeq(t, byTopic["feed.a"], 1, 8)
	checkSeq(t, byTopic["feed.b"], 1, 3)
	checkSeq(t, byTopic["feed.c"], 1, 2)
	pos := s.Positions()
	if pos["feed.a"].Next != 9 || pos["feed.a"].Epoch != tb.topic("feed.a").Epoch || pos["feed.c"].Next != 3 {
		t.Fatalf("positions %+v", pos)
	}

	// Another client resumes from the positions.
	pub("feed.b", 4, 5)
	c2 := dial(t, tb)
	var col2 collector
	if _, err := c2.Subscribe(ctx, "feed.*", col2.handle, client.SubOptions{Positions: pos}); err != nil {
		t.Fatal(err)
	}
	checkSeq(t, col2.wait(t, 2), 4, 5)
	time.Sleep(50 * time.Millisecond) // nothing else may come
	if n := col2.len(); n != 2 {
		t.Fatalf("resumed client got %d messages, want 2", n)
	}
}

func TestAckWithEpoch(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	c := dial(t, tb)
	for i := uint64(1); i <= 5; i++ {
		if _, err := c.Publish(ctx, "jobs", data(i)); err != nil {
			t.Fatal(err)
		}
	}
	var col collector
	s, err := c.Subscribe(ctx, "jobs", col.handle, client.SubOptions{Consumer: "w", From: client.Earliest})
	if err != nil {
		t.Fatal(err)
	}
	col.wait(t, 5)
	if err := s.Ack(ctx, 3); err != nil {
		t.Fatal(err)
	}
	tb.mu.Lock()
	st := tb.st
	tb.mu.Unlock()
	co, ok, err := st.Consumer("w", "jobs")
	if err != nil || !ok || co.Offset != 3 || co.Epoch != s.Info().Epoch {
		t.Fatalf("stored %+v %v %v", co, ok, err)
	}
}
