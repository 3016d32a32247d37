package subproto

import (
	"strconv"
	"unicode/utf8"
)

// The encoders append one event (or command) as a JSON object to dst and
// return the extended slice; they allocate only to grow dst. Strings are
// escaped as JSON strings (invalid UTF-8 becomes U+FFFD; U+2028 and U+2029
// are escaped too), data is spliced in untouched: it must be valid JSON,
// as Command.Data is. Nothing is appended after the object: join several
// with '\n' to send them in one frame.

// AppendMsg appends a msg event:
//
//	{"op":"msg","topic":"a.b","sub":"a.*","offset":5,"ts":1700000000000,"data":{"x":1}}
//
// sub is the pattern of a pattern subscription; "" omits it. ts is in
// milliseconds since the Unix epoch. Empty data is written as null.
func AppendMsg(dst []byte, topic string, offset uint64, ts int64, data []byte, sub string) []byte {
	dst = append(dst, `{"op":"msg","topic":`...)
	dst = appendString(dst, topic)
	if sub != "" {
		dst = append(dst, `,"sub":`...)
		dst = appendString(dst, sub)
	}
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, offset, 10)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, `,"data":`...)
	if len(data) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, data...)
	}
	return append(dst, '}')
}

// AppendWelcome appends the welcome event:
//
//	{"op":"welcome","session":"…","node":"n1","version":"1.0.0","heartbeat":25,"features":["last","since"]}
//
// features is omitted when nil (a v1.0 welcome).
func AppendWelcome(dst []byte, session, node, version string, heartbeatSec int, features []string) []byte {
	dst = append(dst, `{"op":"welcome","session":`...)
	dst = appendString(dst, session)
	dst = append(dst, `,"node":`...)
	dst = appendString(dst, node)
	dst = append(dst, `,"version":`...)
	dst = appendString(dst, version)
	dst = append(dst, `,"heartbeat":`...)
	dst = strconv.AppendInt(dst, int64(heartbeatSec), 10)
	if features != nil {
		dst = append(dst, `,"features":[`...)
		for i, f := range features {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, f)
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// Topic is a pattern subscription's topic event (v1.1). Without Code it
// announces the first delivery of a topic:
//
//	{"op":"topic","sub":"chat.>","topic":"chat.a","epoch":"e7","from":12,"missed":[3,11]}
//
// (missed only when not nil). With Code (epoch_mismatch or
// offset_out_of_range) it says why the topic is not delivered (or, for a
// reset, that its new epoch follows):
//
//	{"op":"topic","sub":"chat.>","topic":"chat.a","code":"epoch_mismatch","epoch":"e8","earliest":1,"latest":4}
type Topic struct {
	Sub    string // the pattern
	Topic  string
	Epoch  string
	From   uint64
	Missed *[2]uint64
	Code   Code
	// Earliest and Latest, with Code: the topic's retained range.
	Earliest, Latest uint64
}

// AppendTopic appends the topic event e.
func AppendTopic(dst []byte, e *Topic) []byte {
	dst = append(dst, `{"op":"topic","sub":`...)
	dst = appendString(dst, e.Sub)
	dst = append(dst, `,"topic":`...)
	dst = appendString(dst, e.Topic)
	if e.Code != "" {
		dst = append(dst, `,"code":`...)
		dst = appendString(dst, string(e.Code))
		dst = append(dst, `,"epoch":`...)
		dst = appendString(dst, e.Epoch)
		dst = append(dst, `,"earliest":`...)
		dst = strconv.AppendUint(dst, e.Earliest, 10)
		dst = append(dst, `,"latest":`...)
		dst = strconv.AppendUint(dst, e.Latest, 10)
		return append(dst, '}')
	}
	dst = append(dst, `,"epoch":`...)
	dst = appendString(dst, e.Epoch)
	dst = append(dst, `,"from":`...)
	dst = strconv.AppendUint(dst, e.From, 10)
	if e.Missed != nil {
		dst = append(dst, `,"missed":[`...)
		dst = strconv.AppendUint(dst, e.Missed[0], 10)
		dst = append(dst, ',')
		dst = strconv.AppendUint(dst, e.Missed[1], 10)
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// AppendPong appends {"op":"pong","id":N}, or {"op":"pong"} when id is 0.
func AppendPong(dst []byte, id uint64) []byte {
	dst = append(dst, `{"op":"pong"`...)
	dst = appendID(dst, id)
	return append(dst, '}')
}

// AppendErr appends an err event for e, with the context ctx (nil for
// none):
//
//	{"op":"err","id":3,"code":"offset_out_of_range","message":"…","earliest":10,"latest":42,"epoch":"e7"}
//
// id is omitted when e.ID is 0. An empty e.Message is replaced by the
// code's description, so that every err has a message. e.Close is not
// sent: an error that closes the connection goes in the close reason.
func AppendErr(dst []byte, e *Error, ctx *ErrContext) []byte {
	dst = append(dst, `{"op":"err"`...)
	dst = appendID(dst, e.ID)
	dst = append(dst, `,"code":`...)
	dst = appendString(dst, string(e.Code))
	dst = append(dst, `,"message":`...)
	msg := e.Message
	if msg == "" {
		msg = e.Code.Description()
	}
	dst = appendString(dst, msg)
	if ctx != nil {
		if ctx.HasRange {
			dst = append(dst, `,"earliest":`...)
			dst = strconv.AppendUint(dst, ctx.Earliest, 10)
			dst = append(dst, `,"latest":`...)
			dst = strconv.AppendUint(dst, ctx.Latest, 10)
		}
		if ctx.Epoch != "" {
			dst = append(dst, `,"epoch":`...)
			dst = appendString(dst, ctx.Epoch)
		}
		if ctx.RetryAfterMs > 0 {
			dst = append(dst, `,"retry_after_ms":`...)
			dst = strconv.AppendInt(dst, int64(ctx.RetryAfterMs), 10)
		}
	}
	return append(dst, '}')
}

// AppendUnsubbed appends an unsubbed event: the server ended the
// subscription to topic (a topic or pattern) for the reason code
// (forbidden, taken_over, slow, topic_deleted, ...).
//
//	{"op":"unsubbed","topic":"a.b","code":"taken_over"}
func AppendUnsubbed(dst []byte, topic string, code Code) []byte {
	dst = append(dst, `{"op":"unsubbed","topic":`...)
	dst = appendString(dst, topic)
	dst = append(dst, `,"code":`...)
	dst = appendString(dst, string(code))
	return append(dst, '}')
}

// OK is the success reply to a command with an id. Which fields are sent
// depends on Pub, Sub and Presence:
//
//	pub:   {"op":"ok","id":1,"topic":"t","offset":5}  (+ "dup":true)
//	sub:   {"op":"ok","id":1,"topic":"t","epoch":"e1","head":7,"from":8}  (+ "missed":[3,5])
//	presence: {"op":"ok","id":1,"topic":"t","members":[{"session":"…","node":"n1"}],"count":1}
//	other: {"op":"ok","id":1}  (+ "topic" when Topic is set, as for a pattern sub)
type OK struct {
	ID    uint64 // omitted when 0
	Topic string // omitted when ""

	// Pub marks the ok of a pub: Offset is sent, and Dup when true.
	Pub    bool
	Offset uint64 // the offset the message was stored at
	Dup    bool   // the key was seen: Offset is the first message's

	// Sub marks the ok of a sub of a topic: Epoch, Head and From are sent,
	// and Missed when not nil.
	Sub    bool
	Epoch  string     // the topic's epoch
	Head   uint64     // the last stored offset, 0 for an empty log
	From   uint64     // the first offset this subscription delivers
	Missed *[2]uint64 // the hole [first, last] skipped by if_gone

	// Presence marks the ok of a presence command: Members and Count are
	// sent.
	Presence bool
	Members  []Member
	Count    int
}

// AppendOK appends the ok reply described by ok.
func AppendOK(dst []byte, ok *OK) []byte {
	dst = append(dst, `{"op":"ok"`...)
	dst = appendID(dst, ok.ID)
	if ok.Topic != "" {
		dst = append(dst, `,"topic":`...)
		dst = appendString(dst, ok.Topic)
	}
	if ok.Pub {
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendUint(dst, ok.Offset, 10)
		if ok.Dup {
			dst = append(dst, `,"dup":true`...)
		}
	}
	if ok.Sub {
		dst = append(dst, `,"epoch":`...)
		dst = appendString(dst, ok.Epoch)
		dst = append(dst, `,"head":`...)
		dst = strconv.AppendUint(dst, ok.Head, 10)
		dst = append(dst, `,"from":`...)
		dst = strconv.AppendUint(dst, ok.From, 10)
		if ok.Missed != nil {
			dst = append(dst, `,"missed":[`...)
			dst = strconv.AppendUint(dst, ok.Missed[0], 10)
			dst = append(dst, ',')
			dst = strconv.AppendUint(dst, ok.Missed[1], 10)
			dst = append(dst, ']')
		}
	}
	if ok.Presence {
		dst = AppendMembers(append(dst, `,"members":`...), ok.Members)
		dst = append(dst, `,"count":`...)
		dst = strconv.AppendInt(dst, int64(ok.Count), 10)
	}
	return append(dst, '}')
}

// AppendCommand appends cmd in its wire form, for clients. Only the fields
// of cmd.Op are written, in a fixed order, zero fields omitted (Data is
// always written for a pub; empty Data as null). A valid Command encodes
// to an object [Decode] turns back into the same Command.
func AppendCommand(dst []byte, cmd *Command) []byte {
	dst = append(dst, `{"op":`...)
	dst = appendString(dst, string(cmd.Op))
	dst = appendID(dst, cmd.ID)
	switch cmd.Op {
	case OpAuth:
		dst = append(dst, `,"token":`...)
		dst = appendString(dst, cmd.Token)
	case OpSub, OpUnsub, OpPub, OpAck, OpPresence:
		dst = append(dst, `,"topic":`...)
		dst = appendString(dst, cmd.Topic)
	}
	switch cmd.Op {
	case OpSub:
		switch cmd.From.Kind {
		case FromLatest, FromEarliest:
			dst = append(dst, `,"from":"`...)
			dst = append(dst, cmd.From.Kind.String()...)
			dst = append(dst, '"')
		case FromOffset:
			dst = append(dst, `,"from":`...)
			dst = strconv.AppendUint(dst, cmd.From.Offset, 10)
		}
		dst = appendOptString(dst, `,"epoch":`, cmd.Epoch)
		dst = appendOptString(dst, `,"if_gone":`, cmd.IfGone)
		dst = appendOptString(dst, `,"consumer":`, cmd.Consumer)
		if cmd.MaxInflight != 0 {
			dst = append(dst, `,"max_inflight":`...)
			dst = strconv.AppendInt(dst, int64(cmd.MaxInflight), 10)
		}
		if cmd.Last != 0 {
			dst = append(dst, `,"last":`...)
			dst = strconv.AppendInt(dst, int64(cmd.Last), 10)
		}
		if cmd.HasSince {
			dst = append(dst, `,"since":`...)
			dst = strconv.AppendInt(dst, cmd.Since, 10)
		}
		if cmd.Positions != nil {
			dst = append(dst, `,"positions":{`...)
			for i, p := range cmd.Positions {
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = appendString(dst, p.Topic)
				dst = append(dst, `:{"from":`...)
				dst = strconv.AppendUint(dst, p.From, 10)
				dst = appendOptString(dst, `,"epoch":`, p.Epoch)
				dst = append(dst, '}')
			}
			dst = append(dst, '}')
		}
		if cmd.Presence {
			dst = append(dst, `,"presence":true`...)
			if len(cmd.PresenceInfo) > 0 {
				dst = append(dst, `,"presence_info":`...)
				dst = append(dst, cmd.PresenceInfo...)
			}
		}
	case OpPub:
		dst = appendOptString(dst, `,"key":`, cmd.Key)
		dst = append(dst, `,"data":`...)
		if len(cmd.Data) == 0 {
			dst = append(dst, "null"...)
		} else {
			dst = append(dst, cmd.Data...)
		}
	case OpAck:
		dst = appendOptString(dst, `,"consumer":`, cmd.Consumer)
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendUint(dst, cmd.Offset, 10)
		dst = appendOptString(dst, `,"epoch":`, cmd.Epoch)
	}
	return append(dst, '}')
}

func appendOptString(dst []byte, name, s string) []byte {
	if s == "" {
		return dst
	}
	dst = append(dst, name...)
	return appendString(dst, s)
}

func appendID(dst []byte, id uint64) []byte {
	if id == 0 {
		return dst
	}
	dst = append(dst, `,"id":`...)
	return strconv.AppendUint(dst, id, 10)
}

// appendString appends s as a JSON string.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if !strPlain[s[i]] {
			dst, _ = appendStringMax(dst, s, -1)
			return dst
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// appendStringMax appends s as a JSON string whose content (between the
// quotes) is at most max bytes, or unbounded when max < 0; it cuts s at a
// character boundary. It returns the length of the content.
func appendStringMax(dst []byte, s string, max int) ([]byte, int) {
	dst = append(dst, '"')
	begin := len(dst)
	limit := func(n int) bool { return max >= 0 && len(dst)-begin+n > max }
	start := 0 // s[start:i] is plain and not yet appended
	for i := 0; i < len(s); {
		c := s[i]
		if strPlain[c] {
			i++
			continue
		}
		var esc string
		var size int
		switch {
		case c == '"':
			esc, size = `\"`, 1
		case c == '\\':
			esc, size = `\\`, 1
		case c == '\n':
			esc, size = `\n`, 1
		case c == '\r':
			esc, size = `\r`, 1
		case c == '\t':
			esc, size = `\t`, 1
		case c < 0x20:
			esc, size = `\u00`+hexDigits[c>>4:c>>4+1]+hexDigits[c&0xf:c&0xf+1], 1
		default:
			r, n := utf8.DecodeRuneInString(s[i:])
			switch {
			case r == utf8.RuneError && n == 1:
				esc, size = `\ufffd`, 1
			case r == '\u2028':
				esc, size = `\u2028`, n
			case r == '\u2029':
				esc, size = `\u2029`, n
			default:
				// A plain multi-byte character: keep it, unless it does
				// not fit.
				if limit(i - start + n) {
					dst = append(dst, s[start:i]...)
					return append(dst, '"'), len(dst) - begin
				}
				i += n
				continue
			}
		}
		if limit(i - start + len(esc)) {
			dst = append(dst, s[start:i]...)
			return append(dst, '"'), len(dst) - begin
		}
		dst = append(dst, s[start:i]...)
		dst = append(dst, esc...)
		i += size
		start = i
	}
	if limit(len(s) - start) {
		// Only plain ASCII is pending: cut it.
		n := max - (len(dst) - begin)
		dst = append(dst, s[start:start+n]...)
		return append(dst, '"'), len(dst) - begin
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"'), len(dst) - begin
}
