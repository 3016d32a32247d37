package server_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// pubBatches publishes n messages to topic from c in frames of batch
// commands, data {"p":pub,"s":seq}, without waiting; it returns the ids.
func pubBatches(c *client, topic string, pub, n, batch int) []uint64 {
	var ids []uint64
	var lines []string
	for s := 1; s <= n; s++ {
		raw, id := c.encode(map[string]any{"op": "pub", "topic": topic, "data": map[string]int{"p": pub, "s": s}})
		ids = append(ids, id)
		lines = append(lines, raw)
		if len(lines) == batch || s == n {
			c.send(strings.Join(lines, "\n"))
			lines = lines[:0]
		}
	}
	return ids
}

// checkPublisherOrder checks that each publisher's messages appear in ms
// in the order it sent them, each exactly once.
func checkPublisherOrder(t *testing.T, who string, ms []event, pubs, per int) {
	t.Helper()
	next := make([]int, pubs)
	for _, m := range ms {
		var d struct{ P, S int }
		if err := json.Unmarshal(m.data(), &d); err != nil || d.P < 0 || d.P >= pubs {
			t.Fatalf("%s: msg %s: bad data", who, m)
		}
		next[d.P]++
		if d.S != next[d.P] {
			t.Fatalf("%s: publisher %d's message %d arrived as its %d-th", who, d.P, d.S, next[d.P])
		}
	}
	for p, n := range next {
		if n != per {
			t.Errorf("%s: %d messages of publisher %d, want %d", who, n, p, per)
		}
	}
}

func TestConcurrentPublishersAndSubscribers(t *testing.T) {
	const pubs, per, subs = 4, 500, 4
	ts := startServer(t)
	var subscribers []*client
	for i := range subs {
		s := dial(t, ts)
		s.name = fmt.Sprintf("sub%d", i)
		s.sub("conc", nil)
		subscribers = append(subscribers, s)
	}
	publishers := make([]*client, pubs)
	for i := range publishers {
		publishers[i] = dial(t, ts)
		publishers[i].name = fmt.Sprintf("pub%d", i)
	}
	ids := make([][]uint64, pubs)
	var wg sync.WaitGroup
	for i, p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i] = pubBatches(p, "conc", i, per, 25)
		}()
	}
	wg.Wait()
	// Every publisher gets its oks, in its order, with rising offsets.
	offsets := map[uint64]bool{}
	for i, p := range publishers {
		p.waitReplies(per)
		var prev uint64
		n := 0
		for _, e := range p.snapshot() {
			if e.Op == "err" {
				t.Fatalf("publisher %d: %s", i, e)
			}
			if e.Op != "ok" {
				continue
			}
			if e.id() != ids[i][n] || e.num("offset") <= prev {
				t.Fatalf("publisher %d: ok %d is %s, want id %d and an offset above %d", i, n, e, ids[i][n], prev)
			}
			prev = e.num("offset")
			offsets[prev] = true
			n++
		}
	}
	if len(offsets) != pubs*per {
		t.Fatalf("%d distinct offsets, want %d", len(offsets), pubs*per)
	}
	for _, s := range subscribers {
		ms := s.waitMsgs("conc", pubs*per)
		checkOffsets(t, s.name, ms, 1, pubs*per)
		checkPublisherOrder(t, s.name, ms, pubs, per)
	}
}

// A subscriber that starts from offset 1 while a publisher keeps
// publishing: its replay hands over to the live stream without a gap or a
// duplicate, wherever the hand-over falls. Subscribers from latest, at the
// same moments, start right after the head of their ok.
func TestReplayRacesLivePublishing(t *testing.T) {
	const total = 3000
	ts := startServer(t)
	p := dial(t, ts)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var lines []string
		for k := 1; k <= total; k++ {
			raw, _ := p.encode(map[string]any{"op": "pub", "topic": "race", "data": map[string]int{"p": 0, "s": k}})
			lines = append(lines, raw)
			if len(lines) == 10 {
				p.send(strings.Join(lines, "\n"))
				lines = lines[:0]
				time.Sleep(200 * time.Microsecond) // spread the publishing over the subscribes
			}
		}
	}()
	type subscriber struct {
		c  *client
		ok event
	}
	var subscribers []subscriber
	for _, at := range []uint64{total / 10, total / 3, total / 2, 2 * total / 3} {
		eventually(t, waitTimeout, fmt.Sprintf("head to pass %d", at), func() bool { return ts.head("race") >= at })
		s := dial(t, ts)
		s.name = fmt.Sprintf("from-1-at-%d", at)
		subscribers = append(subscribers, subscriber{s, s.sub("race", map[string]any{"from": 1})})
		l := dial(t, ts)
		l.name = fmt.Sprintf("latest-at-%d", at)
		subscribers = append(subscribers, subscriber{l, l.sub("race", nil)})
	}
	<-done
	p.waitReplies(total)
	if h := ts.head("race"); h != total {
		t.Fatalf("head %d, want %d", h, total)
	}
	for _, s := range subscribers {
		from := s.ok.num("from")
		if s.c.name[0] == 'f' && from != 1 || s.c.name[0] == 'l' && from != s.ok.num("head")+1 {
			t.Errorf("%s: ok %s: wrong from", s.c.name, s.ok)
		}
		ms := s.c.waitMsgs("race", int(total-from+1))
		checkOffsets(t, s.c.name, ms, from, total)
	}
}
