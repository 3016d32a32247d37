package client

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

func TestParseEvent(t *testing.T) {
	var ev event
	line := subproto.AppendMsg(nil, "a.b", 42, 1700000000123, []byte(`{"s":"x}\"]","n":[1,{"y":2}]}`), "a.*")
	if err := parseEvent(line, &ev); err != nil {
		t.Fatal(err)
	}
	if string(ev.op) != "msg" || string(ev.topic) != "a.b" || string(ev.sub) != "a.*" || ev.offset != 42 || ev.ts != 1700000000123 || string(ev.data) != `{"s":"x}\"]","n":[1,{"y":2}]}` {
		t.Fatalf("msg: %+v", ev)
	}
	line = subproto.AppendOK(nil, &subproto.OK{ID: 7, Topic: "t", Sub: true, Epoch: "e1", Head: 9, From: 3, Missed: &[2]uint64{1, 2}})
	if err := parseEvent(line, &ev); err != nil || ev.id != 7 || string(ev.epoch) != "e1" || ev.head != 9 || ev.from != 3 || !ev.hasMissed || ev.missed != [2]uint64{1, 2} {
		t.Fatalf("sub ok %v: %+v", err, ev)
	}
	line = subproto.AppendErr(nil, &subproto.Error{ID: 3, Code: subproto.CodeEpochMismatch, Message: "tab\there \"q\""}, &subproto.ErrContext{Epoch: "e2", Earliest: 4, Latest: 8, HasRange: true})
	if err := parseEvent(line, &ev); err != nil {
		t.Fatal(err)
	}
	e := ev.errorOf()
	if e.Code != CodeEpochMismatch || e.Message != "tab\there \"q\"" || e.Epoch != "e2" || e.Earliest != 4 || e.Latest != 8 || !e.HasRange {
		t.Fatalf("err: %+v", e)
	}
	// Unknown members are skipped; member order does not matter.
	if err := parseEvent([]byte(` {"future":{"a":[1,2]},"offset":5,"op":"msg","dup":true} `), &ev); err != nil || ev.offset != 5 || !ev.dup {
		t.Fatalf("reordered: %v %+v", err, ev)
	}
	for _, bad := range []string{``, `[]`, `{"op":"msg"`, `{"op":"msg",}`, `{"op" "x"}`, `{"data":"unterminated}`, `{"op":"ok"} x`} {
		if err := parseEvent([]byte(bad), &ev); err == nil {
			t.Errorf("parseEvent(%q) accepted", bad)
		}
	}
}

func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(`{"op":"msg","topic":"a","offset":1,"ts":2,"data":[{"x":"\""}]}`))
	f.Add([]byte(`{"op":"err","id":1,"code":"x","message":"\u00e9","missed":[1,2]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev event
		_ = parseEvent(b, &ev) // must not panic
		if ev.code != nil {
			_ = ev.errorOf()
		}
	})
}

func TestSplitFrame(t *testing.T) {
	var cmds []string
	for i := range 1200 {
		cmds = append(cmds, fmt.Sprintf(`{"op":"ping","id":%d}`, i+1))
	}
	big := `{"op":"pub","topic":"t","data":"` + strings.Repeat("x", maxFrameBytes) + `"}`
	cmds = append(cmds[:700], append([]string{big}, cmds[700:]...)...)
	buf := []byte(strings.Join(cmds, "\n"))
	var got []string
	for rest := buf; len(rest) > 0; {
		var frame []byte
		frame, rest = splitFrame(rest)
		n := bytes.Count(frame, []byte{'\n'}) + 1
		if n > maxFrameCommands || (n > 1 && len(frame) > maxFrameBytes) {
			t.Fatalf("frame of %d commands, %d bytes", n, len(frame))
		}
		if frame[0] == '\n' || frame[len(frame)-1] == '\n' {
			t.Fatal("frame starts or ends with a newline")
		}
		got = append(got, strings.Split(string(frame), "\n")...)
	}
	if strings.Join(got, "\n") != strings.Join(cmds, "\n") {
		t.Fatal("commands changed by splitting")
	}
}

func TestBackoff(t *testing.T) {
	o := defaultOptions()
	o.minBackoff, o.maxBackoff = 100*time.Millisecond, time.Second
	for n := range 40 {
		for range 50 {
			d := o.backoff(n, 0)
			ceil := min(o.maxBackoff, o.minBackoff<<min(n, 20))
			if d < 0 || d > ceil {
				t.Fatalf("attempt %d: %v outside [0, %v]", n, d, ceil)
			}
		}
	}
	if d := o.backoff(0, 3*time.Second); d < 3*time.Second {
		t.Fatalf("retry_after ignored: %v", d)
	}
}

func TestParseCloseReason(t *testing.T) {
	ce := parseCloseReason(1001, subproto.CloseReason(subproto.CloseGoingAway, 1234))
	if ce.Code != 1001 || ce.Reason != "going_away" || ce.RetryAfter != 1234*time.Millisecond {
		t.Fatalf("%+v", ce)
	}
	ce = parseCloseReason(4008, []byte("slow consumer: write timeout"))
	if ce.Reason != "slow consumer: write timeout" || ce.RetryAfter != 0 {
		t.Fatalf("%+v", ce)
	}
}
