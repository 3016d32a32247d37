package store

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRetentionOf: Options.RetentionOf sets retention per topic name; its
// zero fields inherit Options.Retention, a topic's own SetRetention wins
// over it, and a change of what it returns applies at the next pass.
func TestRetentionOf(t *testing.T) {
	clk := newClock()
	var short atomic.Int64 // max-messages of the "short." topics
	short.Store(3)
	opts := testOptions()
	opts.Now = clk.Now
	opts.Retention = Retention{MaxMessages: 7}
	opts.RetentionOf = func(topic string) Retention {
		switch {
		case strings.HasPrefix(topic, "short."):
			return Retention{MaxMessages: short.Load()}
		case strings.HasPrefix(topic, "young."):
			return Retention{MaxAge: 5 * time.Second}
		}
		return Retention{}
	}
	db, _ := openTest(t, opts)
	for _, topic := range []string{"short.a", "short.own", "young.a", "other"} {
		for range 10 {
			mustAppend(t, db, topic, "0123456789", "")
			clk.Advance(time.Second)
		}
	}
	if err := db.SetRetention("short.own", Retention{MaxMessages: 5}); err != nil {
		t.Fatal(err)
	}
	check := func(want map[string]uint64) {
		t.Helper()
		if err := db.RunRetention(); err != nil {
			t.Fatal(err)
		}
		for topic, earliest := range want {
			if info := mustTopic(t, db, topic); info.Earliest != earliest || info.Head != 10 {
				t.Fatalf("%s: %+v, want earliest %d head 10", topic, info, earliest)
			}
		}
	}
	// young.a's records are 11 s old or more when the pass runs: all go
	// by its max age. other inherits max-messages 7.
	check(map[string]uint64{"short.a": 8, "short.own": 6, "young.a": 11, "other": 4})
	// A new answer (a reloaded policy) applies at the next pass.
	short.Store(1)
	check(map[string]uint64{"short.a": 10, "short.own": 6, "other": 4})
}
