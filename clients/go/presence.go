package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/brokerd/brokerd/subproto"
)

// Member is one member of a topic's presence: a subscription made with
// SubOptions.Presence.
type Member struct {
	// Session is the member's connection (the session of its welcome).
	Session string
	// User is the subject of the member's token; "" when the broker runs
	// without auth.
	User string
	// Node is the broker node the member is connected to.
	Node string
	// Info is the member's SubOptions.PresenceInfo, the JSON value as it
	// sent it; nil when it gave none.
	Info json.RawMessage
}

// Presence is a topic's presence as the broker lists it.
type Presence struct {
	Topic string
	// Members are at most 1,000 of the members.
	Members []Member
	// Count is how many members there are, all of them.
	Count int
}

// MaxPresenceInfo is the largest SubOptions.PresenceInfo, in bytes.
const MaxPresenceInfo = subproto.MaxPresenceInfo

// ErrUnsupported is returned when the broker lacks a protocol feature the
// call needs: Subscribe with Presence, or Presence, on a broker without
// the feature "presence" (see ConnInfo.HasFeature). It is the client's,
// not a protocol code.
var ErrUnsupported = errors.New("client: the broker does not have the protocol feature")

// unsupported returns an error that wraps ErrUnsupported and names the
// feature and what needed it.
func unsupported(feature, what string) error {
	return &unsupportedError{feature: feature, what: what}
}

type unsupportedError struct{ feature, what string }

func (e *unsupportedError) Error() string {
	return "client: " + e.what + ": the broker does not have the protocol feature " + strconv.Quote(e.feature)
}

func (e *unsupportedError) Unwrap() error { return ErrUnsupported }

// memberOf copies a decoded member: the decoder's Info aliases the frame,
// which the connection reuses.
func memberOf(m *subproto.Member) Member {
	out := Member{Session: m.Session, User: m.User, Node: m.Node}
	if m.Info != nil {
		out.Info = append(json.RawMessage(nil), m.Info...)
	}
	return out
}

// presenceOf turns the ok of a presence command into a Presence.
func presenceOf(ev *event, topic string) Presence {
	p := Presence{Topic: ev.Topic, Count: ev.Count, Members: make([]Member, len(ev.Members))}
	if p.Topic == "" {
		p.Topic = topic
	}
	for i := range ev.Members {
		p.Members[i] = memberOf(&ev.Members[i])
	}
	if !ev.HasCount {
		p.Count = len(p.Members)
	}
	return p
}

// Presence lists the presence of topic: at most 1,000 members, and the
// count of all. It needs the right to subscribe to the topic
// (ErrForbidden otherwise) and a broker with the feature "presence"
// (ErrUnsupported otherwise). While disconnected it waits for the
// connection (or ctx); a query in flight when the connection drops is
// asked again on the next one.
func (c *Client) Presence(ctx context.Context, topic string) (Presence, error) {
	if !subproto.ValidTopic(topic) {
		return Presence{}, &Error{Code: CodeInvalidTopic, Message: "presence is per topic: " + strconv.Quote(topic) + " is not a topic name"}
	}
	c.mu.Lock()
	lacks := c.cur != nil && !c.info.HasFeature(subproto.FeaturePresence)
	c.mu.Unlock()
	if lacks {
		return Presence{}, unsupported(subproto.FeaturePresence, "presence of "+topic)
	}
	type result struct {
		p   Presence
		err error
	}
	ch := make(chan result, 1)
	cl := &call{kind: kPresence, retry: true, topic: topic}
	cl.done = func(ev *event, err error) {
		var r result
		if err == nil {
			r.p = presenceOf(ev, topic)
		}
		r.err = err
		ch <- r
	}
	if err := c.start(cl); err != nil {
		return Presence{}, err
	}
	select {
	case r := <-ch:
		return r.p, r.err
	case <-ctx.Done():
		c.abandon(cl, ctx.Err())
		r := <-ch
		return r.p, r.err
	}
}

// presenceQueue bounds the presence events waiting for a subscription's
// goroutine.
const presenceQueue = 256

// presenceEvent is a join, leave or presence_muted for a subscription's
// goroutine.
type presenceEvent struct {
	op     subproto.Op
	member Member
}

// onPresence hands a join, leave or presence_muted event to the
// subscription of its topic. It blocks while the subscription's queue of
// presence events is full, which stops the connection's reader, as
// messages do.
func (c *Client) onPresence(ev *event) {
	c.mu.Lock()
	s := c.subs[ev.Topic]
	c.mu.Unlock()
	if s == nil || !s.opts.Presence {
		return
	}
	pe := presenceEvent{op: ev.Op}
	if ev.Op != subproto.OpPresenceMuted {
		if ev.Member == nil {
			return
		}
		pe.member = memberOf(ev.Member)
	}
	select {
	case s.pch <- pe:
	case <-s.quit:
	}
}

// handlePresence runs a presence event's callback on the subscription's
// goroutine.
func (s *Subscription) handlePresence(pe presenceEvent) {
	switch pe.op {
	case subproto.OpJoin:
		if s.opts.OnJoin != nil {
			s.opts.OnJoin(pe.member)
		}
	case subproto.OpLeave:
		if s.opts.OnLeave != nil {
			s.opts.OnLeave(pe.member)
		}
	case subproto.OpPresenceMuted:
		s.muted.Store(true)
		if s.opts.OnPresenceMuted != nil {
			s.opts.OnPresenceMuted()
		}
	}
}

// PresenceMuted reports whether the subscription's topic has stopped
// sending join and leave (presence_muted: more than 1,000 members).
func (s *Subscription) PresenceMuted() bool { return s.muted.Load() }

// checkPresenceOptions checks the presence fields of opts, and keeps a
// compact copy of PresenceInfo in it.
func checkPresenceOptions(pattern bool, opts *SubOptions) error {
	if !opts.Presence {
		if opts.PresenceInfo != nil || opts.OnJoin != nil || opts.OnLeave != nil || opts.OnPresenceMuted != nil {
			return &Error{Code: CodeBadRequest, Message: "PresenceInfo, OnJoin, OnLeave and OnPresenceMuted need Presence"}
		}
		return nil
	}
	if pattern {
		return &Error{Code: CodeBadRequest, Message: "Presence is for a topic: a pattern subscription cannot join presence"}
	}
	if opts.PresenceInfo != nil {
		if !json.Valid(opts.PresenceInfo) {
			return &Error{Code: CodeBadRequest, Message: "PresenceInfo is not a JSON value"}
		}
		// A command is one line, and the bound is on the bytes sent: the
		// value goes out compacted, and the subscription keeps its own
		// copy (the caller may reuse the slice).
		var b bytes.Buffer
		_ = json.Compact(&b, opts.PresenceInfo)
		if b.Len() > MaxPresenceInfo {
			return &Error{Code: CodeBadRequest, Message: "PresenceInfo is " + strconv.Itoa(b.Len()) + " bytes of compact JSON, the limit is " + strconv.Itoa(MaxPresenceInfo)}
		}
		opts.PresenceInfo = b.Bytes()
	}
	return nil
}
