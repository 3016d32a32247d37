package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// HandleFrame decodes one text frame from the client and runs its
// commands in order. The transport calls it from the connection's reader;
// it may block while the session has too many publishes pending, which
// pushes back on the client through TCP. frame may be reused by the
// caller once HandleFrame returns.
func (s *Session) HandleFrame(frame []byte) {
	select {
	case <-s.done:
		return
	default:
	}
	if s.srv.draining.Load() || s.closing.Load() {
		return // shutting down, or closing once the queue is written
	}
	st := &s.srv.stats
	st.FramesIn.Add(1)
	st.BytesIn.Add(int64(len(frame)))
	if ferr := subproto.DecodeFrame(frame, s.srv.cfg.MaxCommandsPerFrame, s.handle); ferr != nil {
		s.srv.stats.countErr(ferr.Code)
		s.log.Debug("closing connection on bad frame", "code", ferr.Code, "reason", ferr.Message)
		s.Close(uint16(ferr.Close), subproto.AppendCloseReason(nil, ferr.Close.String(), ferr.Message, 0))
	}
}

// HandlePing counts a WebSocket ping of the client against its command
// rate and reports whether it may be answered; past the rate the
// connection is closed with 4029 as for commands.
func (s *Session) HandlePing() bool {
	if s.limiter != nil && !s.limiter.Allow() {
		s.rateLimited()
		return false
	}
	return true
}

// HandleBinary answers a binary frame, which the JSON subprotocol does not
// allow.
func (s *Session) HandleBinary() {
	s.Close(uint16(subproto.CloseUnsupported), closeReason(subproto.CloseUnsupported, "binary frames are not part of "+subproto.Subprotocol))
}

func (s *Session) handle(cmd *subproto.Command, perr *subproto.Error) {
	if s.limiter != nil && !s.limiter.Allow() {
		s.rateLimited()
		return
	}
	s.waitCtrlRoom()
	if perr != nil {
		s.replyErr(perr, nil)
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	switch cmd.Op {
	case subproto.OpPing:
		if cmd.ID != 0 { // without an id a success is silent
			s.reply(subproto.AppendPong(nil, cmd.ID))
		}
		return
	case subproto.OpAuth:
		s.handleAuth(cmd)
		return
	}
	if !s.allowed(cmd) {
		return
	}
	switch cmd.Op {
	case subproto.OpPub:
		s.handlePub(cmd)
	case subproto.OpSub:
		s.handleSub(cmd)
	case subproto.OpUnsub:
		s.handleUnsub(cmd)
	case subproto.OpAck:
		s.handleAck(cmd)
	case subproto.OpPresence:
		s.handlePresence(cmd)
	default:
		s.replyErr(&subproto.Error{Code: subproto.CodeUnknownOp, Message: fmt.Sprintf("unknown op %q", cmd.Op), ID: cmd.ID}, nil)
	}
}

func (s *Session) ok(id uint64) {
	if id != 0 {
		s.reply(subproto.AppendOK(nil, &subproto.OK{ID: id}))
	}
}

func (s *Session) handlePub(cmd *subproto.Command) {
	pol := s.srv.Policy(cmd.Topic)
	if limit := s.srv.maxMessageBytes(pol); len(cmd.Data) > limit {
		s.replyErr(&subproto.Error{Code: subproto.CodeMessageTooLarge, ID: cmd.ID,
			Message: fmt.Sprintf("data is %d bytes, the limit is %d", len(cmd.Data), limit)}, nil)
		return
	}
	if e, ctx := s.publishAllowed(cmd.ID, pol); e != nil {
		s.replyErr(e, ctx)
		return
	}
	select {
	case s.pending <- struct{}{}:
	case <-s.done:
		return
	}
	// The data is held until it is durable: bounded per connection and
	// for the server. Waiting here stops reading from the connection.
	size := int64(len(cmd.Data))
	waits := &s.srv.stats.PendingWaits
	mine, ok := s.pendingBytes.acquire(size, s.done, waits)
	if !ok {
		<-s.pending
		return
	}
	all, ok := s.srv.pending.acquire(size, s.done, waits)
	if !ok {
		s.pendingBytes.release(mine)
		<-s.pending
		return
	}
	id, topic := cmd.ID, cmd.Topic
	made, err := s.srv.admitTopic(s.grant, topic)
	if err != nil {
		s.pendingBytes.release(mine)
		s.srv.pending.release(all)
		e := storeError(id, err)
		s.srv.stats.countErr(e.Code)
		s.replyPending(subproto.AppendErr(nil, e, s.srv.retryCtx(e, nil)))
		return
	}
	received := time.Now()
	// The data aliases the transport's read buffer: the store needs its own copy.
	data := bytes.Clone(cmd.Data)
	s.srv.store.AppendAsync(topic, data, cmd.Key, func(a Appended, err error) {
		made(err == nil && a.Created)
		s.pendingBytes.release(mine)
		s.srv.pending.release(all)
		if f := s.srv.cfg.OnPublish; f != nil && err == nil {
			f(time.Since(received))
		}
		s.srv.wrote(err)
		if err != nil {
			e := storeError(id, err)
			s.srv.stats.countErr(e.Code)
			s.replyPending(subproto.AppendErr(nil, e, s.srv.retryCtx(e, nil)))
			return
		}
		if a.Dup {
			s.srv.stats.PublishedDup.Add(1)
		} else {
			s.srv.stats.Published.Add(1)
		}
		if id == 0 {
			<-s.pending // nothing to write: free the slot now
			return
		}
		s.replyPending(subproto.AppendOK(nil, &subproto.OK{ID: id, Topic: topic, Offset: a.Offset, Dup: a.Dup, Pub: true}))
	})
}

// Publish appends data to topic and returns once it is durable. It is the
// entry point for publishers that are not sessions (the HTTP API), with
// auth off.
func (srv *Server) Publish(ctx context.Context, topic string, data []byte, key string) (Appended, error) {
	return srv.PublishAs(ctx, nil, topic, data, key)
}

// PublishAs is Publish for the holder of g (nil with auth off): a new
// topic counts against its user's bound (see topicQuota).
func (srv *Server) PublishAs(ctx context.Context, g *Grant, topic string, data []byte, key string) (Appended, error) {
	if len(data) > srv.maxMessageBytes(srv.Policy(topic)) {
		return Appended{}, ErrTooLarge
	}
	n, ok := srv.pending.acquire(int64(len(data)), ctx.Done(), &srv.stats.PendingWaits)
	if !ok {
		return Appended{}, ctx.Err()
	}
	made, err := srv.admitTopic(g, topic)
	if err != nil {
		srv.pending.release(n)
		return Appended{}, err
	}
	received := time.Now()
	a, err := srv.store.Append(ctx, topic, data, key)
	// An append given up by ctx may still create the topic: counted
	// then only if a later operation finds it made (it exists, so it is
	// let through).
	made(err == nil && a.Created)
	srv.pending.release(n)
	if ctx.Err() == nil {
		srv.wrote(err)
	}
	if err == nil {
		if f := srv.cfg.OnPublish; f != nil {
			f(time.Since(received))
		}
		if a.Dup {
			srv.stats.PublishedDup.Add(1)
		} else {
			srv.stats.Published.Add(1)
		}
	}
	return a, err
}

func storeError(id uint64, err error) *subproto.Error {
	switch {
	case errors.Is(err, ErrTooLarge):
		return &subproto.Error{Code: subproto.CodeMessageTooLarge, ID: id, Message: err.Error()}
	case errors.Is(err, ErrTooManyTopics):
		return &subproto.Error{Code: subproto.CodeTooManyTopics, ID: id, Message: "no new topic can be created: " + err.Error()}
	case errors.Is(err, ErrUnavailable):
		return &subproto.Error{Code: subproto.CodeUnavailable, ID: id, Message: "unavailable now, retry: " + err.Error()}
	case errors.Is(err, ErrClosed):
		return &subproto.Error{Code: subproto.CodeUnavailable, ID: id, Message: "the broker is shutting down"}
	default:
		// The storage failed (a full disk, an I/O error): the client may
		// retry later, as after a failover.
		return &subproto.Error{Code: subproto.CodeUnavailable, ID: id, Message: "storage error, retry later: " + err.Error()}
	}
}

func (s *Session) consumerKey(name string) string {
	if s.user == "" {
		return name
	}
	return s.user + "\x1f" + name
}

func (s *Session) handleSub(cmd *subproto.Command) { s.subOnce(cmd, 1) }

// subOnce runs a sub; retries bounds how often it starts over when the
// topic's log is deleted as idle while it is being set up.
func (s *Session) subOnce(cmd *subproto.Command, retries int) {
	id, topic := cmd.ID, cmd.Topic
	s.mu.Lock()
	_, dup := s.subs[topic]
	n := len(s.subs)
	s.mu.Unlock()
	if dup {
		s.replyErr(errAlreadySubscribed(id, topic), nil)
		return
	}
	if n >= s.srv.cfg.MaxSubscriptions {
		s.replyErr(&subproto.Error{Code: subproto.CodeTooManySubscriptions, ID: id,
			Message: fmt.Sprintf("a connection may hold %d subscriptions", s.srv.cfg.MaxSubscriptions)}, nil)
		return
	}
	if cmd.Pattern {
		s.subscribePattern(cmd)
		return
	}

	if cmd.Consumer != "" && len(s.consumerKey(cmd.Consumer)) > MaxConsumerKeyBytes {
		s.replyErr(consumerTooLong(id, s.user), nil)
		return
	}
	gen := s.srv.reclaimGen.Load()
	info, exists, err := s.srv.store.Topic(topic)
	if err == nil && !exists {
		// A sub the empty log would refuse creates nothing.
		if e := refusedOnEmpty(cmd); e != nil && cmd.Consumer == "" {
			s.replyErr(e, &subproto.ErrContext{Earliest: 1, Latest: 0, HasRange: true})
			return
		}
		// Create the log now, so the client learns the epoch its
		// offsets belong to before the first message. It counts as the
		// user's topic (one created by another at the same moment may
		// be counted too).
		made, qerr := s.srv.admitTopic(s.grant, topic)
		if err = qerr; err == nil {
			info, err = s.srv.store.Ensure(context.Background(), topic)
			made(err == nil)
		}
	}
	if err != nil {
		s.replyErr(storeError(id, err), nil)
		return
	}
	rangeCtx := &subproto.ErrContext{Epoch: info.Epoch, Earliest: info.Earliest, Latest: info.Head, HasRange: true}

	sub := &subscription{sess: s, topic: topic, epoch: info.Epoch}
	if cmd.Presence {
		if s.srv.Policy(topic).NoPresence {
			s.replyErr(&subproto.Error{Code: subproto.CodeForbidden, ID: id, Message: "presence is off for " + topic + " (its topic policy)"}, nil)
			return
		}
		sub.member = &subproto.Member{Session: s.id, User: s.user, Node: s.srv.cfg.Node, Info: bytes.Clone(cmd.PresenceInfo)}
	}
	req := requestOf(cmd)
	if cmd.Consumer != "" {
		sub.consumer = cmd.Consumer
		sub.consumerKey = s.consumerKey(cmd.Consumer)
		sub.maxInflight = cmd.MaxInflight
		if sub.maxInflight == 0 {
			sub.maxInflight = s.srv.cfg.DefaultMaxInflight
		}
		if sub.maxInflight > s.srv.cfg.MaxInflight {
			sub.maxInflight = s.srv.cfg.MaxInflight
		}
	}
	facts, err := startFacts(s.srv.store, topic, info, req, sub.consumerKey)
	if err != nil {
		s.replyErr(storeError(id, err), nil)
		return
	}
	begin, serr := decideStart(req, facts)
	if serr != nil {
		serr.ID = id
		s.replyErr(serr, rangeCtx)
		return
	}
	start, missed := begin.Offset, begin.Missed
	sub.acked = begin.Acked
	sub.next = start

	t, err := s.srv.acquireTopic(topic)
	if err != nil {
		s.replyErr(storeError(id, err), nil)
		return
	}
	if retries > 0 && s.srv.subStale(topic, info.Epoch, gen) {
		// The log read above was deleted as idle before the topic state
		// was taken: read it again (see Server.reclaim).
		s.srv.releaseTopic(t)
		s.subOnce(cmd, retries-1)
		return
	}
	sub.t = t

	// A presence subscription holds its topic's presence from before its
	// ok until it is a member: no member can join in between, unseen by
	// it, and no join or leave can reach it before its ok.
	var psh *presenceShard
	if sub.member != nil {
		psh = s.srv.presence.shard(topic)
		psh.mu.Lock()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		if psh != nil {
			psh.mu.Unlock()
		}
		s.srv.releaseTopic(t)
		return
	}
	if _, dup := s.subs[topic]; dup {
		s.mu.Unlock()
		if psh != nil {
			psh.mu.Unlock()
		}
		s.srv.releaseTopic(t)
		s.replyErr(errAlreadySubscribed(id, topic), nil)
		return
	}
	if id != 0 {
		s.replyLocked(subproto.AppendOK(nil, &subproto.OK{ID: id, Topic: topic, Sub: true, Epoch: info.Epoch, Head: info.Head, From: start, Missed: missed}))
	}
	// Registered but neither live nor fed from the log yet: nothing can
	// reach the client before the ok.
	s.subs[topic] = sub
	s.mu.Unlock()
	if psh != nil {
		s.srv.presenceJoinLocked(psh, sub)
		psh.mu.Unlock()
	}
	s.srv.stats.Subscriptions.Add(1)

	// Join the topic before the first log read, so that no record
	// dispatched after that read can miss the subscription; every
	// subscription starts by reading the log and rejoins live from there.
	t.mu.Lock()
	s.mu.Lock()
	if !sub.ended {
		t.subs = append(t.subs, sub)
		sub.lagging = true
		s.lagging = append(s.lagging, sub)
		s.kickLocked()
	}
	s.mu.Unlock()
	t.mu.Unlock()

	if sub.consumerKey != "" {
		if s.consumerEpochs == nil || len(s.consumerEpochs) >= 2*s.srv.cfg.MaxSubscriptions {
			s.consumerEpochs = make(map[consumerTopic]string)
		}
		s.consumerEpochs[consumerTopic{sub.consumerKey, topic}] = sub.epoch
		if old := s.srv.claim(sub); old != nil && old != sub {
			old.sess.endSub(old, subproto.CodeTakenOver)
		}
		// A close that raced with the take-over has detached sub before
		// it was registered: do not leave it in the registry.
		s.mu.Lock()
		ended := sub.ended
		s.mu.Unlock()
		if ended {
			s.srv.dropConsumer(sub)
		}
	}
}

func (s *Session) handleUnsub(cmd *subproto.Command) {
	s.mu.Lock()
	sub := s.subs[cmd.Topic]
	s.mu.Unlock()
	if sub == nil {
		s.replyErr(&subproto.Error{Code: subproto.CodeNotSubscribed, ID: cmd.ID, Message: "no subscription to " + cmd.Topic + " on this connection"}, nil)
		return
	}
	s.endSub(sub, "")
	s.ok(cmd.ID)
}

func (s *Session) handleAck(cmd *subproto.Command) {
	id, topic := cmd.ID, cmd.Topic
	info, exists, err := s.srv.store.Topic(topic)
	if err != nil {
		s.replyErr(storeError(id, err), nil)
		return
	}
	if exists && cmd.Epoch != "" && cmd.Epoch != info.Epoch {
		// Offsets of another history: storing them would skip messages
		// of the current one.
		s.replyErr(&subproto.Error{Code: subproto.CodeEpochMismatch, ID: id,
			Message: "the topic's history was reset: offsets of epoch " + cmd.Epoch + " no longer apply; nothing was stored"},
			&subproto.ErrContext{Epoch: info.Epoch, Earliest: info.Earliest, Latest: info.Head, HasRange: true})
		return
	}
	if !exists || cmd.Offset > info.Head {
		var rc *subproto.ErrContext
		if exists {
			rc = &subproto.ErrContext{Epoch: info.Epoch, Earliest: info.Earliest, Latest: info.Head, HasRange: true}
		}
		s.replyErr(&subproto.Error{Code: subproto.CodeOffsetOutOfRange, ID: id,
			Message: fmt.Sprintf("cannot acknowledge offset %d beyond the head %d", cmd.Offset, info.Head)}, rc)
		return
	}
	key := s.consumerKey(cmd.Consumer)
	if len(key) > MaxConsumerKeyBytes {
		s.replyErr(consumerTooLong(id, s.user), nil)
		return
	}
	// An ack without an epoch (a v1.0 client): when this connection holds
	// the consumer's subscription, the offsets it acknowledges are of that
	// subscription's epoch: after a reset they must not land in the new
	// history, where they would skip messages silently.
	if e, ok := s.consumerEpochs[consumerTopic{key, topic}]; ok && e != info.Epoch {
		s.replyErr(&subproto.Error{Code: subproto.CodeEpochMismatch, ID: id,
			Message: "the topic's history was reset since this subscription began: its offsets no longer apply"},
			&subproto.ErrContext{Epoch: info.Epoch, Earliest: info.Earliest, Latest: info.Head, HasRange: true})
		return
	}
	select {
	case s.pending <- struct{}{}:
	case <-s.done:
		return
	}
	s.srv.store.CommitAsync(key, topic, info.Epoch, cmd.Offset, func(co ConsumerOffset, err error) {
		s.srv.wrote(err)
		if err != nil {
			e := storeError(id, err)
			s.srv.stats.countErr(e.Code)
			s.replyPending(subproto.AppendErr(nil, e, s.srv.retryCtx(e, nil)))
			return
		}
		s.srv.acked(key, topic, co)
		if id == 0 {
			<-s.pending
			return
		}
		s.replyPending(subproto.AppendOK(nil, &subproto.OK{ID: id}))
	})
}

// acked opens the in-flight window of the consumer's live subscription.
func (srv *Server) acked(consumerKey, topic string, co ConsumerOffset) {
	sub := srv.liveConsumer(consumerKey, topic)
	if sub == nil {
		return
	}
	s := sub.sess
	s.mu.Lock()
	if !sub.ended && co.Epoch == sub.epoch && co.Offset > sub.acked {
		sub.acked = co.Offset
		if sub.lagging {
			sub.parked = false
			s.kickLocked()
		}
	}
	s.mu.Unlock()
}

// handlePresence answers the presence command with the topic's members.
func (s *Session) handlePresence(cmd *subproto.Command) {
	select {
	case s.presenceSlot <- struct{}{}:
	case <-s.done:
		return
	}
	members, count := []subproto.Member{}, 0
	if !s.srv.Policy(cmd.Topic).NoPresence {
		members, count = s.srv.Presence(cmd.Topic)
	}
	b := subproto.AppendOK(nil, &subproto.OK{ID: cmd.ID, Topic: cmd.Topic, Presence: true, Members: members, Count: count})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.pushCtrlLocked(outItem{b: b, freePresence: true})
}

// rateLimited closes a connection that sends commands faster than its
// limit allows.
func (s *Session) rateLimited() {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	s.srv.stats.RateLimited.Add(1)
	s.log.Info("closing connection: command rate limit", "rate", s.srv.cfg.CommandRate)
	s.Close(uint16(subproto.CloseRateLimited), subproto.AppendCloseReason(nil, "rate_limited", "too many commands per second", 1000+s.srv.RetryAfter()))
}

func errAlreadySubscribed(id uint64, topic string) *subproto.Error {
	return &subproto.Error{Code: subproto.CodeAlreadySubscribed, ID: id, Message: "already subscribed to " + topic + " on this connection"}
}
