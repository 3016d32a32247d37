package subproto

import (
	"bytes"
	"math/bits"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// DecodeFrame decodes the commands of one text frame and passes each to fn
// in order: a decoded command as cmd (err nil), or a command that is valid
// JSON but not a valid command as err (cmd nil; the err event to send,
// with the command's id when it could be read).
//
// Commands are separated by '\n'. A line holding only JSON whitespace
// (space, tab, '\r') is skipped, so "\r\n" endings, a trailing newline and
// empty frames are fine. A command must not itself contain a raw newline:
// a pretty-printed object is invalid JSON, and so are two objects on one
// line.
//
// DecodeFrame returns an *Error with Close set, for which the connection
// must be closed, when:
//   - the frame holds more than maxCommands commands (1009, before fn is
//     called at all); maxCommands <= 0 means no limit;
//   - a line is not valid JSON or holds invalid UTF-8 (1007). The commands
//     on the lines before it have been passed to fn already.
//
// cmd is valid only during the call to fn (it is reused for the next
// line): copy *cmd to keep it. cmd.Data aliases frame. err may be kept.
func DecodeFrame(frame []byte, maxCommands int, fn func(cmd *Command, err *Error)) *Error {
	if maxCommands > 0 && bytes.Count(frame, newline) >= maxCommands {
		// Maybe too many: count the lines that are not blank.
		n := 0
		for rest := frame; len(rest) > 0; {
			line, after, _ := bytes.Cut(rest, newline)
			rest = after
			if !blank(line) {
				n++
				if n > maxCommands {
					return &Error{
						Code:    CodeMessageTooLarge,
						Message: "a frame may hold at most " + strconv.Itoa(maxCommands) + " commands",
						Close:   CloseTooBig,
					}
				}
			}
		}
	}
	d := new(decoder)
	var cmd Command
	for rest, start := frame, 0; len(rest) > 0; {
		line, after, _ := bytes.Cut(rest, newline)
		lineStart := start
		rest = after
		start += len(line) + 1
		if blank(line) {
			continue
		}
		cmd = Command{}
		if err := d.decode(line, lineStart, &cmd); err != nil {
			if err.Close != 0 {
				return err
			}
			fn(nil, err)
			continue
		}
		fn(&cmd, nil)
	}
	return nil
}

var newline = []byte{'\n'}

func blank(line []byte) bool {
	for _, c := range line {
		if c != ' ' && c != '\t' && c != '\r' {
			return false
		}
	}
	return true
}

// Decode decodes one command: a JSON object, with optional JSON whitespace
// around it (newlines included: only DecodeFrame splits on them). It
// applies the rules DecodeFrame applies to each line and returns the
// command, or an *Error: with Close == 0 for a valid JSON value that is
// not a valid command, with Close == 1007 for invalid JSON or UTF-8. The
// command's Data aliases obj.
func Decode(obj []byte) (*Command, *Error) {
	var d decoder
	cmd := new(Command)
	if err := d.decode(obj, 0, cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

// Fields of a command, in the order they are checked.
const (
	fOp = iota
	fID
	fTopic
	fData
	fKey
	fFrom
	fEpoch
	fIfGone
	fConsumer
	fMaxInflight
	fOffset
	fToken
	fLast
	fSince
	fPositions
	fPresence
	fPresenceInfo
	nFields
)

var fieldNames = [nFields]string{
	fOp:           "op",
	fID:           "id",
	fTopic:        "topic",
	fData:         "data",
	fKey:          "key",
	fFrom:         "from",
	fEpoch:        "epoch",
	fIfGone:       "if_gone",
	fConsumer:     "consumer",
	fMaxInflight:  "max_inflight",
	fOffset:       "offset",
	fToken:        "token",
	fLast:         "last",
	fSince:        "since",
	fPositions:    "positions",
	fPresence:     "presence",
	fPresenceInfo: "presence_info",
}

func fieldIndex(name []byte) int {
	switch string(name) {
	case "op":
		return fOp
	case "id":
		return fID
	case "topic":
		return fTopic
	case "data":
		return fData
	case "key":
		return fKey
	case "from":
		return fFrom
	case "epoch":
		return fEpoch
	case "if_gone":
		return fIfGone
	case "consumer":
		return fConsumer
	case "max_inflight":
		return fMaxInflight
	case "offset":
		return fOffset
	case "token":
		return fToken
	case "last":
		return fLast
	case "since":
		return fSince
	case "positions":
		return fPositions
	case "presence":
		return fPresence
	case "presence_info":
		return fPresenceInfo
	}
	return -1
}

// opSpec returns the command named b with its allowed and required fields
// (as bit sets of field indexes); op is "" for an unknown command.
func opSpec(b []byte) (op Op, allowed, required uint32) {
	const common = 1<<fOp | 1<<fID
	switch string(b) {
	case "pub":
		return OpPub, common | 1<<fTopic | 1<<fData | 1<<fKey, 1<<fTopic | 1<<fData
	case "sub":
		return OpSub, common | 1<<fTopic | 1<<fFrom | 1<<fEpoch | 1<<fIfGone | 1<<fConsumer | 1<<fMaxInflight | 1<<fLast | 1<<fSince | 1<<fPositions | 1<<fPresence | 1<<fPresenceInfo, 1 << fTopic
	case "ack":
		return OpAck, common | 1<<fTopic | 1<<fConsumer | 1<<fOffset | 1<<fEpoch, 1<<fTopic | 1<<fConsumer | 1<<fOffset
	case "ping":
		return OpPing, common, 0
	case "unsub":
		return OpUnsub, common | 1<<fTopic, 1 << fTopic
	case "auth":
		return OpAuth, common | 1<<fToken, 1 << fToken
	case "presence":
		return OpPresence, common | 1<<fTopic, 1 << fTopic
	}
	return "", 0, 0
}

// notPattern are the sub fields a pattern subscription refuses.
const notPattern = 1<<fFrom | 1<<fEpoch | 1<<fConsumer | 1<<fMaxInflight | 1<<fLast | 1<<fPresence | 1<<fPresenceInfo

// span is where a member's value lies in the object.
type span struct {
	start, end int  // the value, quotes included for a string
	kind       byte // kString, kNumber, ...
	esc        bool // a string with escapes
}

// decoder decodes one object at a time; it is reused across the lines of
// a frame.
type decoder struct {
	s      scanner
	seen   uint32 // fields present
	fields [nFields]span
	bad    string // the first unknown or duplicate member, as a message
	buf    []byte // an unescaped string
}

// decode decodes obj into cmd (which must be zero). base is where obj
// starts in its frame, for messages.
func (d *decoder) decode(obj []byte, base int, cmd *Command) *Error {
	d.s = scanner{b: obj, spill: d.s.spill[:0]}
	d.seen = 0
	d.bad = ""
	s := &d.s
	s.ws()
	if s.i < len(obj) && obj[s.i] == '{' {
		if !d.object() {
			return d.syntaxError(base)
		}
		s.ws()
		if s.i < len(obj) {
			s.unexpected(s.i, "end of input (one object per line)")
			return d.syntaxError(base)
		}
		return d.command(cmd)
	}
	if !s.value() {
		return d.syntaxError(base)
	}
	s.ws()
	if s.i < len(obj) {
		s.unexpected(s.i, "end of input")
		return d.syntaxError(base)
	}
	return badRequest(0, "a command must be a JSON object")
}

func (d *decoder) syntaxError(base int) *Error {
	return &Error{
		Code:    CodeBadRequest,
		Message: "invalid JSON at byte " + strconv.Itoa(base+d.s.pos) + ": " + d.s.err,
		Close:   CloseInvalidData,
	}
}

// object scans the command object (s.i at its '{'), recording where each
// member's value is.
func (d *decoder) object() bool {
	s := &d.s
	b := s.b
	s.i++
	s.ws()
	if s.i < len(b) && b[s.i] == '}' {
		s.i++
		return true
	}
	for {
		if s.i >= len(b) || b[s.i] != '"' {
			return s.unexpected(s.i, "a string (member name)")
		}
		nameStart := s.i
		esc, ok := s.str()
		if !ok {
			return false
		}
		name := b[nameStart+1 : s.i-1]
		if esc {
			if d.buf, ok = unescape(d.buf[:0], name); ok {
				name = d.buf
			}
		}
		f := fieldIndex(name)
		s.ws()
		if s.i >= len(b) || b[s.i] != ':' {
			return s.unexpected(s.i, "':'")
		}
		s.i++
		s.ws()
		v := span{start: s.i}
		if s.i < len(b) && b[s.i] == '"' {
			if v.esc, ok = s.str(); !ok {
				return false
			}
		} else if !s.value() {
			return false
		}
		v.end, v.kind = s.i, kindOf(b[v.start])
		switch {
		case f < 0:
			if d.bad == "" {
				d.bad = "unknown field " + quoteName(name)
			}
		case d.seen&(1<<f) != 0:
			if d.bad == "" {
				d.bad = "duplicate field " + quoteName(name)
			}
		default:
			d.seen |= 1 << f
			d.fields[f] = v
		}
		s.ws()
		if s.i >= len(b) {
			return s.unexpected(s.i, "',' or '}'")
		}
		switch b[s.i] {
		case ',':
			s.i++
			s.ws()
		case '}':
			s.i++
			return true
		default:
			return s.unexpected(s.i, "',' or '}'")
		}
	}
}

func kindOf(c byte) byte {
	if c == '-' || isDigit(c) {
		return kNumber
	}
	return c
}

// quoteName quotes a name or value for a message, cut to 32 bytes.
func quoteName(name []byte) string {
	if len(name) > 32 {
		n := 32
		for n > 0 && !utf8.RuneStart(name[n]) {
			n--
		}
		return strconv.Quote(string(name[:n])) + "…"
	}
	return strconv.Quote(string(name))
}

func badRequest(id uint64, msg string) *Error {
	return &Error{Code: CodeBadRequest, ID: id, Message: msg}
}

func (d *decoder) has(f int) bool { return d.seen&(1<<f) != 0 }

// command checks the recorded members and fills cmd. The checks run in a
// fixed order, so one command always gets the same error: op, id, unknown
// and duplicate fields, depth, fields the op does not take, missing
// fields, then each field's value.
func (d *decoder) command(cmd *Command) *Error {
	b := d.s.b
	// The id first, so that every other error echoes it.
	var id uint64
	idOK := true
	if d.has(fID) {
		id, idOK = parseInt(b, d.fields[fID])
		if !idOK {
			id = 0 // an invalid id is never echoed
		}
	}
	if !d.has(fOp) {
		return badRequest(id, `missing field "op"`)
	}
	opRaw, err := d.rawStr(fOp, id)
	if err != nil {
		return err
	}
	op, allowed, required := opSpec(opRaw)
	if op == "" {
		msg := "unknown op " + quoteName(opRaw)
		if Op(opRaw).IsEvent() {
			msg += " (an event, not a command)"
		}
		return &Error{Code: CodeUnknownOp, ID: id, Message: msg + "; the commands are auth, sub, unsub, pub, ack, ping and presence"}
	}
	if !idOK {
		return badRequest(0, `field "id" must be an integer from 1 to `+strconv.Itoa(MaxInteger))
	}
	if d.bad != "" {
		return badRequest(id, d.bad)
	}
	if d.s.deep {
		return badRequest(id, "a value nests deeper than "+strconv.Itoa(MaxDepth)+" levels")
	}
	if extra := d.seen &^ allowed; extra != 0 {
		return badRequest(id, "field "+strconv.Quote(fieldNames[lowest(extra)])+" is not allowed in "+strconv.Quote(string(op)))
	}
	if missing := required &^ d.seen; missing != 0 {
		return badRequest(id, "missing field "+strconv.Quote(fieldNames[lowest(missing)])+" in "+strconv.Quote(string(op)))
	}
	cmd.Op = op
	cmd.ID = id
	switch op {
	case OpPub:
		if err := d.topic(cmd, id, false); err != nil {
			return err
		}
		f := d.fields[fData]
		cmd.Data = b[f.start:f.end:f.end]
		if d.has(fKey) {
			raw, err := d.rawStr(fKey, id)
			if err != nil {
				return err
			}
			if !validKey(raw) {
				return badRequest(id, `field "key" must be 1 to `+strconv.Itoa(MaxKeyLen)+` bytes of visible ASCII (0x21-0x7E)`)
			}
			cmd.Key = string(raw)
		}
	case OpSub:
		return d.sub(cmd, id)
	case OpUnsub:
		return d.topic(cmd, id, true)
	case OpPresence:
		return d.topic(cmd, id, false)
	case OpAck:
		if err := d.topic(cmd, id, false); err != nil {
			return err
		}
		if err := d.consumer(cmd, id); err != nil {
			return err
		}
		var ok bool
		if cmd.Offset, ok = parseInt(b, d.fields[fOffset]); !ok {
			return badRequest(id, `field "offset" must be an integer from 1 to `+strconv.Itoa(MaxInteger))
		}
		if d.has(fEpoch) {
			if err := d.epoch(cmd, id); err != nil {
				return err
			}
		}
	case OpAuth:
		raw, err := d.rawStr(fToken, id)
		if err != nil {
			return err
		}
		if len(raw) == 0 {
			return badRequest(id, `field "token" must not be empty`)
		}
		cmd.Token = string(raw)
	}
	return nil
}

// sub checks the fields of a sub.
func (d *decoder) sub(cmd *Command, id uint64) *Error {
	b := d.s.b
	if err := d.topic(cmd, id, true); err != nil {
		return err
	}
	if cmd.Pattern {
		if extra := d.seen & notPattern; extra != 0 {
			return badRequest(id, "field "+strconv.Quote(fieldNames[lowest(extra)])+` is not allowed with a pattern (a pattern takes "since", "positions" and "if_gone")`)
		}
		if d.has(fSince) {
			if err := d.since(cmd, id); err != nil {
				return err
			}
		}
		if d.has(fIfGone) {
			if err := d.ifGone(cmd, id); err != nil {
				return err
			}
		}
		if d.has(fPositions) {
			return d.positions(cmd, id)
		}
		return nil
	}
	if d.has(fPositions) {
		return badRequest(id, `field "positions" is allowed only with a pattern`)
	}
	if d.has(fFrom) {
		switch f := d.fields[fFrom]; f.kind {
		case kNumber:
			if v, ok := parseInt(b, f); ok {
				cmd.From = From{Kind: FromOffset, Offset: v}
			}
		case kString:
			raw, _ := d.rawStr(fFrom, id)
			switch string(raw) {
			case "earliest":
				cmd.From.Kind = FromEarliest
			case "latest":
				cmd.From.Kind = FromLatest
			}
		}
		if cmd.From.Kind == FromDefault {
			return badRequest(id, `field "from" must be an offset from 1 to `+strconv.Itoa(MaxInteger)+`, "earliest" or "latest"`)
		}
	}
	if d.has(fLast) {
		v, ok := parseInt(b, d.fields[fLast])
		if !ok || v > MaxLast {
			return badRequest(id, `field "last" must be an integer from 1 to `+strconv.Itoa(MaxLast))
		}
		cmd.Last = int(v)
	}
	if d.has(fSince) {
		if err := d.since(cmd, id); err != nil {
			return err
		}
	}
	if n := d.seen & (1<<fFrom | 1<<fLast | 1<<fSince); n&(n-1) != 0 {
		return badRequest(id, `fields "from", "last" and "since" exclude each other: give at most one`)
	}
	if d.has(fEpoch) {
		if err := d.epoch(cmd, id); err != nil {
			return err
		}
	}
	if d.has(fIfGone) {
		if err := d.ifGone(cmd, id); err != nil {
			return err
		}
	}
	if d.has(fConsumer) {
		if err := d.consumer(cmd, id); err != nil {
			return err
		}
	}
	if d.has(fMaxInflight) {
		v, ok := parseInt(b, d.fields[fMaxInflight])
		if !ok || v > MaxInflightLimit {
			return badRequest(id, `field "max_inflight" must be an integer from 1 to `+strconv.Itoa(MaxInflightLimit))
		}
		if cmd.Consumer == "" {
			return badRequest(id, `field "max_inflight" needs a "consumer"`)
		}
		cmd.MaxInflight = int(v)
	}
	return d.presence(cmd, id)
}

// presence checks presence and presence_info of a sub of a topic.
func (d *decoder) presence(cmd *Command, id uint64) *Error {
	if d.has(fPresence) {
		switch f := d.fields[fPresence]; f.kind {
		case kTrue:
			cmd.Presence = true
		case kFalse:
		default:
			return badRequest(id, `field "presence" must be true or false`)
		}
	}
	if !d.has(fPresenceInfo) {
		return nil
	}
	if !cmd.Presence {
		return badRequest(id, `field "presence_info" needs "presence": true`)
	}
	f := d.fields[fPresenceInfo]
	if f.end-f.start > MaxPresenceInfo {
		return badRequest(id, `field "presence_info" is `+strconv.Itoa(f.end-f.start)+` bytes, the limit is `+strconv.Itoa(MaxPresenceInfo))
	}
	cmd.PresenceInfo = d.s.b[f.start:f.end:f.end]
	return nil
}

func (d *decoder) since(cmd *Command, id uint64) *Error {
	v, ok := parseInt0(d.s.b, d.fields[fSince])
	if !ok {
		return badRequest(id, `field "since" must be an integer from 0 to `+strconv.Itoa(MaxInteger)+` (milliseconds since the Unix epoch)`)
	}
	cmd.Since, cmd.HasSince = int64(v), true
	return nil
}

func (d *decoder) ifGone(cmd *Command, id uint64) *Error {
	raw, _ := d.rawStr(fIfGone, id)
	if string(raw) != "earliest" || d.fields[fIfGone].kind != kString {
		return badRequest(id, `field "if_gone" must be "earliest"`)
	}
	cmd.IfGone = "earliest"
	return nil
}

func (d *decoder) epoch(cmd *Command, id uint64) *Error {
	raw, err := d.rawStr(fEpoch, id)
	if err != nil {
		return err
	}
	if len(raw) == 0 || len(raw) > MaxEpochLen {
		return badRequest(id, `field "epoch" must be 1 to `+strconv.Itoa(MaxEpochLen)+` bytes (omit it to accept any epoch)`)
	}
	cmd.Epoch = string(raw)
	return nil
}

// topic checks the topic field; pattern says whether a pattern is allowed.
func (d *decoder) topic(cmd *Command, id uint64, pattern bool) *Error {
	f := d.fields[fTopic]
	if f.kind != kString {
		return badRequest(id, `field "topic" must be a string`)
	}
	raw := d.s.b[f.start+1 : f.end-1]
	if f.esc {
		var ok bool
		if d.buf, ok = unescape(d.buf[:0], raw); !ok {
			return &Error{Code: CodeInvalidTopic, ID: id, Message: `field "topic" holds a \u escape of a lone surrogate`}
		}
		raw = d.buf
	}
	if problem := topicProblem(raw, pattern); problem != "" {
		if !pattern && topicProblem(raw, true) == "" {
			problem = "a pattern, allowed only in sub and unsub"
		}
		return &Error{Code: CodeInvalidTopic, ID: id, Message: `field "topic": ` + problem}
	}
	cmd.Topic = string(raw)
	cmd.Pattern = pattern && IsPattern(cmd.Topic)
	return nil
}

func (d *decoder) consumer(cmd *Command, id uint64) *Error {
	raw, err := d.rawStr(fConsumer, id)
	if err != nil {
		return err
	}
	if !validConsumer(raw) {
		return badRequest(id, `field "consumer" must be 1 to `+strconv.Itoa(MaxConsumerLen)+` bytes of A-Z a-z 0-9 _ . -`)
	}
	cmd.Consumer = string(raw)
	return nil
}

// rawStr returns the content of string field f with its escapes decoded.
// The result aliases the object or d.buf: it is valid until the next call.
func (d *decoder) rawStr(f int, id uint64) ([]byte, *Error) {
	v := d.fields[f]
	if v.kind != kString {
		return nil, badRequest(id, "field "+strconv.Quote(fieldNames[f])+" must be a string")
	}
	raw := d.s.b[v.start+1 : v.end-1]
	if !v.esc {
		return raw, nil
	}
	var ok bool
	if d.buf, ok = unescape(d.buf[:0], raw); !ok {
		return nil, badRequest(id, "field "+strconv.Quote(fieldNames[f])+` holds a \u escape of a lone surrogate`)
	}
	return d.buf, nil
}

// ValidKey reports whether k is a valid idempotency key: 1 to MaxKeyLen
// bytes of visible ASCII (0x21 to 0x7E). The HTTP Idempotency-Key header
// follows the same rule.
func ValidKey(k string) bool { return validKey(k) }

// ValidConsumer reports whether c is a valid durable consumer name: 1 to
// MaxConsumerLen bytes of [A-Za-z0-9_.-].
func ValidConsumer(c string) bool { return validConsumer(c) }

func validKey[T string | []byte](k T) bool {
	if len(k) == 0 || len(k) > MaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

func validConsumer[T string | []byte](c T) bool {
	if len(c) == 0 || len(c) > MaxConsumerLen {
		return false
	}
	for i := 0; i < len(c); i++ {
		if !tokenChar[c[i]] && c[i] != '.' {
			return false
		}
	}
	return true
}

func lowest(set uint32) int { return bits.TrailingZeros32(set) }

// parseInt parses an integer from 1 to MaxInteger: digits only, no sign,
// fraction or exponent.
func parseInt(b []byte, f span) (uint64, bool) {
	if f.kind != kNumber {
		return 0, false
	}
	digits := b[f.start:f.end]
	if len(digits) == 0 || len(digits) > 16 || digits[0] == '0' {
		return 0, false
	}
	var v uint64
	for _, c := range digits {
		if !isDigit(c) {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, v <= MaxInteger
}

// parseInt0 is parseInt that also accepts 0.
func parseInt0(b []byte, f span) (uint64, bool) {
	if f.kind == kNumber && f.end == f.start+1 && b[f.start] == '0' {
		return 0, true
	}
	return parseInt(b, f)
}

// unescape appends the content of a valid JSON string (without its quotes)
// to dst with the escapes decoded. It fails on a \u escape of a lone
// surrogate, which has no UTF-8 form.
func unescape(dst, s []byte) ([]byte, bool) {
	for i := 0; i < len(s); {
		if s[i] != '\\' {
			j := bytes.IndexByte(s[i:], '\\')
			if j < 0 {
				return append(dst, s[i:]...), true
			}
			dst = append(dst, s[i:i+j]...)
			i += j
			continue
		}
		e := s[i+1]
		if e != 'u' {
			dst = append(dst, unescapeByte[e])
			i += 2
			continue
		}
		r := hex4(s[i+2 : i+6])
		i += 6
		if utf16.IsSurrogate(r) {
			if r >= 0xdc00 || i+6 > len(s) || s[i] != '\\' || s[i+1] != 'u' {
				return dst, false
			}
			if r = utf16.DecodeRune(r, hex4(s[i+2:i+6])); r == utf8.RuneError {
				return dst, false
			}
			i += 6
		}
		dst = utf8.AppendRune(dst, r)
	}
	return dst, true
}

var unescapeByte = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

func hex4(h []byte) rune {
	var r rune
	for _, c := range h {
		r <<= 4
		switch {
		case c <= '9':
			r |= rune(c - '0')
		case c >= 'a':
			r |= rune(c - 'a' + 10)
		default:
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}
