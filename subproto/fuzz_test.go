package subproto

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
	"unsafe"
)

func fuzzSeeds() []string {
	return []string{
		`{"op":"pub","id":1,"topic":"a.b","data":{"x":[1,2,{"y":null}]},"key":"k1"}`,
		`{"op":"sub","id":2,"topic":"a","from":5,"epoch":"e1","if_gone":"earliest","consumer":"c","max_inflight":10}`,
		`{"op":"sub","topic":"a.*.>"}`,
		`{"op":"unsub","id":3,"topic":"a"}`,
		`{"op":"ack","id":4,"topic":"a","consumer":"c","offset":3}`,
		`{"op":"auth","token":"t\u00e9\ud83d\ude00"}`,
		`{"op":"ping","id":9007199254740991}`,
		`{"op":"pub","topic":"a","data":"\ud800"}`,
		`{"op":"pub","topic":"a","data":-0.5e-7,"id":1.0}`,
		`{"\u006fp":"ping","op":"ping"}`,
		`{"op":"pub","topic":"a","data":[[[[[[[[]]]]]]]]}`,
		`[1,{"a":"b"}]`,
		`{"op":"x"}` + "\n" + `{"op":"ping"}` + "\r\n\n",
		"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xff\"}",
		`{"op":"pub","topic":"a","data":[1,2}`,
		`{"op":"sub","id":5,"topic":"room.1","presence":true,"presence_info":{"name":"A","tags":["x"]}}`,
		`{"op":"presence","id":6,"topic":"room.1"}`,
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, obj []byte) {
		cmd, err := Decode(obj)
		checkDecoded(t, obj, cmd, err)
	})
}

func FuzzDecodeFrame(f *testing.F) {
	for i, s := range fuzzSeeds() {
		f.Add([]byte(s), uint8(i%3))
	}
	f.Fuzz(func(t *testing.T, frame []byte, max uint8) {
		type result struct {
			cmd *Command
			err *Error
		}
		var got []result
		ferr := DecodeFrame(frame, int(max), func(cmd *Command, err *Error) {
			if (cmd == nil) == (err == nil) {
				t.Fatalf("fn got cmd=%v err=%v", cmd, err)
			}
			if cmd != nil {
				c := *cmd
				if len(c.Data) > 0 && !within(frame, c.Data) {
					t.Fatalf("data %q does not alias the frame", c.Data)
				}
				cmd = &c
			} else if err.Close != 0 {
				t.Fatalf("closing error passed to fn: %v", err)
			}
			got = append(got, result{cmd, err})
		})

		// The same, line by line with Decode.
		var lines [][]byte
		for _, line := range bytes.Split(frame, []byte{'\n'}) {
			if len(bytes.Trim(line, " \t\r")) > 0 {
				lines = append(lines, line)
			}
		}
		if max > 0 && len(lines) > int(max) {
			if ferr == nil || ferr.Close != CloseTooBig || len(got) != 0 {
				t.Fatalf("%d commands, limit %d: %v, %d passed", len(lines), max, ferr, len(got))
			}
			return
		}
		for i, line := range lines {
			cmd, err := Decode(line)
			checkDecoded(t, line, cmd, err)
			if err != nil && err.Close != 0 {
				if ferr == nil || ferr.Close != err.Close || len(got) != i {
					t.Fatalf("line %d: %v; frame: %v after %d", i, err, ferr, len(got))
				}
				return
			}
			if i >= len(got) {
				t.Fatalf("line %d not passed to fn", i)
			}
			if !reflect.DeepEqual(got[i].cmd, cmd) || (err == nil) != (got[i].err == nil) ||
				(err != nil && *err != *got[i].err) {
				t.Fatalf("line %d: frame gave %+v %v, Decode %+v %v", i, got[i].cmd, got[i].err, cmd, err)
			}
		}
		if ferr != nil || len(got) != len(lines) {
			t.Fatalf("%d lines, %d results, %v", len(lines), len(got), ferr)
		}
	})
}

// within reports whether sub is a slice of buf's memory.
func within(buf, sub []byte) bool {
	if len(sub) == 0 || len(buf) == 0 {
		return false
	}
	b := uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	s := uintptr(unsafe.Pointer(unsafe.SliceData(sub)))
	return b <= s && s+uintptr(len(sub)) <= b+uintptr(len(buf))
}

// checkDecoded checks what Decode made of obj against encoding/json.
func checkDecoded(t *testing.T, obj []byte, cmd *Command, err *Error) {
	t.Helper()
	if (cmd == nil) == (err == nil) {
		t.Fatalf("Decode(%q) = %v, %v", obj, cmd, err)
	}
	valid := json.Valid(obj) && utf8.Valid(obj)
	if err != nil {
		if err.Code.Description() == "" || err.Message == "" || !utf8.ValidString(err.Message) {
			t.Fatalf("Decode(%q): bad error %+v", obj, err)
		}
		switch err.Close {
		case 0:
			if !valid && !strings.Contains(err.Message, "deeper") {
				t.Fatalf("Decode(%q): %v, but encoding/json finds it invalid", obj, err)
			}
		case CloseInvalidData:
			if len(err.Message) > MaxCloseReason-20 {
				t.Fatalf("close message too long for a close reason: %q", err.Message)
			}
			if valid {
				t.Fatalf("Decode(%q): %v, but it is valid JSON", obj, err)
			}
			if err.ID != 0 {
				t.Fatalf("closing error with an id")
			}
		default:
			t.Fatalf("Decode(%q): close %d", obj, err.Close)
		}
		return
	}
	if !valid {
		t.Fatalf("Decode(%q) accepted invalid JSON: %+v", obj, cmd)
	}
	var ref map[string]json.RawMessage
	if err := json.Unmarshal(obj, &ref); err != nil {
		t.Fatalf("Decode(%q) accepted what encoding/json refuses: %v", obj, err)
	}
	refString := func(name string) string {
		raw, ok := ref[name]
		if !ok {
			return ""
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("%s: field %s: %v", obj, name, err)
		}
		return s
	}
	refInt := func(name string) uint64 {
		raw, ok := ref[name]
		if !ok {
			return 0
		}
		var n uint64
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatalf("%s: field %s: %v", obj, name, err)
		}
		return n
	}
	if !cmd.Op.IsCommand() || refString("op") != string(cmd.Op) || refInt("id") != cmd.ID {
		t.Fatalf("%s: op %q id %d", obj, cmd.Op, cmd.ID)
	}
	for name := range ref {
		if i := fieldIndex([]byte(name)); i < 0 {
			t.Fatalf("%s: unknown field %q accepted", obj, name)
		}
	}
	if cmd.Topic != refString("topic") || cmd.Key != refString("key") || cmd.Token != refString("token") ||
		cmd.Consumer != refString("consumer") || cmd.Epoch != refString("epoch") || cmd.IfGone != refString("if_gone") ||
		cmd.Offset != refInt("offset") || uint64(cmd.MaxInflight) != refInt("max_inflight") {
		t.Fatalf("%s: decoded %+v disagrees with encoding/json", obj, cmd)
	}
	switch cmd.Op {
	case OpPub:
		if !json.Valid(cmd.Data) || !bytes.Equal(cmd.Data, ref["data"]) || !within(obj, cmd.Data) {
			t.Fatalf("%s: data %q, encoding/json %q", obj, cmd.Data, ref["data"])
		}
		if !ValidTopic(cmd.Topic) {
			t.Fatalf("%s: invalid topic accepted", obj)
		}
	case OpSub, OpUnsub:
		if !ValidPattern(cmd.Topic) || cmd.Pattern != IsPattern(cmd.Topic) {
			t.Fatalf("%s: topic %q pattern %v", obj, cmd.Topic, cmd.Pattern)
		}
	}
	// Encoding the command gives it back.
	enc := AppendCommand(nil, cmd)
	again, err := Decode(enc)
	if err != nil {
		t.Fatalf("%s: re-encoded as %s: %v", obj, enc, err)
	}
	if !reflect.DeepEqual(again, cmd) {
		t.Fatalf("%s: re-encoded as %s, decoded as %+v, want %+v", obj, enc, again, cmd)
	}
}
