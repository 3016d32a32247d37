package subproto

// Member is one member of a topic's presence (v1.1): a subscription made
// with "presence": true.
type Member struct {
	Session string // the session (connection) id of the member's welcome
	User    string // the token's subject, "" without auth
	Node    string // the node the member is connected to
	// Info is the sub's presence_info, raw JSON as the client sent it;
	// nil when absent.
	Info []byte
}

// AppendMember appends m as a JSON object; user and info are omitted when
// empty:
//
//	{"session":"…","user":"alice","node":"n1","info":{"name":"Alice"}}
func AppendMember(dst []byte, m *Member) []byte {
	dst = append(dst, `{"session":`...)
	dst = appendString(dst, m.Session)
	dst = appendOptString(dst, `,"user":`, m.User)
	dst = append(dst, `,"node":`...)
	dst = appendString(dst, m.Node)
	if len(m.Info) > 0 {
		dst = append(dst, `,"info":`...)
		dst = append(dst, m.Info...)
	}
	return append(dst, '}')
}

// AppendMembers appends ms as a JSON array of members.
func AppendMembers(dst []byte, ms []Member) []byte {
	dst = append(dst, '[')
	for i := range ms {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendMember(dst, &ms[i])
	}
	return append(dst, ']')
}

// AppendPresence appends a join or leave event (op OpJoin or OpLeave) of
// member m of topic:
//
//	{"op":"join","topic":"room.1","member":{"session":"…","node":"n1"}}
func AppendPresence(dst []byte, op Op, topic string, m *Member) []byte {
	dst = append(dst, `{"op":`...)
	dst = appendString(dst, string(op))
	dst = append(dst, `,"topic":`...)
	dst = appendString(dst, topic)
	dst = append(dst, `,"member":`...)
	dst = AppendMember(dst, m)
	return append(dst, '}')
}

// AppendPresenceMuted appends the event that tells a member that topic
// no longer sends join and leave:
//
//	{"op":"presence_muted","topic":"room.1"}
func AppendPresenceMuted(dst []byte, topic string) []byte {
	dst = append(dst, `{"op":"presence_muted","topic":`...)
	dst = appendString(dst, topic)
	return append(dst, '}')
}

// decodeMember decodes a member object (b is a valid JSON value). Unknown
// members of the object are skipped, as in events.
func decodeMember(b []byte) (Member, bool) {
	var m Member
	if b[0] != '{' {
		return m, false
	}
	ok := walkObject(b, func(name []byte, v span) bool {
		str := func() (string, bool) { return spanString(b, v) }
		var ok bool
		switch string(name) {
		case "session":
			m.Session, ok = str()
		case "user":
			m.User, ok = str()
		case "node":
			m.Node, ok = str()
		case "info":
			m.Info, ok = b[v.start:v.end:v.end], true
		default:
			ok = true
		}
		return ok
	})
	return m, ok && m.Session != ""
}

// decodeMembers decodes an array of member objects (b is a valid JSON
// value).
func decodeMembers(b []byte) ([]Member, bool) {
	out := []Member{}
	ok := walkArray(b, func(elem []byte) bool {
		m, ok := decodeMember(elem)
		out = append(out, m)
		return ok
	})
	if !ok {
		return nil, false
	}
	return out, true
}

// walkObject calls fn for each member of the JSON object b (a valid JSON
// value starting with '{'), with the member's name unescaped and where its
// value lies; it stops and reports false as soon as fn does.
func walkObject(b []byte, fn func(name []byte, v span) bool) bool {
	s := scanner{b: b, i: 1}
	s.ws()
	if b[s.i] == '}' {
		return true
	}
	var buf []byte
	for {
		nameStart := s.i
		esc, ok := s.str()
		if !ok {
			return false
		}
		name := b[nameStart+1 : s.i-1]
		if esc {
			if buf, ok = unescape(buf[:0], name); !ok {
				return false
			}
			name = buf
		}
		s.ws()
		s.i++ // ':'
		s.ws()
		v := span{start: s.i}
		if b[s.i] == '"' {
			if v.esc, ok = s.str(); !ok {
				return false
			}
		} else if !s.value() {
			return false
		}
		v.end, v.kind = s.i, kindOf(b[v.start])
		if !fn(name, v) {
			return false
		}
		s.ws()
		if b[s.i] == '}' {
			return true
		}
		s.i++ // ','
		s.ws()
	}
}
