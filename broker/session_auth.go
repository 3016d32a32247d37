package broker

import (
	"errors"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// startAuth runs at connect: with auth off the session is authenticated at
// once; with a handshake token it is verified now (a bad one closes the
// connection after welcome, so a browser can see why); without one the
// client has AuthTimeout to send auth.
func (s *Session) startAuth(token string) {
	if s.srv.cfg.Auth == nil {
		s.authed = true
		return
	}
	if token != "" {
		g, err := s.srv.cfg.Auth.Verify(token)
		if err != nil {
			s.closeForToken(err)
			return
		}
		s.setGrant(g)
		return
	}
	s.mu.Lock()
	if !s.closed {
		s.authTimer = time.AfterFunc(s.srv.cfg.AuthTimeout, func() {
			s.Close(uint16(subproto.CloseUnauthorized), subproto.AppendCloseReason(nil, "unauthorized", "no auth within the auth timeout", 0))
		})
	}
	s.mu.Unlock()
}

// closeForToken closes a connection whose token was refused, after what
// is queued (welcome first) has been written: the contract is welcome,
// then the 4001 or 4003 close.
func (s *Session) closeForToken(err error) {
	if errors.Is(err, ErrTokenExpired) {
		s.closeWhenFlushed(uint16(subproto.CloseTokenExpired), subproto.AppendCloseReason(nil, "token_expired", tokenRefusal(err), 0))
		return
	}
	s.closeWhenFlushed(uint16(subproto.CloseUnauthorized), subproto.AppendCloseReason(nil, "unauthorized", tokenRefusal(err), 0))
}

// setGrant installs g and schedules the close at its expiry.
func (s *Session) setGrant(g *Grant) {
	s.grant = g
	s.user = g.Subject
	s.authed = true
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if s.authTimer != nil {
		s.authTimer.Stop()
	}
	d := time.Until(g.Expires)
	s.authTimer = time.AfterFunc(d, func() {
		s.Close(uint16(subproto.CloseTokenExpired), subproto.AppendCloseReason(nil, "token_expired", "the token expired; send a fresh one with auth before it does", 0))
	})
}

func (s *Session) handleAuth(cmd *subproto.Command) {
	auth := s.srv.cfg.Auth
	if auth == nil {
		s.ok(cmd.ID) // auth is off: nothing to check
		return
	}
	g, err := auth.Verify(cmd.Token)
	if err != nil {
		if !s.authed {
			s.closeForToken(err)
			return
		}
		msg := tokenRefusal(err) + "; the current token stays in force"
		if errors.Is(err, ErrTokenExpired) {
			msg = "the new token has expired; the current token stays in force"
		}
		s.replyErr(&subproto.Error{Code: subproto.CodeUnauthorized, ID: cmd.ID, Message: msg}, nil)
		return
	}
	if s.authed && g.Subject != s.user {
		s.replyErr(&subproto.Error{Code: subproto.CodeUnauthorized, ID: cmd.ID,
			Message: "a token for another subject cannot replace this connection's; reconnect instead"}, nil)
		return
	}
	if !s.authed && s.onAuth != nil && !s.onAuth() {
		s.Close(uint16(subproto.CloseTryAgainLater), subproto.AppendCloseReason(nil, "try_again_later", "connection limit reached", s.srv.RetryAfter()))
		return
	}
	s.setGrant(g)
	// Re-evaluate every subscription against the new grant at once.
	s.mu.Lock()
	var revoked []*subscription
	for _, sub := range s.subs {
		if !g.CanSubscribe(sub.topic) {
			revoked = append(revoked, sub)
		}
	}
	s.mu.Unlock()
	for _, sub := range revoked {
		s.endSub(sub, subproto.CodeForbidden)
	}
	s.ok(cmd.ID)
}

// allowed checks the session's grant for a command; on refusal it answers
// and returns false.
func (s *Session) allowed(cmd *subproto.Command) bool {
	if !s.authed {
		s.replyErr(&subproto.Error{Code: subproto.CodeUnauthorized, ID: cmd.ID, Message: "authenticate first: send auth with a token"}, nil)
		return false
	}
	g := s.grant
	if g == nil {
		return true
	}
	var ok bool
	switch cmd.Op {
	case subproto.OpPub:
		ok = g.CanPublish(cmd.Topic)
	case subproto.OpSub, subproto.OpAck, subproto.OpPresence:
		ok = g.CanSubscribe(cmd.Topic)
	default:
		ok = true
	}
	if !ok {
		what := "subscribe to"
		if cmd.Op == subproto.OpPub {
			what = "publish to"
		}
		s.replyErr(&subproto.Error{Code: subproto.CodeForbidden, ID: cmd.ID, Message: "the token does not allow you to " + what + " " + cmd.Topic}, nil)
	}
	return ok
}
