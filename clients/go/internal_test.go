package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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
	if ev.Op != "msg" || ev.Topic != "a.b" || ev.Sub != "a.*" || ev.Offset != 42 || ev.TS != 1700000000123 || string(ev.Data) != `{"s":"x}\"]","n":[1,{"y":2}]}` {
		t.Fatalf("msg: %+v", ev)
	}
	line = subproto.AppendErr(nil, &subproto.Error{ID: 3, Code: subproto.CodeEpochMismatch, Message: "tab\there \"q\""}, &subproto.ErrContext{Epoch: "e2", Earliest: 4, Latest: 8, HasRange: true})
	if err := parseEvent(line, &ev); err != nil {
		t.Fatal(err)
	}
	e := errorOf(&ev)
	if e.Code != CodeEpochMismatch || e.Message != "tab\there \"q\"" || e.Epoch != "e2" || e.Earliest != 4 || e.Latest != 8 || !e.HasRange {
		t.Fatalf("err: %+v", e)
	}
}

// TestWireVectors checks the client against the protocol's wire vectors
// (subproto/testdata/vectors.json): every event it must understand, every
// one it must refuse, and the topic rules it applies before sending.
func TestWireVectors(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "subproto", "testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Events []struct {
			Name string `json:"name"`
			Line string `json:"line"`
			Bad  bool   `json:"bad"`
		} `json:"events"`
		Topics []struct {
			S       string `json:"s"`
			Topic   bool   `json:"topic"`
			Pattern bool   `json:"pattern"`
		} `json:"topics"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Events) == 0 || len(v.Topics) == 0 {
		t.Fatal("no vectors")
	}
	for _, c := range v.Events {
		var ev event
		err := parseEvent([]byte(c.Line), &ev)
		if c.Bad != (err != nil) {
			t.Errorf("%s: parseEvent(%s) error %v, vectors say bad=%v", c.Name, c.Line, err, c.Bad)
			continue
		}
		if c.Bad {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(c.Line), &m); err != nil {
			t.Fatal(err)
		}
		if string(ev.Op) != m["op"] || ev.Topic != str(m["topic"]) || ev.Sub != str(m["sub"]) || string(ev.Code) != str(m["code"]) || ev.Epoch != str(m["epoch"]) {
			t.Errorf("%s: parseEvent(%s) = %+v", c.Name, c.Line, ev)
		}
		if ev.Op == subproto.OpErr {
			if e := errorOf(&ev); string(e.Code) != m["code"] || e.Message != m["message"] {
				t.Errorf("%s: errorOf = %+v", c.Name, e)
			}
		}
	}
	for _, c := range v.Topics {
		if got := subproto.ValidTopic(c.S); got != c.Topic { // what Publish checks
			t.Errorf("ValidTopic(%q) = %v, vectors say %v", c.S, got, c.Topic)
		}
		if got := subproto.ValidPattern(c.S); got != (c.Topic || c.Pattern) { // what Subscribe checks
			t.Errorf("ValidPattern(%q) = %v, vectors say %v", c.S, got, c.Topic || c.Pattern)
		}
	}
}

func str(v any) string { s, _ := v.(string); return s }

func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(`{"op":"msg","topic":"a","offset":1,"ts":2,"data":[{"x":"\""}]}`))
	f.Add([]byte(`{"op":"err","id":1,"code":"x","message":"\u00e9","missed":[1,2]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev event
		_ = parseEvent(b, &ev) // must not panic
		_ = errorOf(&ev)
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

func BenchmarkParseEventMsg(b *testing.B) {
	line := subproto.AppendMsg(nil, "chat.room-7", 123456, 1700000000123, []byte(`{"text":"a message of a chat room","user":"u-42"}`), "")
	var ev event
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		if err := parseEvent(line, &ev); err != nil {
			b.Fatal(err)
		}
	}
}
