package subproto

import (
	"strings"
	"testing"
)

func TestDecodePresence(t *testing.T) {
	info := `{"name":"Ann","avatar":[1,2]}`
	cases := []struct {
		in       string
		presence bool
		info     string
		code     Code
		msg      string // part of the error message
	}{
		{in: `{"op":"sub","id":1,"topic":"r","presence":true}`, presence: true},
		{in: `{"op":"sub","id":1,"topic":"r","presence":false}`},
		{in: `{"op":"sub","id":1,"topic":"r","presence":true,"presence_info":` + info + `}`, presence: true, info: info},
		{in: `{"op":"sub","id":1,"topic":"r","presence":true,"presence_info":null}`, presence: true, info: "null"},
		{in: `{"op":"sub","id":1,"topic":"r","presence":1}`, code: CodeBadRequest, msg: `"presence" must be true or false`},
		{in: `{"op":"sub","id":1,"topic":"r","presence":"true"}`, code: CodeBadRequest, msg: `"presence" must be true or false`},
		{in: `{"op":"sub","id":1,"topic":"r","presence_info":{}}`, code: CodeBadRequest, msg: `needs "presence": true`},
		{in: `{"op":"sub","id":1,"topic":"r","presence":false,"presence_info":{}}`, code: CodeBadRequest, msg: `needs "presence": true`},
		{in: `{"op":"sub","id":1,"topic":"r.*","presence":true}`, code: CodeBadRequest, msg: "not allowed with a pattern"},
		{in: `{"op":"sub","id":1,"topic":"r","presence":true,"presence_info":"` + strings.Repeat("x", MaxPresenceInfo-2) + `"}`, presence: true, info: `"` + strings.Repeat("x", MaxPresenceInfo-2) + `"`},
		{in: `{"op":"sub","id":1,"topic":"r","presence":true,"presence_info":"` + strings.Repeat("x", MaxPresenceInfo-1) + `"}`, code: CodeBadRequest, msg: "the limit is 1024"},
		{in: `{"op":"pub","id":1,"topic":"r","data":1,"presence":true}`, code: CodeBadRequest, msg: `not allowed in "pub"`},
	}
	for _, c := range cases {
		cmd, err := Decode([]byte(c.in))
		if c.code != "" {
			if err == nil || err.Code != c.code || !strings.Contains(err.Message, c.msg) || err.ID != 1 {
				t.Errorf("Decode(%.80s) = %+v, want %s with %q", c.in, err, c.code, c.msg)
			}
			continue
		}
		if err != nil {
			t.Errorf("Decode(%.80s): %v", c.in, err)
			continue
		}
		if cmd.Presence != c.presence || string(cmd.PresenceInfo) != c.info {
			t.Errorf("Decode(%.80s) = presence %v info %q", c.in, cmd.Presence, cmd.PresenceInfo)
		}
		if c.info == "" && cmd.PresenceInfo != nil {
			t.Errorf("Decode(%.80s): PresenceInfo %q, want nil", c.in, cmd.PresenceInfo)
		}
		// The encoder writes it back to what decodes the same.
		again, err := Decode(AppendCommand(nil, cmd))
		if err != nil || again.Presence != cmd.Presence || string(again.PresenceInfo) != string(cmd.PresenceInfo) {
			t.Errorf("round trip of %.80s: %+v, %v", c.in, again, err)
		}
	}
}

func TestDecodePresenceCommand(t *testing.T) {
	cmd, err := Decode([]byte(`{"op":"presence","id":7,"topic":"room.1"}`))
	if err != nil || cmd.Op != OpPresence || cmd.ID != 7 || cmd.Topic != "room.1" {
		t.Fatalf("Decode = %+v, %v", cmd, err)
	}
	if b := string(AppendCommand(nil, cmd)); b != `{"op":"presence","id":7,"topic":"room.1"}` {
		t.Errorf("AppendCommand = %s", b)
	}
	for in, want := range map[string]Code{
		`{"op":"presence","id":7}`:                             CodeBadRequest,
		`{"op":"presence","id":7,"topic":"room.*"}`:            CodeInvalidTopic,
		`{"op":"presence","id":7,"topic":"room..1"}`:           CodeInvalidTopic,
		`{"op":"presence","id":7,"topic":"r","from":1}`:        CodeBadRequest,
		`{"op":"presence","id":7,"topic":"r","presence":true}`: CodeBadRequest,
	} {
		if _, err := Decode([]byte(in)); err == nil || err.Code != want || err.ID != 7 {
			t.Errorf("Decode(%s) = %+v, want %s", in, err, want)
		}
	}
	if !OpPresence.IsCommand() || OpPresence.IsEvent() || !OpJoin.IsEvent() || !OpLeave.IsEvent() || !OpPresenceMuted.IsEvent() {
		t.Error("IsCommand/IsEvent do not know the presence ops")
	}
}

func TestMemberEncoding(t *testing.T) {
	m := Member{Session: "s\u2028", Node: "n1"}
	if got := string(AppendMember(nil, &m)); got != `{"session":"s\u2028","node":"n1"}` {
		t.Errorf("AppendMember = %s", got)
	}
	for _, bad := range []string{
		`{"op":"join","topic":"r","member":{"node":"n"}}`,         // no session
		`{"op":"join","topic":"r","member":{"session":1}}`,        // wrong type
		`{"op":"join","topic":"r","member":[]}`,                   // not an object
		`{"op":"ok","members":[{"session":"a"},1]}`,               // an element not a member
		`{"op":"ok","members":{"session":"a"}}`,                   // not an array
		`{"op":"join","topic":"r","member":{"session":"\ud800"}}`, // a lone surrogate
	} {
		var ev Event
		if err := DecodeEvent([]byte(bad), &ev); err == nil {
			t.Errorf("DecodeEvent(%s) = %+v, want an error", bad, ev)
		}
	}
}
