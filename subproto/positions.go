package subproto

import "strconv"

// Position is where a pattern subscription resumes one topic: from the
// offset From (inclusive) of epoch Epoch ("" accepts any epoch).
type Position struct {
	Topic string
	From  uint64
	Epoch string
}

// positions decodes the positions field of a pattern sub: an object
// mapping topic names that match pattern to {"from": N, "epoch": "…"}
// (epoch optional). The value is valid JSON already (the object scan
// checked it); this checks its shape. At most MaxPositions entries.
func (d *decoder) positions(cmd *Command, id uint64) *Error {
	f := d.fields[fPositions]
	if f.kind != kObject {
		return badRequest(id, `field "positions" must be an object mapping topics to {"from":N,"epoch":"…"}`)
	}
	s := scanner{b: d.s.b[:f.end], i: f.start + 1}
	seen := make(map[string]struct{})
	bad := func(msg string) *Error { return badRequest(id, `field "positions": `+msg) }
	s.ws()
	if s.b[s.i] == '}' {
		return nil
	}
	for {
		s.ws()
		nameStart := s.i
		esc, _ := s.str()
		raw := s.b[nameStart+1 : s.i-1]
		var name []byte
		if esc {
			var ok bool
			if name, ok = unescape(nil, raw); !ok {
				return bad(`a topic holds a \u escape of a lone surrogate`)
			}
		} else {
			name = raw
		}
		if p := topicProblem(name, false); p != "" {
			return &Error{Code: CodeInvalidTopic, ID: id, Message: `field "positions": topic ` + quoteName(name) + ": " + p}
		}
		if !Match(cmd.Topic, string(name)) {
			return bad("topic " + quoteName(name) + " does not match the pattern " + strconv.Quote(cmd.Topic))
		}
		if _, dup := seen[string(name)]; dup {
			return bad("duplicate topic " + quoteName(name))
		}
		if len(seen) >= MaxPositions {
			return bad("more than " + strconv.Itoa(MaxPositions) + " topics")
		}
		seen[string(name)] = struct{}{}
		s.ws()
		s.i++ // ':'
		s.ws()
		p := Position{Topic: string(name)}
		if err := positionValue(&s, &p, id); err != nil {
			return err
		}
		cmd.Positions = append(cmd.Positions, p)
		s.ws()
		if s.b[s.i] == '}' {
			return nil
		}
		s.i++ // ','
	}
}

// positionValue decodes {"from":N,"epoch":"…"} at s.i.
func positionValue(s *scanner, p *Position, id uint64) *Error {
	const want = `each position must be {"from":N,"epoch":"…"} with N from 1 to ` + "9007199254740991" + ` and an epoch of 1 to 255 bytes`
	if s.b[s.i] != '{' {
		s.value()
		return badRequest(id, `field "positions": `+want)
	}
	s.i++
	s.ws()
	hasFrom, hasEpoch := false, false
	for s.b[s.i] != '}' {
		nameStart := s.i
		esc, _ := s.str()
		name := s.b[nameStart+1 : s.i-1]
		if esc {
			name, _ = unescape(nil, name)
		}
		s.ws()
		s.i++ // ':'
		s.ws()
		v := span{start: s.i}
		if s.b[s.i] == '"' {
			v.esc, _ = s.str()
		} else {
			s.value()
		}
		v.end, v.kind = s.i, kindOf(s.b[v.start])
		switch string(name) {
		case "from":
			off, ok := parseInt(s.b, v)
			if !ok || hasFrom {
				return badRequest(id, `field "positions": `+want)
			}
			p.From, hasFrom = off, true
		case "epoch":
			if v.kind != kString || hasEpoch {
				return badRequest(id, `field "positions": `+want)
			}
			raw := s.b[v.start+1 : v.end-1]
			if v.esc {
				var ok bool
				if raw, ok = unescape(nil, raw); !ok {
					return badRequest(id, `field "positions": `+want)
				}
			}
			if len(raw) == 0 || len(raw) > MaxEpochLen {
				return badRequest(id, `field "positions": `+want)
			}
			p.Epoch, hasEpoch = string(raw), true
		default:
			return badRequest(id, `field "positions": unknown field `+quoteName(name)+" in a position")
		}
		s.ws()
		if s.b[s.i] == ',' {
			s.i++
			s.ws()
		}
	}
	s.i++
	if !hasFrom {
		return badRequest(id, `field "positions": `+want)
	}
	return nil
}
