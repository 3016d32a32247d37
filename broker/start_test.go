package broker

import (
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// TestDecideStart is the table of where a subscription starts, over an
// in-memory store: startFacts reads what decideStart decides from.
func TestDecideStart(t *testing.T) {
	// Ten records at times 100, 100, 200, 200, ..., 500, 500.
	times := make([]int64, 10)
	for i := range times {
		times[i] = int64(100 * (i/2 + 1))
	}
	type topic struct {
		times   []int64
		trimmed int
	}
	full := topic{times, 0}
	trimmed := topic{times, 4} // earliest 5, of time 300
	empty := topic{nil, 0}
	allGone := topic{times, 10} // earliest 11, nothing retained
	const cur, old = "current", "old"
	type acked struct {
		epoch  string
		offset uint64
	}
	tests := []struct {
		name   string
		topic  topic
		req    StartRequest
		acked  *acked
		want   uint64
		missed *[2]uint64
		ackedW uint64 // the consumer's window base, checked when req.Consumer
		code   subproto.Code
	}{
		{name: "default is latest", topic: full, want: 11},
		{name: "latest", topic: full, req: StartRequest{From: subproto.From{Kind: subproto.FromLatest}}, want: 11},
		{name: "earliest", topic: full, req: StartRequest{From: subproto.From{Kind: subproto.FromEarliest}}, want: 1},
		{name: "earliest trimmed", topic: trimmed, req: StartRequest{From: subproto.From{Kind: subproto.FromEarliest}}, want: 5},
		{name: "offset", topic: full, req: StartRequest{From: subproto.From{Kind: subproto.FromOffset, Offset: 7}}, want: 7},
		{name: "offset head+1", topic: full, req: StartRequest{From: subproto.From{Kind: subproto.FromOffset, Offset: 11}}, want: 11},
		{name: "offset beyond head", topic: full, req: StartRequest{From: subproto.From{Kind: subproto.FromOffset, Offset: 12}}, code: subproto.CodeOffsetOutOfRange},
		{name: "offset trimmed", topic: trimmed, req: StartRequest{From: subproto.From{Kind: subproto.FromOffset, Offset: 2}}, code: subproto.CodeOffsetOutOfRange},
		{name: "offset trimmed if_gone", topic: trimmed, req: StartRequest{From: subproto.From{Kind: subproto.FromOffset, Offset: 2}, IfGone: true}, want: 5, missed: &[2]uint64{2, 4}},
		{name: "epoch current", topic: full, req: StartRequest{Epoch: cur, From: subproto.From{Kind: subproto.FromOffset, Offset: 3}}, want: 3},
		{name: "epoch old", topic: full, req: StartRequest{Epoch: old}, code: subproto.CodeEpochMismatch},
		{name: "epoch old with if_gone", topic: full, req: StartRequest{Epoch: old, IfGone: true}, code: subproto.CodeEpochMismatch},

		{name: "last 1", topic: full, req: StartRequest{Last: 1}, want: 10},
		{name: "last 3", topic: full, req: StartRequest{Last: 3}, want: 8},
		{name: "last all", topic: full, req: StartRequest{Last: 10}, want: 1},
		{name: "last more than stored", topic: full, req: StartRequest{Last: 10000}, want: 1},
		{name: "last more than retained", topic: trimmed, req: StartRequest{Last: 8}, want: 5},
		{name: "last within retained", topic: trimmed, req: StartRequest{Last: 2}, want: 9},
		{name: "last empty", topic: empty, req: StartRequest{Last: 5}, want: 1},
		{name: "last nothing retained", topic: allGone, req: StartRequest{Last: 5}, want: 11},
		{name: "last epoch old", topic: full, req: StartRequest{Last: 5, Epoch: old}, code: subproto.CodeEpochMismatch},

		{name: "since before all", topic: full, req: StartRequest{Since: 0, HasSince: true}, want: 1},
		{name: "since exact", topic: full, req: StartRequest{Since: 200, HasSince: true}, want: 3},
		{name: "since between", topic: full, req: StartRequest{Since: 201, HasSince: true}, want: 5},
		{name: "since last time", topic: full, req: StartRequest{Since: 500, HasSince: true}, want: 9},
		{name: "since after all", topic: full, req: StartRequest{Since: 501, HasSince: true}, want: 11},
		{name: "since empty", topic: empty, req: StartRequest{Since: 5, HasSince: true}, want: 1},
		{name: "since trimmed, older than earliest", topic: trimmed, req: StartRequest{Since: 299, HasSince: true}, code: subproto.CodeOffsetOutOfRange},
		{name: "since trimmed, older, if_gone", topic: trimmed, req: StartRequest{Since: 299, HasSince: true, IfGone: true}, want: 5, missed: &[2]uint64{1, 4}},
		{name: "since trimmed, at earliest time", topic: trimmed, req: StartRequest{Since: 300, HasSince: true}, want: 5},
		{name: "since trimmed, after earliest", topic: trimmed, req: StartRequest{Since: 401, HasSince: true}, want: 9},
		{name: "since nothing retained", topic: allGone, req: StartRequest{Since: 0, HasSince: true}, want: 11},
		{name: "since epoch old", topic: full, req: StartRequest{Since: 0, HasSince: true, Epoch: old}, code: subproto.CodeEpochMismatch},

		{name: "consumer new, default", topic: full, req: StartRequest{Consumer: true}, want: 11, ackedW: 10},
		{name: "consumer new, earliest", topic: full, req: StartRequest{Consumer: true, From: subproto.From{Kind: subproto.FromEarliest}}, want: 1, ackedW: 0},
		{name: "consumer new, last", topic: full, req: StartRequest{Consumer: true, Last: 2}, want: 9, ackedW: 8},
		{name: "consumer new, since", topic: full, req: StartRequest{Consumer: true, Since: 300, HasSince: true}, want: 5, ackedW: 4},
		{name: "consumer resumes", topic: full, acked: &acked{cur, 6}, req: StartRequest{Consumer: true, From: subproto.From{Kind: subproto.FromEarliest}}, want: 7, ackedW: 6},
		{name: "consumer resumes over last", topic: full, acked: &acked{cur, 6}, req: StartRequest{Consumer: true, Last: 1}, want: 7, ackedW: 6},
		{name: "consumer resumes over since", topic: full, acked: &acked{cur, 2}, req: StartRequest{Consumer: true, Since: 500, HasSince: true}, want: 3, ackedW: 2},
		{name: "consumer all acked", topic: full, acked: &acked{cur, 10}, req: StartRequest{Consumer: true}, want: 11, ackedW: 10},
		{name: "consumer acked trimmed", topic: trimmed, acked: &acked{cur, 2}, req: StartRequest{Consumer: true}, code: subproto.CodeOffsetOutOfRange},
		{name: "consumer acked trimmed if_gone", topic: trimmed, acked: &acked{cur, 2}, req: StartRequest{Consumer: true, IfGone: true}, want: 5, missed: &[2]uint64{3, 4}, ackedW: 4},
		{name: "consumer old epoch", topic: full, acked: &acked{old, 6}, req: StartRequest{Consumer: true}, code: subproto.CodeEpochMismatch},
		{name: "consumer old epoch, sub names current", topic: full, acked: &acked{old, 6}, req: StartRequest{Consumer: true, Epoch: cur, Last: 2}, want: 9, ackedW: 8},
		{name: "consumer sub names old epoch", topic: full, acked: &acked{cur, 6}, req: StartRequest{Consumer: true, Epoch: old}, code: subproto.CodeEpochMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newMemStore()
			info := st.seed("t", tt.topic.times, tt.topic.trimmed)
			st.topics["t"].info.Epoch = cur
			info.Epoch = cur
			key := ""
			if tt.req.Consumer {
				key = "c"
			}
			if tt.acked != nil {
				st.consumers[[2]string{"c", "t"}] = ConsumerOffset{Consumer: "c", Topic: "t", Epoch: tt.acked.epoch, Offset: tt.acked.offset, Updated: time.Now()}
			}
			f, err := startFacts(st, "t", info, tt.req, key)
			if err != nil {
				t.Fatal(err)
			}
			got, serr := decideStart(tt.req, f)
			if tt.code != "" {
				if serr == nil || serr.Code != tt.code {
					t.Fatalf("decideStart = %+v, %v; want err %s", got, serr, tt.code)
				}
				if serr.Message == "" {
					t.Errorf("err %s without a message", serr.Code)
				}
				return
			}
			if serr != nil {
				t.Fatalf("decideStart err %s: %s", serr.Code, serr.Message)
			}
			if got.Offset != tt.want {
				t.Errorf("start = %d, want %d", got.Offset, tt.want)
			}
			switch {
			case (got.Missed == nil) != (tt.missed == nil):
				t.Errorf("missed = %v, want %v", got.Missed, tt.missed)
			case got.Missed != nil && *got.Missed != *tt.missed:
				t.Errorf("missed = %v, want %v", *got.Missed, *tt.missed)
			}
			if tt.req.Consumer && got.Acked != tt.ackedW {
				t.Errorf("acked = %d, want %d", got.Acked, tt.ackedW)
			}
		})
	}
}
