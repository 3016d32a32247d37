package broker

import (
	"errors"
	"fmt"

	"github.com/brokerd/brokerd/subproto"
)

// MaxSubjectBytes bounds a token's subject (the JWT sub claim): durable
// consumers are stored under subject + consumer name, and the pair must
// fit in MaxConsumerKeyBytes. An Authenticator refuses a longer subject
// with ErrSubjectTooLong.
const MaxSubjectBytes = 64

// MaxConsumerKeyBytes bounds the name a durable consumer is stored under:
// its subject, a separator byte and its name.
const MaxConsumerKeyBytes = 255

// ErrSubjectTooLong: the token's subject is longer than MaxSubjectBytes.
// It wraps ErrTokenInvalid; its text is shown to the client.
var ErrSubjectTooLong = fmt.Errorf("%w: the sub claim is longer than %d bytes", ErrTokenInvalid, MaxSubjectBytes)

// tokenRefusal is what a client is told about a refused token.
func tokenRefusal(err error) string {
	switch {
	case errors.Is(err, ErrTokenExpired):
		return "the token has expired"
	case errors.Is(err, ErrSubjectTooLong):
		return fmt.Sprintf("invalid token: its sub claim is longer than %d bytes", MaxSubjectBytes)
	}
	return "invalid token"
}

// TokenRefusal is the message for a client whose token err refused: the
// HTTP API uses it as the WebSocket close does.
func TokenRefusal(err error) string { return tokenRefusal(err) }

func consumerTooLong(id uint64, user string) *subproto.Error {
	return &subproto.Error{Code: subproto.CodeBadRequest, ID: id,
		Message: fmt.Sprintf(`field "consumer" is too long for this user: the sub claim (%d bytes) and the name must together be at most %d bytes`, len(user), MaxConsumerKeyBytes-1)}
}

// refusedOnEmpty is the refusal a sub (without consumer) gets from a
// topic that has no log yet, so that refusing it creates nothing: any
// epoch is not the topic's, and an offset beyond 1 is beyond its head.
func refusedOnEmpty(cmd *subproto.Command) *subproto.Error {
	switch {
	case cmd.Epoch != "":
		return &subproto.Error{Code: subproto.CodeEpochMismatch, ID: cmd.ID,
			Message: "the topic has no log: offsets of epoch " + cmd.Epoch + " no longer apply; subscribe without epoch to start it"}
	case cmd.From.Kind == subproto.FromOffset && cmd.From.Offset > 1:
		return &subproto.Error{Code: subproto.CodeOffsetOutOfRange, ID: cmd.ID,
			Message: fmt.Sprintf("offset %d is beyond the head 0: the topic has no log", cmd.From.Offset)}
	}
	return nil
}
