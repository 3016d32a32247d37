package client

import (
	"bytes"
	"encoding/json"
	"errors"
)

// event is one decoded server event. Byte slices alias the frame.
type event struct {
	op        []byte
	id        uint64
	topic     []byte
	sub       []byte
	offset    uint64
	ts        int64
	data      []byte
	dup       bool
	epoch     []byte
	head      uint64
	from      uint64
	missed    [2]uint64
	hasMissed bool
	code      []byte
	message   []byte // raw string content, escapes not decoded
	msgEsc    bool
	earliest  uint64
	latest    uint64
	hasRange  bool
	session   []byte
	node      []byte
	version   []byte
	heartbeat int64
}

var errSyntax = errors.New("client: malformed event")

// parseEvent decodes one JSON object sent by the server. It accepts the
// members in any order and ignores unknown ones, so that a newer broker
// may add fields; it does not validate what it skips beyond finding its
// end.
func parseEvent(b []byte, ev *event) error {
	*ev = event{}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errSyntax
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return errSyntax
		}
		kEnd, _, ok := scanString(b, i)
		if !ok {
			return errSyntax
		}
		key := b[i+1 : kEnd-1]
		i = skipWS(b, kEnd)
		if i >= len(b) || b[i] != ':' {
			return errSyntax
		}
		i = skipWS(b, i+1)
		vStart := i
		vEnd, esc, ok := skipValue(b, i)
		if !ok {
			return errSyntax
		}
		v := b[vStart:vEnd]
		switch string(key) {
		case "op":
			ev.op = strContent(v)
		case "id":
			ev.id, _ = parseUint(v)
		case "topic":
			ev.topic = strContent(v)
		case "sub":
			ev.sub = strContent(v)
		case "offset":
			ev.offset, _ = parseUint(v)
		case "ts":
			t, _ := parseUint(v)
			ev.ts = int64(t)
		case "data":
			ev.data = v
		case "dup":
			ev.dup = string(v) == "true"
		case "epoch":
			ev.epoch = strContent(v)
		case "head":
			ev.head, _ = parseUint(v)
		case "from":
			ev.from, _ = parseUint(v)
		case "missed":
			ev.missed, ev.hasMissed = parsePair(v)
		case "code":
			ev.code = strContent(v)
		case "message":
			ev.message, ev.msgEsc = strContent(v), esc
		case "earliest":
			ev.earliest, _ = parseUint(v)
			ev.hasRange = true
		case "latest":
			ev.latest, _ = parseUint(v)
			ev.hasRange = true
		case "session":
			ev.session = strContent(v)
		case "node":
			ev.node = strContent(v)
		case "version":
			ev.version = strContent(v)
		case "heartbeat":
			h, _ := parseUint(v)
			ev.heartbeat = int64(h)
		}
		i = skipWS(b, vEnd)
		if i >= len(b) {
			return errSyntax
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			if skipWS(b, i+1) != len(b) {
				return errSyntax
			}
			return nil
		default:
			return errSyntax
		}
	}
}

// errorOf turns an err event (or an unsubbed code) into an *Error.
func (ev *event) errorOf() *Error {
	e := &Error{Code: Code(ev.code), Epoch: string(ev.epoch), Earliest: ev.earliest, Latest: ev.latest, HasRange: ev.hasRange}
	if ev.msgEsc {
		var s string
		if json.Unmarshal(append(append([]byte{'"'}, ev.message...), '"'), &s) == nil {
			e.Message = s
		}
	} else {
		e.Message = string(ev.message)
	}
	return e
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// scanString returns the index after the string starting at b[i] == '"',
// and whether it holds escapes.
func scanString(b []byte, i int) (end int, esc, ok bool) {
	// A plain loop: the strings of events are short, and bytes.IndexAny
	// builds its byte set on every call.
	for i++; i < len(b); i++ {
		switch b[i] {
		case '"':
			return i + 1, esc, true
		case '\\':
			esc = true
			i++ // the escaped byte; \uXXXX's digits need no care
		}
	}
	return 0, false, false
}

// skipValue returns the index after the JSON value starting at b[i].
func skipValue(b []byte, i int) (end int, esc, ok bool) {
	if i >= len(b) {
		return 0, false, false
	}
	switch b[i] {
	case '"':
		return scanString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				e, _, ok := scanString(b, i)
				if !ok {
					return 0, false, false
				}
				i = e
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, false, true
				}
			}
			i++
		}
		return 0, false, false
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\r' && b[j] != '\n' {
			j++
		}
		if j == i {
			return 0, false, false
		}
		return j, false, true
	}
}

func strContent(v []byte) []byte {
	if len(v) >= 2 && v[0] == '"' {
		return v[1 : len(v)-1]
	}
	return nil
}

func parseUint(v []byte) (uint64, bool) {
	if len(v) == 0 || len(v) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

func parsePair(v []byte) ([2]uint64, bool) {
	var p [2]uint64
	if len(v) < 5 || v[0] != '[' || v[len(v)-1] != ']' {
		return p, false
	}
	a, b, ok := bytes.Cut(v[1:len(v)-1], []byte{','})
	if !ok {
		return p, false
	}
	var ok1, ok2 bool
	p[0], ok1 = parseUint(bytes.TrimSpace(a))
	p[1], ok2 = parseUint(bytes.TrimSpace(b))
	return p, ok1 && ok2
}
