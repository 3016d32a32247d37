package cluster

import (
	"reflect"
	"testing"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/subproto"
)

// FuzzDecodePresence feeds the decoder of presence messages arbitrary
// bytes: it must never panic, and what it accepts must encode back to
// what decodes the same.
func FuzzDecodePresence(f *testing.F) {
	m := func(s, user, info string) subproto.Member {
		mb := subproto.Member{Session: s, User: user, Node: "n1"}
		if info != "" {
			mb.Info = []byte(info)
		}
		return mb
	}
	for _, pm := range []presenceMsg{
		{Kind: presDelta, Node: "n1", Inc: 77, Seq: 3, Changes: []broker.PresenceChange{
			{Topic: "room.1", Member: m("6a657db4-b1b8-40d6-b03d-e0182cd63a63", "alice", `{"name":"Alice"}`)},
			{Topic: "room.2", Leave: true, Member: m("s2", "", "")},
		}},
		{Kind: presSnap, Node: "n1", Inc: 77, Seq: 4, Flags: snapStart | snapEnd},
		{Kind: presBeat, Node: "n1", Inc: 1 << 63, Seq: 1 << 40},
		{Kind: presSync, Node: "n1", Target: "n2"},
		{Kind: presBye, Node: "n1", Inc: 5},
	} {
		f.Add(encodePresence(&pm))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodePresence(b)
		if err != nil {
			return
		}
		again, err := decodePresence(encodePresence(got))
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", got, err)
		}
		if !reflect.DeepEqual(got, again) {
			t.Fatalf("round trip: %+v became %+v", got, again)
		}
	})
}
