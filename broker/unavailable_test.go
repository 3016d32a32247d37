package broker

import (
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
)

// flakyStore answers its first reads unavailable, as a cluster does while
// a partition changes hands.
type flakyStore struct {
	*memStore
	fails atomic.Int64 // reads still to answer unavailable
}

func (f *flakyStore) Read(topic string, from uint64, max, maxBytes int) ([]Record, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, fmt.Errorf("owner out of reach: %w", ErrUnavailable)
	}
	return f.memStore.Read(topic, from, max, maxBytes)
}

// A subscription fed from the log is not ended when the store answers
// unavailable for a while: it reads again and delivers everything, for a
// topic and for a pattern.
func TestReplayWaitsOutUnavailable(t *testing.T) {
	for _, tc := range []struct{ name, sub string }{
		{"topic", `{"op":"sub","id":1,"topic":"u.a","from":1}`},
		{"pattern", `{"op":"sub","id":1,"topic":"u.>","since":0}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &flakyStore{memStore: newMemStore()}
			srv, err := New(Config{Node: "test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, st)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = srv.Shutdown(t.Context()) })
			publishN(t, srv, "u.a", 10)
			st.fails.Store(3)
			s, c := connect(t, srv)
			s.HandleFrame([]byte(tc.sub))
			evs := c.wait(t, "the replay", func(evs []map[string]any) bool { return len(msgs(evs, "u.a")) == 10 })
			checkSeq(t, msgs(evs, "u.a"), 1, 10)
			for _, ev := range evs {
				if ev["op"] == "unsubbed" {
					t.Fatalf("subscription ended: %v", ev)
				}
			}
			if st.fails.Load() >= 0 {
				t.Fatalf("the store was asked %d times fewer than it failed", st.fails.Load()+1)
			}
		})
	}
}
