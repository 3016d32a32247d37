package subproto

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCodes(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	seen := map[Code]bool{}
	for _, c := range Codes() {
		if !snake.MatchString(string(c.Code)) {
			t.Errorf("code %q is not snake_case", c.Code)
		}
		if seen[c.Code] {
			t.Errorf("code %q listed twice", c.Code)
		}
		seen[c.Code] = true
		if len(c.Description) < 20 || !strings.HasSuffix(c.Description, ".") {
			t.Errorf("code %q: description %q", c.Code, c.Description)
		}
		if c.Code.Description() != c.Description {
			t.Errorf("code %q: Description() disagrees with the table", c.Code)
		}
	}
	// Every constant is in the table.
	for _, c := range []Code{
		CodeBadRequest, CodeUnknownOp, CodeInvalidTopic, CodeUnauthorized, CodeForbidden,
		CodeOffsetOutOfRange, CodeEpochMismatch, CodeNotSubscribed, CodeAlreadySubscribed,
		CodeTooManySubscriptions, CodeMessageTooLarge, CodeRateLimited, CodeUnavailable,
		CodeInternal, CodeTakenOver, CodeSlow, CodeTopicDeleted, CodeNotFound, CodeTooManyTopics,
	} {
		if !seen[c] {
			t.Errorf("code %q is missing from Codes()", c)
		}
	}
	if len(seen) != 19 {
		t.Errorf("%d codes, the test knows 19", len(seen))
	}
	Codes()[0].Code = "changed"
	if Codes()[0].Code != CodeBadRequest {
		t.Errorf("Codes() exposes the table")
	}
	if Code("nope").Description() != "" {
		t.Errorf("unknown code has a description")
	}
}

func TestCloseCodes(t *testing.T) {
	want := map[CloseCode]uint16{
		CloseNormal: 1000, CloseGoingAway: 1001, CloseProtocolError: 1002, CloseUnsupported: 1003,
		CloseInvalidData: 1007, ClosePolicy: 1008, CloseTooBig: 1009, CloseInternal: 1011,
		CloseTryAgainLater: 1013, CloseUnauthorized: 4001, CloseTokenExpired: 4003,
		CloseSlowConsumer: 4008, CloseRateLimited: 4029,
	}
	names := map[string]bool{}
	for c, n := range want {
		if uint16(c) != n {
			t.Errorf("%v = %d, want %d", c, c, n)
		}
		name := c.String()
		if names[name] || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz_") != "" {
			t.Errorf("close code %d: name %q", n, name)
		}
		names[name] = true
	}
	if CloseCode(4999).String() != "4999" {
		t.Errorf("unknown close code: %q", CloseCode(4999).String())
	}
}

func TestCloseReason(t *testing.T) {
	type reason struct {
		Reason       string `json:"reason"`
		Message      string `json:"message"`
		RetryAfterMs *int   `json:"retry_after_ms"`
	}
	decode := func(t *testing.T, b []byte) reason {
		t.Helper()
		if len(b) > MaxCloseReason {
			t.Fatalf("close reason is %d bytes: %s", len(b), b)
		}
		if !utf8.Valid(b) {
			t.Fatalf("close reason is not UTF-8: %q", b)
		}
		var r reason
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("close reason %s: %v", b, err)
		}
		return r
	}
	if got := string(CloseReason(CloseGoingAway, 1234)); got != `{"reason":"going_away","retry_after_ms":1234}` {
		t.Errorf("CloseReason = %s", got)
	}
	if got := string(CloseReason(CloseTryAgainLater, 0)); got != `{"reason":"try_again_later"}` {
		t.Errorf("CloseReason = %s", got)
	}
	if got := string(AppendCloseReason(nil, "shutdown", "", 500)); got != `{"reason":"shutdown","retry_after_ms":500}` {
		t.Errorf("AppendCloseReason = %s", got)
	}
	long := strings.Repeat("é\"\x01\u2028x", 100)
	for _, tc := range []struct {
		reason, message string
		retry           int
	}{
		{"invalid_data", "invalid JSON at byte 17: unexpected 'x'", 0},
		{"going_away", long, 1 << 40},
		{long, long, 0},
		{"a", strings.Repeat("x", 200), 99},
		{"a", strings.Repeat("\x00", 200), 99},
		{"a", "\xff\xfe" + strings.Repeat("€", 100), 0},
	} {
		for cut := 0; cut <= len(tc.message); cut += 1 + cut/4 {
			b := AppendCloseReason([]byte("prefix"), tc.reason, tc.message[:cut], tc.retry)
			if string(b[:6]) != "prefix" {
				t.Fatalf("prefix lost")
			}
			r := decode(t, b[6:])
			if !strings.HasPrefix(tc.reason, r.Reason) && !utf8.ValidString(tc.reason) {
				t.Errorf("reason %q", r.Reason)
			}
			if tc.retry > 0 && (r.RetryAfterMs == nil || *r.RetryAfterMs != tc.retry) {
				t.Errorf("retry_after_ms lost: %s", b[6:])
			}
			if len(tc.reason) < 20 && utf8.ValidString(tc.message[:cut]) && !strings.HasPrefix(tc.message[:cut], r.Message) {
				t.Errorf("message %q is not a prefix of %q", r.Message, tc.message[:cut])
			}
		}
	}
}
