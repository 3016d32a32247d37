package subproto

import "strconv"

// Code is a stable snake_case error code, sent as the code of an err or
// an unsubbed event. The set of codes is the table returned by [Codes];
// a code once published keeps its meaning.
type Code string

// Error codes. Each one is described in the table behind [Codes].
const (
	CodeBadRequest           Code = "bad_request"
	CodeUnknownOp            Code = "unknown_op"
	CodeInvalidTopic         Code = "invalid_topic"
	CodeUnauthorized         Code = "unauthorized"
	CodeForbidden            Code = "forbidden"
	CodeOffsetOutOfRange     Code = "offset_out_of_range"
	CodeEpochMismatch        Code = "epoch_mismatch"
	CodeNotSubscribed        Code = "not_subscribed"
	CodeAlreadySubscribed    Code = "already_subscribed"
	CodeTooManySubscriptions Code = "too_many_subscriptions"
	CodeMessageTooLarge      Code = "message_too_large"
	CodeRateLimited          Code = "rate_limited"
	CodeUnavailable          Code = "unavailable"
	CodeInternal             Code = "internal"
	CodeTakenOver            Code = "taken_over"
	CodeSlow                 Code = "slow"
	CodeTopicDeleted         Code = "topic_deleted"
	CodeNotFound             Code = "not_found"
	CodeTooManyTopics        Code = "too_many_topics"
)

// CodeInfo describes one error code.
type CodeInfo struct {
	Code        Code
	Description string
}

// codes is the one table of error codes. api.md and the clients are
// checked against it.
var codes = [...]CodeInfo{
	{CodeBadRequest, "The command is malformed: not a JSON object, a missing, unknown, duplicate or mistyped field, or a value out of range. The message names the field."},
	{CodeUnknownOp, "The op is not a command of this protocol version."},
	{CodeInvalidTopic, "The topic is not a valid name (1-255 bytes of [A-Za-z0-9_-] segments joined by '.') or pattern, or is a pattern where pub and ack need a topic."},
	{CodeUnauthorized, "The connection is not authenticated (only auth and ping are allowed before), or the token of an auth is invalid; on a live connection the old token stays in force."},
	{CodeForbidden, "The token does not allow this pub, sub or ack. As an unsubbed code: a new token no longer allows the subscription."},
	{CodeOffsetOutOfRange, "The offset is outside the topic's log: from older than the earliest retained offset (without if_gone \"earliest\") or beyond the head, or an ack beyond the head. The err carries earliest and latest. As an unsubbed code: retention removed messages a lagging subscription had not received yet; subscribe again (with if_gone \"earliest\" to accept the hole)."},
	{CodeEpochMismatch, "The epoch of the sub (or of the consumer's acked offset) is not the topic's current epoch: its history was reset. The err carries epoch, earliest and latest. As an unsubbed code: the topic's history was reset under a live subscription; subscribe again to learn the new epoch."},
	{CodeNotSubscribed, "An unsub for a topic or pattern this connection is not subscribed to."},
	{CodeAlreadySubscribed, "A sub for a topic or pattern this connection is already subscribed to."},
	{CodeTooManySubscriptions, "The connection holds as many subscriptions as it may."},
	{CodeMessageTooLarge, "The data of a pub is larger than the broker accepts."},
	{CodeRateLimited, "The connection sends commands faster than it may; retry later."},
	{CodeUnavailable, "The broker cannot serve the command now (shutting down, storage or cluster unavailable); retry later. A pub that got it may or may not be stored: retry it with the same key."},
	{CodeInternal, "An unexpected error in the broker. As an unsubbed code: the subscription could not continue."},
	{CodeTakenOver, "Unsubbed only: a newer sub for the same durable consumer and topic took the subscription over."},
	{CodeSlow, "Unsubbed only, from servers before v1.1: a live-only pattern subscription fell too far behind and was ended. A v1.1 server feeds slow pattern subscriptions from the topic logs instead."},
	{CodeTopicDeleted, "Unsubbed only: the topic was deleted."},
	{CodeNotFound, "HTTP API only: the topic has no log."},
	{CodeTooManyTopics, "A pattern sub would replay more topics (topics it has a position for, or that hold messages at or after since) than the broker allows (--max-pattern-topics): narrow the pattern, or resume with fewer positions. Or a pub or sub would create a topic while the broker holds as many as it may (--max-topics)."},
}

// Codes returns every error code with its description, in a stable order.
// The caller owns the returned slice.
func Codes() []CodeInfo {
	return append([]CodeInfo(nil), codes[:]...)
}

// Description returns the description of c, or "" when c is not a code of
// this protocol.
func (c Code) Description() string {
	for i := range codes {
		if codes[i].Code == c {
			return codes[i].Description
		}
	}
	return ""
}

// CloseCode is a WebSocket close code the server uses.
type CloseCode uint16

// Close codes.
const (
	CloseNormal        CloseCode = 1000 // normal closure
	CloseGoingAway     CloseCode = 1001 // server going away (shutdown, drain): reconnect with backoff
	CloseProtocolError CloseCode = 1002 // protocol error
	CloseUnsupported   CloseCode = 1003 // binary frame on the JSON subprotocol
	CloseInvalidData   CloseCode = 1007 // invalid UTF-8 or invalid JSON
	ClosePolicy        CloseCode = 1008 // policy violation
	CloseTooBig        CloseCode = 1009 // frame or message too big
	CloseInternal      CloseCode = 1011 // internal error
	CloseTryAgainLater CloseCode = 1013 // overloaded or connection limit reached
	CloseUnauthorized  CloseCode = 4001 // bad or missing token, auth timeout
	CloseTokenExpired  CloseCode = 4003 // token expired
	CloseSlowConsumer  CloseCode = 4008 // the connection stopped draining
	CloseRateLimited   CloseCode = 4029 // rate limited
)

// String returns the snake_case name of c used as the reason in close
// reasons ("going_away"), or the number for codes outside the table.
func (c CloseCode) String() string {
	switch c {
	case CloseNormal:
		return "normal"
	case CloseGoingAway:
		return "going_away"
	case CloseProtocolError:
		return "protocol_error"
	case CloseUnsupported:
		return "unsupported_data"
	case CloseInvalidData:
		return "invalid_data"
	case ClosePolicy:
		return "policy_violation"
	case CloseTooBig:
		return "too_big"
	case CloseInternal:
		return "internal_error"
	case CloseTryAgainLater:
		return "try_again_later"
	case CloseUnauthorized:
		return "unauthorized"
	case CloseTokenExpired:
		return "token_expired"
	case CloseSlowConsumer:
		return "slow_consumer"
	case CloseRateLimited:
		return "rate_limited"
	}
	return strconv.Itoa(int(c))
}

// MaxCloseReason is the longest close reason a WebSocket close frame
// carries, in bytes (125 minus the 2-byte code).
const MaxCloseReason = 123

// CloseReason returns the close reason for code: a JSON object
// {"reason":"<code name>"}, with "retry_after_ms" when retryAfterMs > 0
// (1001 and 1013 carry it so that clients spread their reconnects).
func CloseReason(code CloseCode, retryAfterMs int) []byte {
	return AppendCloseReason(nil, code.String(), "", retryAfterMs)
}

// AppendCloseReason appends a close reason to dst:
//
//	{"reason":"shutdown","message":"…","retry_after_ms":1234}
//
// reason is a short snake_case word, message free text for humans
// (omitted when empty), retry_after_ms omitted when retryAfterMs <= 0.
// What it appends is valid JSON of at most [MaxCloseReason] bytes: the
// message, then the reason, are cut (at a character boundary) to fit.
func AppendCloseReason(dst []byte, reason, message string, retryAfterMs int) []byte {
	var tail []byte
	if retryAfterMs > 0 {
		tail = append(tail, `,"retry_after_ms":`...)
		tail = strconv.AppendInt(tail, int64(retryAfterMs), 10)
	}
	tail = append(tail, '}')
	budget := MaxCloseReason - len(`{"reason":""`) - len(tail)
	dst = append(dst, `{"reason":`...)
	dst, used := appendStringMax(dst, reason, budget)
	budget -= used
	if message != "" && budget > len(`,"message":""`) {
		dst = append(dst, `,"message":`...)
		dst, _ = appendStringMax(dst, message, budget-len(`,"message":""`))
	}
	dst = append(dst, tail...)
	return dst
}
