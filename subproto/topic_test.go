package subproto

import (
	"strings"
	"testing"
)

func TestValidTopicAndPattern(t *testing.T) {
	seg := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		s              string
		topic, pattern bool
	}{
		{"a", true, true},
		{"a.b.c", true, true},
		{"AZ.az.09._-", true, true},
		{"-", true, true},
		{"_._", true, true},
		{seg(255), true, true},
		{seg(256), false, false},
		{seg(127) + "." + seg(127), true, true},
		{seg(128) + "." + seg(127), false, false},
		{seg(253) + ".>", false, true},
		{seg(254) + ".>", false, false},
		{"", false, false},
		{".", false, false},
		{".a", false, false},
		{"a.", false, false},
		{"a..b", false, false},
		{"a b", false, false},
		{"a/b", false, false},
		{"a:b", false, false},
		{"café", false, false},
		{"a\x00", false, false},
		{"a\xff", false, false},
		{"*", false, true},
		{">", false, true},
		{"a.*", false, true},
		{"*.a", false, true},
		{"*.*.*", false, true},
		{"a.>", false, true},
		{"*.>", false, true},
		{"a.*.>", false, true},
		{"a.>.b", false, false},
		{">.a", false, false},
		{">.>", false, false},
		{"a*", false, false},
		{"*a", false, false},
		{"a.b*", false, false},
		{"**", false, false},
		{"a>", false, false},
		{">a", false, false},
		{"a.>>", false, false},
		{"a.*.", false, false},
		{"a.>.", false, false},
		{".>", false, false},
	}
	for _, tt := range tests {
		if got := ValidTopic(tt.s); got != tt.topic {
			t.Errorf("ValidTopic(%q) = %v, want %v (%s)", tt.s, got, tt.topic, topicProblem(tt.s, false))
		}
		if got := ValidPattern(tt.s); got != tt.pattern {
			t.Errorf("ValidPattern(%q) = %v, want %v (%s)", tt.s, got, tt.pattern, topicProblem(tt.s, true))
		}
		if tt.pattern && IsPattern(tt.s) == tt.topic {
			t.Errorf("IsPattern(%q) = %v for a valid pattern, want %v", tt.s, IsPattern(tt.s), !tt.topic)
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, topic string
		want           bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "a.b", false},
		{"a.b", "a", false},
		{"a.b", "a.b", true},
		{"a.b", "a.bc", false},
		{"ab", "a", false},
		{"*", "a", true},
		{"*", "a.b", false},
		{"a.*", "a.b", true},
		{"a.*", "a", false},
		{"a.*", "a.b.c", false},
		{"*.b", "a.b", true},
		{"*.b", "a.c", false},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.b.d", false},
		{"*.*", "a.b", true},
		{">", "a", true},
		{">", "a.b.c", true},
		{"a.>", "a", false},
		{"a.>", "a.b", true},
		{"a.>", "a.b.c", true},
		{"a.>", "b.c", false},
		{"a.>", "ab.c", false},
		{"*.>", "a", false},
		{"*.>", "a.b", true},
		{"a.*.>", "a.b.c.d", true},
		{"a.*.>", "a.b", false},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.topic); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.topic, got, tt.want)
		}
	}
}

func TestValidKeyAndConsumer(t *testing.T) {
	for _, tt := range []struct {
		s             string
		key, consumer bool
	}{
		{"a", true, true},
		{"order-42.v1_x", true, true},
		{strings.Repeat("k", 255), true, true},
		{strings.Repeat("k", 256), false, false},
		{"", false, false},
		{"a:b/c?d=e~!", true, false},
		{"a b", false, false},
		{"é", false, false},
		{"a\x00", false, false},
		{"a\x7f", false, false},
		{"a*", true, false},
	} {
		if got := ValidKey(tt.s); got != tt.key {
			t.Errorf("ValidKey(%q) = %v", tt.s, got)
		}
		if got := ValidConsumer(tt.s); got != tt.consumer {
			t.Errorf("ValidConsumer(%q) = %v", tt.s, got)
		}
	}
}
