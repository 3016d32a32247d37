package subproto

import (
	"strconv"
	"unicode/utf8"
)

// This file is a validating JSON scanner: one pass, no recursion, no
// allocation unless a value nests deeper than MaxDepth. It checks the full
// grammar of RFC 8259 and the UTF-8 of strings.

// strPlain marks the bytes a JSON string holds as they are: printable
// ASCII other than '"' and '\\'.
var strPlain = [256]bool{}

func init() {
	for c := 0x20; c < 0x80; c++ {
		strPlain[c] = c != '"' && c != '\\'
	}
}

// Value kinds, by their first byte.
const (
	kString = '"'
	kNumber = '0'
	kTrue   = 't'
	kFalse  = 'f'
	kNull   = 'n'
	kObject = '{'
	kArray  = '['
)

// scanner scans JSON held in b. After a failure, err is set and the
// position of the problem is pos.
type scanner struct {
	b    []byte
	i    int
	err  string // syntax error, "" when none so far
	pos  int    // where err was found
	deep bool   // a value nested deeper than MaxDepth

	// The stack of open containers, one bit per level: 1 for an object,
	// 0 for an array. Levels past MaxDepth spill into spill.
	n     int
	stack [MaxDepth / 64]uint64
	spill []uint64
}

func (s *scanner) fail(at int, msg string) bool {
	if s.err == "" {
		s.err, s.pos = msg, at
	}
	return false
}

// unexpected records an error for the byte at i (or the end of input).
func (s *scanner) unexpected(i int, want string) bool {
	if i >= len(s.b) {
		return s.fail(i, "unexpected end of input, expected "+want)
	}
	c := s.b[i]
	var what string
	switch {
	case c >= 0x20 && c < 0x7f:
		what = "'" + string(rune(c)) + "'"
	default:
		what = "byte 0x" + strconv.FormatUint(uint64(c), 16)
	}
	return s.fail(i, "unexpected "+what+", expected "+want)
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) push(obj bool) {
	w, bit := s.n/64, uint64(1)<<(s.n%64)
	var p *uint64
	if w < len(s.stack) {
		p = &s.stack[w]
	} else {
		s.deep = true
		w -= len(s.stack)
		for len(s.spill) <= w {
			s.spill = append(s.spill, 0)
		}
		p = &s.spill[w]
	}
	if obj {
		*p |= bit
	} else {
		*p &^= bit
	}
	s.n++
}

// inObject reports whether the innermost open container is an object.
func (s *scanner) inObject() bool {
	n := s.n - 1
	w, bit := n/64, uint64(1)<<(n%64)
	if w < len(s.stack) {
		return s.stack[w]&bit != 0
	}
	return s.spill[w-len(s.stack)]&bit != 0
}

// str scans the string that starts at s.i (a '"'), leaving s.i after its
// closing quote. It reports whether the string holds escapes.
func (s *scanner) str() (esc, ok bool) {
	b := s.b
	i := s.i + 1
	for {
		for i < len(b) && strPlain[b[i]] {
			i++
		}
		if i >= len(b) {
			return esc, s.fail(s.i, "unterminated string")
		}
		switch c := b[i]; {
		case c == '"':
			s.i = i + 1
			return esc, true
		case c == '\\':
			esc = true
			if i+1 >= len(b) {
				return esc, s.fail(i, "unterminated string")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return esc, s.fail(i, `invalid \u escape in string`)
				}
				i += 6
			default:
				return esc, s.fail(i, "invalid escape in string")
			}
		case c < 0x20:
			return esc, s.fail(i, "control character in string (must be escaped)")
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return esc, s.fail(i, "invalid UTF-8 in string")
			}
			i += size
		}
	}
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// num scans the number that starts at s.i.
func (s *scanner) num() bool {
	b, i := s.b, s.i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i++
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return s.unexpected(i, "a digit")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return s.unexpected(i, "a digit after '.'")
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return s.unexpected(i, "a digit in the exponent")
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	s.i = i
	return true
}

// lit scans the literal word at s.i.
func (s *scanner) lit(word string) bool {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return s.fail(s.i, "invalid literal (expected "+word+")")
	}
	s.i += len(word)
	return true
}

// scalar scans a string, number or literal at s.i.
func (s *scanner) scalar() bool {
	if s.i >= len(s.b) {
		return s.unexpected(s.i, "a value")
	}
	switch c := s.b[s.i]; c {
	case '"':
		_, ok := s.str()
		return ok
	case 't':
		return s.lit("true")
	case 'f':
		return s.lit("false")
	case 'n':
		return s.lit("null")
	default:
		if c == '-' || isDigit(c) {
			return s.num()
		}
		return s.unexpected(s.i, "a value")
	}
}

// member scans `"name" :` inside an object (s.i at the name), leaving s.i
// after the colon.
func (s *scanner) member() bool {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return s.unexpected(s.i, "a string (member name)")
	}
	if _, ok := s.str(); !ok {
		return false
	}
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		return s.unexpected(s.i, "':'")
	}
	s.i++
	return true
}

// value scans one JSON value (s.i at its first byte, after whitespace),
// leaving s.i just after it.
func (s *scanner) value() bool {
	b := s.b
	s.n = 0
	for {
		// A value starts at s.i.
		s.ws()
		if s.i >= len(b) {
			return s.unexpected(s.i, "a value")
		}
		switch b[s.i] {
		case '{':
			s.i++
			s.push(true)
			s.ws()
			if s.i < len(b) && b[s.i] == '}' {
				s.i++
				s.n--
			} else {
				if !s.member() {
					return false
				}
				continue
			}
		case '[':
			s.i++
			s.push(false)
			s.ws()
			if s.i < len(b) && b[s.i] == ']' {
				s.i++
				s.n--
			} else {
				continue
			}
		default:
			if !s.scalar() {
				return false
			}
		}
		// A value ended: close the containers it ends.
	closing:
		for {
			if s.n == 0 {
				return true
			}
			s.ws()
			if s.i >= len(b) {
				return s.unexpected(s.i, "',' or a closing bracket")
			}
			c := b[s.i]
			if s.inObject() {
				switch c {
				case ',':
					s.i++
					s.ws()
					if !s.member() {
						return false
					}
					break closing
				case '}':
					s.i++
					s.n--
				default:
					return s.unexpected(s.i, "',' or '}'")
				}
			} else {
				switch c {
				case ',':
					s.i++
					break closing
				case ']':
					s.i++
					s.n--
				default:
					return s.unexpected(s.i, "',' or ']'")
				}
			}
		}
	}
}
