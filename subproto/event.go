package subproto

import (
	"bytes"
	"errors"
	"strconv"
)

// Event is one decoded server event. Data aliases the decoded bytes; every
// other field is owned by the Event. Fields an event does not carry are
// zero.
type Event struct {
	Op Op
	ID uint64 // ok, err, pong: the command's id, 0 when absent
	// Topic: msg, ok of a pub or sub, unsubbed, topic.
	Topic string
	// Sub: a msg that came through a pattern subscription, or a topic
	// event: the pattern.
	Sub    string
	Offset uint64 // msg; ok of a pub
	TS     int64  // msg: ms since the Unix epoch
	Data   []byte // msg: the raw JSON value
	Dup    bool   // ok of a pub
	Epoch  string // ok of a sub, err with context, topic
	// Head and From: ok of a sub (From also in a topic event).
	Head, From uint64
	Missed     *[2]uint64 // ok of a sub, topic
	Code       Code       // err, unsubbed, coded topic event
	Message    string     // err
	// Earliest and Latest: err with context, coded topic event;
	// HasRange says whether they were sent.
	Earliest, Latest uint64
	HasRange         bool
	// welcome:
	Session, Node, Version string
	Heartbeat              int
	Features               []string // nil for a server before v1.1
	// Presence (v1.1): the member of a join or leave; the members and
	// the count of the ok of a presence command (HasCount says whether
	// count was sent).
	Member   *Member
	Members  []Member
	Count    int
	HasCount bool
}

var eventOps = [...]Op{OpMsg, OpOK, OpErr, OpPong, OpWelcome, OpUnsubbed, OpTopic, OpJoin, OpLeave, OpPresenceMuted}

// ErrEvent is wrapped by DecodeEvent's errors.
var ErrEvent = errors.New("subproto: malformed event")

// DecodeEvent decodes one event, a JSON object (with optional whitespace
// around it), into ev. It is the clients' decoder: members may come in any
// order and unknown members are skipped (a newer server may add some);
// known members must have their types (an offset a non-negative integer up
// to MaxInteger, ...). An op that is not an event of this version is
// returned as is, for the caller to ignore. ev.Data aliases obj.
func DecodeEvent(obj []byte, ev *Event) error {
	*ev = Event{}
	s := scanner{b: obj}
	fail := func(msg string) error { return errors.New(ErrEvent.Error() + ": " + msg) }
	s.ws()
	if s.i >= len(obj) || obj[s.i] != '{' {
		return fail("not a JSON object")
	}
	s.i++
	s.ws()
	var buf []byte
	if s.i < len(obj) && obj[s.i] == '}' {
		s.i++
	} else {
		for {
			if s.i >= len(obj) || obj[s.i] != '"' {
				return fail("expected a member name at byte " + strconv.Itoa(s.i))
			}
			nameStart := s.i
			esc, ok := s.str()
			if !ok {
				return fail(s.err)
			}
			name := obj[nameStart+1 : s.i-1]
			if esc {
				if buf, ok = unescape(buf[:0], name); !ok {
					return fail("a member name holds a lone surrogate")
				}
				name = buf
			}
			s.ws()
			if s.i >= len(obj) || obj[s.i] != ':' {
				return fail("expected ':' at byte " + strconv.Itoa(s.i))
			}
			s.i++
			s.ws()
			v := span{start: s.i}
			if s.i < len(obj) && obj[s.i] == '"' {
				if v.esc, ok = s.str(); !ok {
					return fail(s.err)
				}
			} else if !s.value() {
				return fail(s.err)
			}
			v.end, v.kind = s.i, kindOf(obj[v.start])
			if err := ev.set(name, obj, v); err != "" {
				return fail(err)
			}
			s.ws()
			if s.i >= len(obj) {
				return fail("unexpected end of input")
			}
			if obj[s.i] == '}' {
				s.i++
				break
			}
			if obj[s.i] != ',' {
				return fail("expected ',' or '}' at byte " + strconv.Itoa(s.i))
			}
			s.i++
			s.ws()
		}
	}
	s.ws()
	if s.i != len(obj) {
		return fail("more after the object")
	}
	if ev.Op == "" {
		return fail(`missing "op"`)
	}
	return nil
}

// set decodes member name's value v; it returns a problem or "".
func (ev *Event) set(name []byte, b []byte, v span) string {
	str := func() (string, bool) { return spanString(b, v) }
	uint := func() (uint64, bool) { return parseInt0(b, v) }
	var ok bool
	switch string(name) {
	case "op":
		if v.kind == kString && !v.esc {
			// The ops of this version without an allocation.
			for _, op := range eventOps {
				if string(b[v.start+1:v.end-1]) == string(op) {
					ev.Op = op
					return ""
				}
			}
		}
		var s string
		s, ok = str()
		ev.Op = Op(s)
	case "id":
		ev.ID, ok = uint()
	case "topic":
		ev.Topic, ok = str()
	case "sub":
		ev.Sub, ok = str()
	case "offset":
		ev.Offset, ok = uint()
	case "ts":
		var t uint64
		t, ok = uint()
		ev.TS = int64(t)
	case "data":
		ev.Data, ok = b[v.start:v.end:v.end], true
	case "dup":
		ev.Dup, ok = string(b[v.start:v.end]) == "true", v.kind == 't' || v.kind == 'f'
	case "epoch":
		ev.Epoch, ok = str()
	case "head":
		ev.Head, ok = uint()
	case "from":
		ev.From, ok = uint()
	case "missed":
		ev.Missed, ok = pair(b[v.start:v.end])
	case "code":
		var s string
		s, ok = str()
		ev.Code = Code(s)
	case "message":
		ev.Message, ok = str()
	case "earliest":
		ev.Earliest, ok = uint()
		ev.HasRange = true
	case "latest":
		ev.Latest, ok = uint()
		ev.HasRange = true
	case "session":
		ev.Session, ok = str()
	case "node":
		ev.Node, ok = str()
	case "version":
		ev.Version, ok = str()
	case "heartbeat":
		var h uint64
		h, ok = uint()
		ev.Heartbeat = int(h)
	case "features":
		ev.Features, ok = stringArray(b[v.start:v.end])
	case "member":
		var m Member
		if m, ok = decodeMember(b[v.start:v.end]); ok {
			ev.Member = &m
		}
	case "members":
		ev.Members, ok = decodeMembers(b[v.start:v.end])
	case "count":
		var n uint64
		n, ok = uint()
		ev.Count, ev.HasCount = int(n), true
	default:
		return "" // a member of a later version
	}
	if !ok {
		return "member " + quoteName(name) + " has the wrong type or is out of range"
	}
	return ""
}

// spanString returns the string value v of b, unescaped; false when v is
// not a string or holds a lone surrogate.
func spanString(b []byte, v span) (string, bool) {
	if v.kind != kString {
		return "", false
	}
	raw := b[v.start+1 : v.end-1]
	if !v.esc {
		return string(raw), true
	}
	out, ok := unescape(nil, raw)
	return string(out), ok
}

// pair decodes [a,b] of two integers.
func pair(b []byte) (*[2]uint64, bool) {
	s := scanner{b: b}
	var out [2]uint64
	if s.b[0] != '[' {
		return nil, false
	}
	s.i = 1
	for k := range 2 {
		s.ws()
		v := span{start: s.i}
		if s.i >= len(b) || !s.scalar() {
			return nil, false
		}
		v.end, v.kind = s.i, kindOf(b[v.start])
		n, ok := parseInt0(b, v)
		if !ok {
			return nil, false
		}
		out[k] = n
		s.ws()
		if k == 0 {
			if s.i >= len(b) || b[s.i] != ',' {
				return nil, false
			}
			s.i++
		}
	}
	return &out, s.i == len(b)-1 && b[s.i] == ']'
}

// stringArray decodes an array of strings.
func stringArray(b []byte) ([]string, bool) {
	out := []string{}
	ok := walkArray(b, func(elem []byte) bool {
		if elem[0] != '"' {
			return false
		}
		raw := elem[1 : len(elem)-1]
		if bytes.IndexByte(raw, '\\') >= 0 {
			var ok bool
			if raw, ok = unescape(nil, raw); !ok {
				return false
			}
		}
		out = append(out, string(raw))
		return true
	})
	if !ok {
		return nil, false
	}
	return out, true
}

// walkArray calls fn with each element of the JSON array b (a valid JSON
// value), in order; it reports false when b is not an array or fn
// returned false.
func walkArray(b []byte, fn func(elem []byte) bool) bool {
	if b[0] != '[' {
		return false
	}
	s := scanner{b: b, i: 1}
	s.ws()
	if b[s.i] == ']' {
		return s.i == len(b)-1
	}
	for {
		start := s.i
		if !s.value() || !fn(b[start:s.i]) {
			return false
		}
		s.ws()
		switch b[s.i] {
		case ']':
			return s.i == len(b)-1
		case ',':
			s.i++
			s.ws()
		default:
			return false
		}
	}
}
