package server_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

func TestResumeAfterReconnect(t *testing.T) {
	for _, how := range []string{"close", "drop"} {
		t.Run(how, func(t *testing.T) {
			ts := startServer(t)
			p := dial(t, ts)
			s := dial(t, ts)
			ok := s.sub("feed", map[string]any{"from": "earliest"})
			epoch := ok.str("epoch")
			publishN(t, p, "feed", 1, 25)
			got := s.waitMsgs("feed", 25)
			checkOffsets(t, "first connection", got, 1, 25)
			last := got[len(got)-1].num("offset")
			if how == "close" {
				s.close()
			} else {
				s.kill()
			}
			// The broker forgets the subscription of the closed connection.
			eventually(t, waitTimeout, "the old subscription to end", func() bool { return ts.Broker.Subscribers("feed") == 0 })
			publishN(t, p, "feed", 26, 40)

			s2 := dial(t, ts)
			ok = s2.sub("feed", map[string]any{"from": last + 1, "epoch": epoch})
			if ok.num("from") != last+1 || ok.num("head") != 65 || ok.str("epoch") != epoch {
				t.Fatalf("resume ok %s: want from %d, head 65, epoch %s", ok, last+1, epoch)
			}
			// Publishing goes on while the replay runs.
			publishN(t, p, "feed", 66, 10)
			ms := s2.waitMsgs("feed", 50)
			checkOffsets(t, "resumed", ms, 26, 75)
			for _, m := range ms {
				if want := fmt.Sprintf(`{"i":%d}`, m.num("offset")); string(m.data()) != want {
					t.Fatalf("msg %d has data %s, want %s", m.num("offset"), m.data(), want)
				}
			}
		})
	}
}

func TestIdempotentPub(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	s := dial(t, ts)
	s.sub("pay", nil)

	pub := func(key, data string) event {
		return c.mustOK(map[string]any{"op": "pub", "topic": "pay", "key": key, "data": json.RawMessage(data)})
	}
	first := pub("k-1", `{"amount":10}`)
	if first.num("offset") != 1 || first.has("dup") {
		t.Fatalf("first pub: %s, want offset 1 without dup", first)
	}
	again := pub("k-1", `{"amount":10}`)
	if again.num("offset") != 1 || again.M["dup"] != true {
		t.Fatalf("second pub of the key: %s, want offset 1, dup true", again)
	}
	// Different data, same key: still the first record.
	third := pub("k-1", `{"amount":99}`)
	if third.num("offset") != 1 || third.M["dup"] != true {
		t.Fatalf("third pub of the key: %s, want offset 1, dup true", third)
	}
	if h := ts.head("pay"); h != 1 {
		t.Fatalf("head %d after three pubs of one key, want 1", h)
	}
	other := pub("k-2", `{"amount":20}`)
	if other.num("offset") != 2 || other.has("dup") {
		t.Fatalf("pub of another key: %s, want offset 2", other)
	}
	// A key is per topic.
	r := c.mustOK(map[string]any{"op": "pub", "topic": "pay.other", "key": "k-1", "data": 1})
	if r.num("offset") != 1 || r.has("dup") {
		t.Fatalf("same key, other topic: %s, want offset 1 without dup", r)
	}
	// Subscribers saw each record once.
	ms := s.waitMsgs("pay", 2)
	checkOffsets(t, "subscriber", ms, 1, 2)
	if string(ms[0].data()) != `{"amount":10}` {
		t.Errorf("stored data %s, want the first publish's", ms[0].data())
	}
	s.quiet(50*time.Millisecond, "duplicate msg", func(e event) bool { return e.Op == "msg" && e.num("offset") > 2 })

	// Concurrent publishes of one key from several connections: one record.
	var wg sync.WaitGroup
	conns := make([]*client, 4)
	for i := range conns {
		conns[i] = dial(t, ts)
	}
	ids := make([]uint64, len(conns))
	for i, cc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i] = cc.cmd(map[string]any{"op": "pub", "topic": "pay", "key": "race", "data": i})
		}()
	}
	wg.Wait()
	offsets := map[uint64]int{}
	dups := 0
	for i, cc := range conns {
		r := cc.reply(ids[i])
		if r.Op != "ok" {
			t.Fatalf("pub: %s", r)
		}
		offsets[r.num("offset")]++
		if r.M["dup"] == true {
			dups++
		}
	}
	if len(offsets) != 1 || dups != len(conns)-1 || ts.head("pay") != 3 {
		t.Fatalf("concurrent pubs of one key: offsets %v, %d dups, head %d; want one offset 3 and %d dups", offsets, dups, ts.head("pay"), len(conns)-1)
	}

	// Keys are visible ASCII, 1 to 255 bytes.
	c.mustErr(map[string]any{"op": "pub", "topic": "pay", "key": "", "data": 1}, subproto.CodeBadRequest)
	c.mustErr(map[string]any{"op": "pub", "topic": "pay", "key": "a b", "data": 1}, subproto.CodeBadRequest)
}
