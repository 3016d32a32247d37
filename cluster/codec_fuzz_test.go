package cluster

import (
	"reflect"
	"testing"

	"github.com/brokerd/brokerd/broker"
)

// FuzzDecodeRepl feeds a follower's decoder of replication requests
// arbitrary bytes: it must never panic, and what it accepts must encode
// back to a request that decodes the same.
func FuzzDecodeRepl(f *testing.F) {
	recs := []broker.Record{{Offset: 7, Time: 1763900001000, Key: "k1", Data: []byte(`{"a":1}`)}, {Offset: 8, Time: 1763900001001, Data: []byte(`"b"`)}}
	for _, es := range [][]replEntry{
		nil,
		{{topic: "orders.eu", term: 42, epoch: "9b2e41c7-0d7f-4f3a-8c55-61e0a3b9d214", recs: recs}},
		{{term: 3, kind: kindProbe, head: 5}},
		{{topic: "t", term: 9, epoch: "e", kind: kindAgree, head: 100}, {topic: "u", term: 9, epoch: "e", kind: kindCheck, recs: recs[:1]}},
		{{topic: "t", term: 9, epoch: "e", kind: kindConsumer, head: 12, consumer: "billing"}},
		{{topic: "t", term: 9, epoch: "e", kind: kindCreate}, {topic: "t", term: 9, epoch: "e", base: true, recs: recs}},
	} {
		f.Add(encodeRepl("n1", es))
	}
	f.Add([]byte{})
	f.Add([]byte{0x02, 'n', '1', 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := decodeRepl(b)
		if err != nil {
			return
		}
		again, err := decodeRepl(encodeRepl("n1", es))
		if err != nil {
			t.Fatalf("decoding what was encoded again: %v", err)
		}
		if len(es) == 0 && len(again) == 0 {
			return
		}
		for i := range es {
			if len(es[i].recs) == 0 {
				es[i].recs = nil
			}
			if len(again[i].recs) == 0 {
				again[i].recs = nil
			}
		}
		if !reflect.DeepEqual(es, again) {
			t.Fatalf("round trip changed the request:\n%+v\n%+v", es, again)
		}
	})
}

// TestReplKindWire keeps each kind's byte on the wire what it has been,
// so that nodes of the previous release and of this one understand each
// other during a rolling upgrade.
func TestReplKindWire(t *testing.T) {
	for _, tc := range []struct {
		e    replEntry
		wire byte
	}{
		{replEntry{kind: kindRecords}, 0},
		{replEntry{kind: kindRecords, base: true}, 1},
		{replEntry{kind: kindProbe}, 2},
		{replEntry{kind: kindAgree}, 6},
		{replEntry{kind: kindCheck}, 8},
		{replEntry{kind: kindConsumer}, 16},
		{replEntry{kind: kindCreate}, 32},
	} {
		if got := tc.e.flags(); got != tc.wire {
			t.Errorf("kind %d (base %v) is %d on the wire, want %d", tc.e.kind, tc.e.base, got, tc.wire)
		}
		if k, base := kindOf(tc.wire); k != tc.e.kind || base != tc.e.base {
			t.Errorf("%d reads as kind %d base %v, want %d %v", tc.wire, k, base, tc.e.kind, tc.e.base)
		}
	}
}
