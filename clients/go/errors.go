package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// Code is a protocol error code, such as "forbidden".
type Code = subproto.Code

// The protocol's error codes.
const (
	CodeBadRequest           = subproto.CodeBadRequest
	CodeUnknownOp            = subproto.CodeUnknownOp
	CodeInvalidTopic         = subproto.CodeInvalidTopic
	CodeUnauthorized         = subproto.CodeUnauthorized
	CodeForbidden            = subproto.CodeForbidden
	CodeOffsetOutOfRange     = subproto.CodeOffsetOutOfRange
	CodeEpochMismatch        = subproto.CodeEpochMismatch
	CodeNotSubscribed        = subproto.CodeNotSubscribed
	CodeAlreadySubscribed    = subproto.CodeAlreadySubscribed
	CodeTooManySubscriptions = subproto.CodeTooManySubscriptions
	CodeMessageTooLarge      = subproto.CodeMessageTooLarge
	CodeRateLimited          = subproto.CodeRateLimited
	CodeUnavailable          = subproto.CodeUnavailable
	CodeInternal             = subproto.CodeInternal
	CodeTakenOver            = subproto.CodeTakenOver
	CodeSlow                 = subproto.CodeSlow
	CodeTopicDeleted         = subproto.CodeTopicDeleted
)

// Error is an error the broker answered (an err event, or the code of an
// unsubbed event), or one the client found before sending the command.
// errors.Is(err, ErrForbidden) holds for every *Error with that code.
type Error struct {
	Code    Code
	Message string
	// Earliest and Latest are the topic's retained range, set (HasRange)
	// for offset_out_of_range and epoch_mismatch.
	Earliest, Latest uint64
	HasRange         bool
	// Epoch is the topic's current epoch, for epoch_mismatch.
	Epoch string
}

func (e *Error) Error() string {
	s := "brokerd: " + string(e.Code)
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.HasRange {
		s += " (earliest " + strconv.FormatUint(e.Earliest, 10) + ", latest " + strconv.FormatUint(e.Latest, 10) + ")"
	}
	return s
}

// Is reports whether target is an *Error of the same code with no message
// (the sentinels), or an identical error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
}

// Sentinels for errors.Is, one per error code.
var (
	ErrBadRequest           = &Error{Code: CodeBadRequest}
	ErrUnknownOp            = &Error{Code: CodeUnknownOp}
	ErrInvalidTopic         = &Error{Code: CodeInvalidTopic}
	ErrUnauthorized         = &Error{Code: CodeUnauthorized}
	ErrForbidden            = &Error{Code: CodeForbidden}
	ErrOffsetOutOfRange     = &Error{Code: CodeOffsetOutOfRange}
	ErrEpochMismatch        = &Error{Code: CodeEpochMismatch}
	ErrNotSubscribed        = &Error{Code: CodeNotSubscribed}
	ErrAlreadySubscribed    = &Error{Code: CodeAlreadySubscribed}
	ErrTooManySubscriptions = &Error{Code: CodeTooManySubscriptions}
	ErrMessageTooLarge      = &Error{Code: CodeMessageTooLarge}
	ErrRateLimited          = &Error{Code: CodeRateLimited}
	ErrUnavailable          = &Error{Code: CodeUnavailable}
	ErrInternal             = &Error{Code: CodeInternal}
	ErrTakenOver            = &Error{Code: CodeTakenOver}
	ErrSlow                 = &Error{Code: CodeSlow}
	ErrTopicDeleted         = &Error{Code: CodeTopicDeleted}
)

// ErrClosed is returned by every call after Close. It wraps net.ErrClosed.
var ErrClosed = fmt.Errorf("client: %w", net.ErrClosed)

// CloseError describes a connection the broker closed: the WebSocket close
// code and the close reason, whose JSON form carries a reason word, a
// message and, for 1001, 1013 and 4029, retry_after_ms.
type CloseError struct {
	Code       int
	Reason     string        // the reason word ("going_away"), or the raw reason when it is not JSON
	Message    string        // for humans, may be empty
	RetryAfter time.Duration // 0 when the broker gave none
}

func (e *CloseError) Error() string {
	s := "brokerd: connection closed with " + strconv.Itoa(e.Code)
	if e.Reason != "" {
		s += " " + e.Reason
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RetryAfter > 0 {
		s += " (retry after " + e.RetryAfter.String() + ")"
	}
	return s
}

// parseCloseReason fills a CloseError from a close frame.
func parseCloseReason(code int, reason []byte) *CloseError {
	ce := &CloseError{Code: code}
	var r struct {
		Reason       string `json:"reason"`
		Message      string `json:"message"`
		RetryAfterMs int64  `json:"retry_after_ms"`
	}
	if len(reason) > 0 && reason[0] == '{' && json.Unmarshal(reason, &r) == nil {
		ce.Reason, ce.Message = r.Reason, r.Message
		if r.RetryAfterMs > 0 {
			ce.RetryAfter = time.Duration(r.RetryAfterMs) * time.Millisecond
		}
	} else {
		ce.Reason = string(reason)
	}
	return ce
}

// HandshakeError is a WebSocket upgrade the server refused with an HTTP
// status (a missing subprotocol, a refused Origin, a draining server).
type HandshakeError struct {
	StatusCode int
	Body       string
	Err        error
}

func (e *HandshakeError) Error() string {
	s := "brokerd: websocket handshake failed"
	if e.StatusCode != 0 {
		s += ": HTTP " + strconv.Itoa(e.StatusCode)
	}
	if e.Body != "" {
		s += ": " + e.Body
	} else if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *HandshakeError) Unwrap() error { return e.Err }

// errNotSent marks calls that were never written to a connection.
var errNotSent = errors.New("client: not sent")
