package subproto

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// tricky are strings that need escaping, for every string field.
var tricky = []string{
	"",
	"plain",
	`quote " backslash \ slash /`,
	"control \x00\x01\x1f\x7f \b\f\n\r\t",
	"unicode é € 𝄞 日本",
	"separators \u2028 \u2029",
	"html <script>&amp;</script>",
	"invalid \xff\xfe utf8 \xed\xa0\x80",
	strings.Repeat("long ", 1000),
}

// wantString is what encoding/json reads back from s.
func wantString(s string) string {
	var b strings.Builder
	for _, r := range s { // each invalid byte decodes as U+FFFD
		b.WriteRune(r)
	}
	return b.String()
}

// decodeEvent decodes an encoded event strictly: one JSON object, keys
// exactly as listed.
func decodeEvent(t *testing.T, b []byte, keys ...string) map[string]json.RawMessage {
	t.Helper()
	if !json.Valid(b) || !utf8.Valid(b) {
		t.Fatalf("invalid JSON: %q", b)
	}
	if bytes.IndexByte(b, '\n') >= 0 {
		t.Fatalf("raw newline in %q", b)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if len(m) != len(keys) {
		t.Errorf("%s: got %d keys, want %v", b, len(m), keys)
	}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("%s: no key %q", b, k)
		}
	}
	return m
}

func str(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return s
}

func num(t *testing.T, raw json.RawMessage) uint64 {
	t.Helper()
	var n uint64
	if err := json.Unmarshal(raw, &n); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return n
}

func TestAppendMsg(t *testing.T) {
	b := AppendMsg(nil, "a.b", 5, 1700000000123, []byte(`{"x":[1,2]}`), "")
	if want := `{"op":"msg","topic":"a.b","offset":5,"ts":1700000000123,"data":{"x":[1,2]}}`; string(b) != want {
		t.Errorf("AppendMsg = %s\nwant %s", b, want)
	}
	b = AppendMsg(nil, "a.b", 5, 1, []byte(`1`), "a.*")
	if want := `{"op":"msg","topic":"a.b","sub":"a.*","offset":5,"ts":1,"data":1}`; string(b) != want {
		t.Errorf("AppendMsg = %s\nwant %s", b, want)
	}
	b = AppendMsg([]byte("x\n"), "t", 1, -5, nil, "")
	if want := "x\n" + `{"op":"msg","topic":"t","offset":1,"ts":-5,"data":null}`; string(b) != want {
		t.Errorf("AppendMsg = %s\nwant %s", b, want)
	}
	allChars := "ABCDEFGHIJKLMNOPQRSTUVWXYZ.abcdefghijklmnopqrstuvwxyz.0123456789._-"
	for _, topic := range append([]string{allChars, strings.Repeat("a", 255)}, tricky[1:]...) {
		data := `{"k":"v\u00e9","n":[1,2.5e3,null,true]}`
		b := AppendMsg(nil, topic, 1<<53-1, 1<<62, []byte(data), topic)
		m := decodeEvent(t, b, "op", "topic", "sub", "offset", "ts", "data")
		if got := str(t, m["topic"]); got != wantString(topic) {
			t.Errorf("topic %q, want %q", got, topic)
		}
		if got := str(t, m["sub"]); got != wantString(topic) {
			t.Errorf("sub %q, want %q", got, topic)
		}
		if string(m["data"]) != data || num(t, m["offset"]) != 1<<53-1 || num(t, m["ts"]) != 1<<62 || str(t, m["op"]) != "msg" {
			t.Errorf("fields: %s", b)
		}
		if topic == allChars && !bytes.Contains(b, []byte(`"topic":"`+allChars+`"`)) {
			t.Errorf("allowed topic characters were escaped: %s", b)
		}
	}
}

func TestAppendWelcome(t *testing.T) {
	for _, s := range tricky {
		b := AppendWelcome(nil, s, s+"n", s+"v", 25, nil)
		m := decodeEvent(t, b, "op", "session", "node", "version", "heartbeat")
		if str(t, m["op"]) != "welcome" || str(t, m["session"]) != wantString(s) || str(t, m["node"]) != wantString(s+"n") ||
			str(t, m["version"]) != wantString(s+"v") || num(t, m["heartbeat"]) != 25 {
			t.Errorf("AppendWelcome(%q) = %s", s, b)
		}
	}
	if got := string(AppendWelcome(nil, "0b9e6f5c-5c1f-4c1e-9d1a-1f2e3d4c5b6a", "n1", "1.0.0", 25, nil)); got != `{"op":"welcome","session":"0b9e6f5c-5c1f-4c1e-9d1a-1f2e3d4c5b6a","node":"n1","version":"1.0.0","heartbeat":25}` {
		t.Errorf("AppendWelcome = %s", got)
	}
	if got := string(AppendWelcome(nil, "s", "n1", "1.1.0", 25, []string{FeatureLast, FeatureSince})); got != `{"op":"welcome","session":"s","node":"n1","version":"1.1.0","heartbeat":25,"features":["last","since"]}` {
		t.Errorf("AppendWelcome with features = %s", got)
	}
	if got := string(AppendWelcome(nil, "s", "n1", "1.1.0", 25, []string{})); got != `{"op":"welcome","session":"s","node":"n1","version":"1.1.0","heartbeat":25,"features":[]}` {
		t.Errorf("AppendWelcome with no features = %s", got)
	}
}

func TestAppendPong(t *testing.T) {
	if got := string(AppendPong(nil, 42)); got != `{"op":"pong","id":42}` {
		t.Errorf("AppendPong = %s", got)
	}
	if got := string(AppendPong(nil, 0)); got != `{"op":"pong"}` {
		t.Errorf("AppendPong = %s", got)
	}
}

func TestAppendErr(t *testing.T) {
	tests := []struct {
		e    Error
		ctx  *ErrContext
		want string
	}{
		{Error{Code: CodeBadRequest, Message: `missing field "topic"`, ID: 3}, nil,
			`{"op":"err","id":3,"code":"bad_request","message":"missing field \"topic\""}`},
		{Error{Code: CodeForbidden, Message: "no"}, nil,
			`{"op":"err","code":"forbidden","message":"no"}`},
		{Error{Code: CodeOffsetOutOfRange, Message: "gone", ID: 1}, &ErrContext{Earliest: 10, Latest: 42, HasRange: true},
			`{"op":"err","id":1,"code":"offset_out_of_range","message":"gone","earliest":10,"latest":42}`},
		{Error{Code: CodeEpochMismatch, Message: "reset", ID: 1}, &ErrContext{Epoch: "e7", Earliest: 1, Latest: 0, HasRange: true},
			`{"op":"err","id":1,"code":"epoch_mismatch","message":"reset","earliest":1,"latest":0,"epoch":"e7"}`},
		{Error{Code: CodeEpochMismatch, Message: "reset"}, &ErrContext{Epoch: "e7"},
			`{"op":"err","code":"epoch_mismatch","message":"reset","epoch":"e7"}`},
		{Error{Code: CodeUnavailable, Message: "disk", ID: 2}, &ErrContext{RetryAfterMs: 1500},
			`{"op":"err","id":2,"code":"unavailable","message":"disk","retry_after_ms":1500}`},
		{Error{Code: CodeInternal, ID: 9, Close: CloseInternal}, &ErrContext{},
			`{"op":"err","id":9,"code":"internal","message":` + string(must(json.Marshal(CodeInternal.Description()))) + `}`},
	}
	for _, tt := range tests {
		if got := string(AppendErr(nil, &tt.e, tt.ctx)); got != tt.want {
			t.Errorf("AppendErr(%+v, %+v)\n got %s\nwant %s", tt.e, tt.ctx, got, tt.want)
		}
	}
	for _, s := range tricky {
		b := AppendErr(nil, &Error{Code: CodeBadRequest, Message: s + "m", ID: 7}, &ErrContext{Epoch: s + "e"})
		m := decodeEvent(t, b, "op", "id", "code", "message", "epoch")
		if str(t, m["message"]) != wantString(s+"m") || str(t, m["epoch"]) != wantString(s+"e") || num(t, m["id"]) != 7 {
			t.Errorf("AppendErr(%q) = %s", s, b)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestAppendUnsubbed(t *testing.T) {
	if got := string(AppendUnsubbed(nil, "a.>", CodeSlow)); got != `{"op":"unsubbed","topic":"a.>","code":"slow"}` {
		t.Errorf("AppendUnsubbed = %s", got)
	}
	for _, s := range tricky {
		m := decodeEvent(t, AppendUnsubbed(nil, s, CodeTakenOver), "op", "topic", "code")
		if str(t, m["topic"]) != wantString(s) || str(t, m["code"]) != "taken_over" {
			t.Errorf("AppendUnsubbed(%q)", s)
		}
	}
}

func TestAppendOK(t *testing.T) {
	tests := []struct {
		ok   OK
		want string
	}{
		{OK{ID: 1}, `{"op":"ok","id":1}`},
		{OK{ID: 1, Pub: true, Topic: "t", Offset: 5}, `{"op":"ok","id":1,"topic":"t","offset":5}`},
		{OK{ID: 1, Pub: true, Topic: "t", Offset: 5, Dup: true}, `{"op":"ok","id":1,"topic":"t","offset":5,"dup":true}`},
		{OK{ID: 1, Sub: true, Topic: "t", Epoch: "e1", Head: 7, From: 8}, `{"op":"ok","id":1,"topic":"t","epoch":"e1","head":7,"from":8}`},
		{OK{ID: 1, Sub: true, Topic: "t", Epoch: "e1", Head: 0, From: 1}, `{"op":"ok","id":1,"topic":"t","epoch":"e1","head":0,"from":1}`},
		{OK{ID: 1, Sub: true, Topic: "t", Epoch: "e1", Head: 9, From: 6, Missed: &[2]uint64{3, 5}},
			`{"op":"ok","id":1,"topic":"t","epoch":"e1","head":9,"from":6,"missed":[3,5]}`},
		{OK{ID: 2, Topic: "a.*"}, `{"op":"ok","id":2,"topic":"a.*"}`},
	}
	for _, tt := range tests {
		if got := string(AppendOK(nil, &tt.ok)); got != tt.want {
			t.Errorf("AppendOK(%+v)\n got %s\nwant %s", tt.ok, got, tt.want)
		}
	}
	for _, s := range tricky[1:] {
		b := AppendOK(nil, &OK{ID: 3, Sub: true, Topic: s, Epoch: s})
		m := decodeEvent(t, b, "op", "id", "topic", "epoch", "head", "from")
		if str(t, m["topic"]) != wantString(s) || str(t, m["epoch"]) != wantString(s) {
			t.Errorf("AppendOK(%q) = %s", s, b)
		}
	}
}

func TestAppendCommandRoundTrip(t *testing.T) {
	cmds := []Command{
		{Op: OpPing},
		{Op: OpPing, ID: MaxInteger},
		{Op: OpAuth, ID: 1, Token: "tok\"en\u2028é\x01"},
		{Op: OpPub, ID: 2, Topic: "a.b", Data: []byte(`{"x":[1,"\u00e9"]}`), Key: "k-1"},
		{Op: OpPub, Topic: "a", Data: []byte(`null`)},
		{Op: OpSub, ID: 3, Topic: "a", From: From{FromOffset, 9}, Epoch: "é\"poch", IfGone: "earliest", Consumer: "c.1", MaxInflight: 5},
		{Op: OpSub, Topic: "a", From: From{Kind: FromEarliest}},
		{Op: OpSub, Topic: "a", From: From{Kind: FromLatest}},
		{Op: OpSub, Topic: "a.*.>", Pattern: true},
		{Op: OpUnsub, ID: 4, Topic: ">", Pattern: true},
		{Op: OpUnsub, Topic: "x"},
		{Op: OpAck, ID: 5, Topic: "a", Consumer: "c", Offset: 77},
		{Op: OpAck, Topic: "a", Consumer: "c", Offset: 77, Epoch: "e\"1"},
		{Op: OpSub, Topic: "a", Last: 50, Epoch: "e"},
		{Op: OpSub, Topic: "a", Since: 0, HasSince: true},
		{Op: OpSub, Topic: "a", Since: 1765130520000, HasSince: true, IfGone: "earliest", Consumer: "c"},
		{Op: OpSub, Topic: "a.*", Pattern: true, Since: 5, HasSince: true, IfGone: "earliest",
			Positions: []Position{{Topic: "a.b", From: 3, Epoch: "e1"}, {Topic: "a.c", From: 1}}},
	}
	for _, c := range cmds {
		b := AppendCommand(nil, &c)
		got, err := Decode(b)
		if err != nil {
			t.Errorf("%s: %v", b, err)
			continue
		}
		if !reflect.DeepEqual(*got, c) {
			t.Errorf("round trip of %s\n got %+v\nwant %+v", b, *got, c)
		}
	}
	if got := string(AppendCommand(nil, &Command{Op: OpPub, ID: 1, Topic: "t", Data: []byte(`[1]`), Key: "k"})); got != `{"op":"pub","id":1,"topic":"t","key":"k","data":[1]}` {
		t.Errorf("AppendCommand = %s", got)
	}
}

func TestEncodersDoNotAllocate(t *testing.T) {
	buf := make([]byte, 0, 4096)
	data := []byte(`{"text":"hello"}`)
	ok := &OK{ID: 1, Sub: true, Topic: "t", Epoch: "e", Missed: &[2]uint64{1, 2}}
	e := &Error{Code: CodeBadRequest, Message: "m\"", ID: 1}
	ctx := &ErrContext{Epoch: "e", HasRange: true}
	cmd := &Command{Op: OpSub, ID: 3, Topic: "a", From: From{FromOffset, 9}, Consumer: "c"}
	allocs := testing.AllocsPerRun(100, func() {
		b := AppendMsg(buf[:0], "chat.room1", 12345, 1700000000000, data, "chat.*")
		b = AppendOK(b, ok)
		b = AppendErr(b, e, ctx)
		b = AppendWelcome(b, "s\u2028", "n", "v", 25, []string{"last"})
		b = AppendUnsubbed(b, "t", CodeSlow)
		b = AppendPong(b, 1)
		_ = AppendCommand(b, cmd)
	})
	if allocs != 0 {
		t.Errorf("%v allocations", allocs)
	}
}

func TestAppendTopic(t *testing.T) {
	for _, c := range []struct {
		e    Topic
		want string
	}{
		{Topic{Sub: "chat.>", Topic: "chat.a", Epoch: "e7", From: 12}, `{"op":"topic","sub":"chat.>","topic":"chat.a","epoch":"e7","from":12}`},
		{Topic{Sub: "chat.>", Topic: "chat.a", Epoch: "e7", From: 12, Missed: &[2]uint64{3, 11}}, `{"op":"topic","sub":"chat.>","topic":"chat.a","epoch":"e7","from":12,"missed":[3,11]}`},
		{Topic{Sub: "*", Topic: "a", Epoch: "e8", Code: CodeEpochMismatch, Earliest: 1, Latest: 4}, `{"op":"topic","sub":"*","topic":"a","code":"epoch_mismatch","epoch":"e8","earliest":1,"latest":4}`},
		{Topic{Sub: "*", Topic: "a", Epoch: "e\"", Code: CodeOffsetOutOfRange, Earliest: 5, Latest: 4}, `{"op":"topic","sub":"*","topic":"a","code":"offset_out_of_range","epoch":"e\"","earliest":5,"latest":4}`},
	} {
		if got := string(AppendTopic(nil, &c.e)); got != c.want {
			t.Errorf("AppendTopic(%+v) = %s, want %s", c.e, got, c.want)
		}
	}
}
