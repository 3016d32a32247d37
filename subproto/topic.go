package subproto

import (
	"strconv"
	"strings"
)

// tokenChar reports the bytes allowed in a topic segment: [A-Za-z0-9_-].
var tokenChar = [256]bool{}

func init() {
	for c := 'a'; c <= 'z'; c++ {
		tokenChar[c] = true
		tokenChar[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		tokenChar[c] = true
	}
	tokenChar['_'] = true
	tokenChar['-'] = true
}

// ValidTopic reports whether s is a topic name: 1 to MaxTopicLen bytes of
// non-empty [A-Za-z0-9_-] segments joined by '.'.
func ValidTopic(s string) bool {
	return topicProblem(s, false) == ""
}

// ValidPattern reports whether s is a subscription pattern: a topic name in
// which a segment may also be '*' (exactly one segment) and the last segment
// may be '>' (one or more trailing segments). Every valid topic is a valid
// pattern.
func ValidPattern(s string) bool {
	return topicProblem(s, true) == ""
}

// IsPattern reports whether s contains '*' or '>', that is whether it is a
// pattern rather than a topic name when it is valid.
func IsPattern(s string) bool {
	return strings.ContainsAny(s, "*>")
}

// Match reports whether topic matches pattern. Both are assumed valid; a
// plain topic as pattern matches only itself. It is meant for tests and
// small cases: the broker keeps its own subject tree.
func Match(pattern, topic string) bool {
	for {
		pseg, prest, pmore := strings.Cut(pattern, ".")
		if pseg == ">" && !pmore {
			return topic != ""
		}
		tseg, trest, tmore := strings.Cut(topic, ".")
		if pseg != "*" && pseg != tseg {
			return false
		}
		if !pmore || !tmore {
			return pmore == tmore
		}
		pattern, topic = prest, trest
	}
}

// topicProblem returns why s is not a valid topic (or pattern, when
// pattern is true), or "" when it is valid.
func topicProblem[T string | []byte](s T, pattern bool) string {
	what := "topic"
	if pattern {
		what = "topic or pattern"
	}
	if len(s) == 0 {
		return "empty " + what
	}
	if len(s) > MaxTopicLen {
		return what + " is " + strconv.Itoa(len(s)) + " bytes, longer than " + strconv.Itoa(MaxTopicLen)
	}
	seg := 0 // start of the current segment
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			if tokenChar[s[i]] {
				continue
			}
			c := s[i]
			if c == '*' || c == '>' {
				if !pattern {
					return "'" + string(c) + "' (a pattern) where a topic name is needed"
				}
				if i != seg || (i+1 < len(s) && s[i+1] != '.') {
					return "'" + string(c) + "' must be a whole segment"
				}
				if c == '>' && i+1 != len(s) {
					return "'>' must be the last segment"
				}
				continue
			}
			return "invalid character " + quoteByte(s, i) + " at byte " + strconv.Itoa(i) + " (allowed: A-Z a-z 0-9 _ - and '.' between segments)"
		}
		if i == seg {
			return "empty segment at byte " + strconv.Itoa(i)
		}
		seg = i + 1
	}
	return ""
}

// quoteByte quotes the character of s at byte i for an error message.
func quoteByte[T string | []byte](s T, i int) string {
	r := []rune(string(s[i:min(len(s), i+4)]))
	if len(r) == 0 {
		return "?"
	}
	return strconv.QuoteRune(r[0])
}
