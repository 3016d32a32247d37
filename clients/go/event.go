package client

import "github.com/brokerd/brokerd/subproto"

// event is one decoded server event: the protocol package's decoder is
// the one description of the wire the broker and this client share.
// Data aliases the frame.
type event = subproto.Event

// parseEvent decodes one JSON object sent by the server. Members may come
// in any order and unknown ones are skipped, so that a newer broker may
// add fields.
func parseEvent(b []byte, ev *event) error { return subproto.DecodeEvent(b, ev) }

// errorOf turns an err event (or an unsubbed code) into an *Error.
func errorOf(ev *event) *Error {
	return &Error{Code: Code(ev.Code), Message: ev.Message, Epoch: ev.Epoch, Earliest: ev.Earliest, Latest: ev.Latest, HasRange: ev.HasRange}
}
