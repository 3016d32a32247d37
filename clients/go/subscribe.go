package client

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// Message is one message of a subscribed topic. It stays valid after the
// handler returns.
type Message struct {
	Topic   string
	Pattern string // the pattern subscription it came through, "" for a topic subscription
	Offset  uint64
	Time    time.Time // when the broker stored it (millisecond precision)
	Data    []byte    // the published JSON value, byte for byte
}

// Handler receives the messages of a subscription, one at a time.
type Handler func(m *Message)

// Position is where a subscription starts: Latest (the default: only
// messages stored after the subscription), Earliest, or Offset(n).
type Position struct {
	kind   subproto.FromKind
	offset uint64
}

// Positions a subscription may start from.
var (
	Latest   = Position{kind: subproto.FromLatest}
	Earliest = Position{kind: subproto.FromEarliest}
)

// Offset starts a subscription at offset n (inclusive).
func Offset(n uint64) Position { return Position{kind: subproto.FromOffset, offset: n} }

// SubOptions configures a subscription. The zero value subscribes to new
// messages only.
type SubOptions struct {
	// From is where to start; the zero value is the broker's default:
	// Latest, or after the acknowledged offset of a durable Consumer.
	From Position
	// Epoch, when set, makes the subscription fail with ErrEpochMismatch
	// unless the topic's history is still that epoch (offsets of another
	// epoch mean nothing).
	Epoch string
	// IfGone "earliest" starts at the earliest retained message when From
	// is older; SubInfo.Missed then reports the hole. Otherwise such a
	// subscription fails with ErrOffsetOutOfRange.
	IfGone string
	// Consumer names a durable consumer: the broker resumes it after its
	// acknowledged offset (see Subscription.Ack), and delivers again what
	// it has not acknowledged.
	Consumer string
	// MaxInflight bounds a consumer's delivered but unacknowledged
	// messages (0: the broker's default).
	MaxInflight int
	// Last starts a topic subscription this many messages before the
	// next offset (1 to 10,000; 0: unset): the last Last messages, then
	// live. Not with From or Since. Needs a broker with the "last"
	// feature (ConnInfo.HasFeature).
	Last int
	// Since starts at the first message stored at or after this time
	// (millisecond precision; zero: unset). Not with From or Last. For a
	// pattern, every matching topic without a position starts there.
	// Needs the "since" feature ("pattern_replay" for a pattern).
	Since time.Time
	// Positions resume a pattern subscription: topic name → where to
	// start it (see Subscription.Positions). Needs "pattern_replay".
	Positions map[string]TopicPosition

	// Presence makes a topic subscription (not a pattern) a member of the
	// topic's presence while it lasts, on every node of a cluster; the
	// other members' joins and leaves come to OnJoin and OnLeave. A new
	// member is not told of the members already there: ask with
	// Client.Presence. After a reconnect the subscription joins again,
	// as the new session. Needs the feature "presence": without it
	// Subscribe fails with ErrUnsupported.
	Presence bool
	// PresenceInfo is what the other members see as this member's Info:
	// any JSON value, at most MaxPresenceInfo (1 KiB) bytes once
	// compacted. Needs Presence.
	PresenceInfo json.RawMessage
	// OnJoin and OnLeave are called when another member joins or leaves
	// the topic (a leave carries the same Member as its join);
	// OnPresenceMuted once the topic has more than 1,000 members and
	// stops sending joins and leaves. They run on the subscription's
	// goroutine, never at the same time as the handler or each other,
	// and should not block (see Subscribe). Need Presence.
	OnJoin          func(Member)
	OnLeave         func(Member)
	OnPresenceMuted func()
}

// TopicPosition is where a pattern subscription resumes one topic: the
// next offset to deliver, in epoch Epoch.
type TopicPosition struct {
	Next  uint64
	Epoch string
}

// SubInfo is what the broker answered to the latest sub of a subscription.
type SubInfo struct {
	Epoch  string     // the topic's epoch
	Head   uint64     // its last stored offset then
	From   uint64     // the first offset delivered
	Missed *[2]uint64 // the hole skipped by IfGone, nil when none
}

// Subscription is one subscription of a Client.
type Subscription struct {
	c       *Client
	topic   string
	pattern bool
	h       Handler
	opts    SubOptions
	seq     uint64 // creation order, for resubscribing in order
	ch      chan []Message
	pch     chan presenceEvent // joins and leaves, with Presence
	muted   atomic.Bool        // presence_muted came
	quit    chan struct{}      // closed when the subscription ends
	ready   chan struct{}      // closed at the first ok, or at the end
	next    atomic.Uint64      // next offset to deliver (topic subscriptions)
	// positions: a pattern subscription's next offset and epoch per
	// topic, kept by the reader from the topic events and msgs (guarded
	// by c.mu); since is what a resume asks for topics never seen.
	positions map[string]TopicPosition
	since     time.Time

	// guarded by c.mu:
	started bool
	ended   bool
	err     error
	info    SubInfo
}

// Subscribe subscribes to topic (a topic name, or a pattern with '*' and
// '>') and returns once the broker has accepted it. A pattern
// subscription delivers each matching topic in order (from
// SubOptions.Positions, Since, or what comes after it) and, after a
// reconnect, resumes each topic it has delivered after its last message
// and every other one from the time it began (by this machine's clock),
// with no gap and no duplicate per topic.
// h receives the messages on a goroutine of the subscription, in order.
// After a reconnect the subscription resumes at the offset after the last
// message it delivered, in the same epoch: no gap, no duplicate. When the
// topic's history was reset meanwhile, or the messages are gone from the
// log, the subscription ends (see Err) rather than skip anything.
func (c *Client) Subscribe(ctx context.Context, topic string, h Handler, opts SubOptions) (*Subscription, error) {
	if h == nil {
		return nil, errors.New("client: Subscribe needs a handler")
	}
	pattern := subproto.IsPattern(topic)
	if !subproto.ValidPattern(topic) {
		return nil, &Error{Code: CodeInvalidTopic, Message: "invalid topic or pattern " + strconv.Quote(topic)}
	}
	if pattern && (opts.From != Position{} || opts.Epoch != "" || opts.Consumer != "" || opts.MaxInflight != 0 || opts.Last != 0) {
		return nil, &Error{Code: CodeBadRequest, Message: "a pattern subscription takes Since, Positions and IfGone; From, Epoch, Consumer, MaxInflight and Last do not apply"}
	}
	if !pattern && opts.Positions != nil {
		return nil, &Error{Code: CodeBadRequest, Message: "Positions apply to pattern subscriptions only"}
	}
	n := 0
	for _, set := range []bool{opts.From != Position{}, opts.Last != 0, !opts.Since.IsZero()} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, &Error{Code: CodeBadRequest, Message: "From, Last and Since exclude each other"}
	}
	if opts.Last < 0 || opts.Last > subproto.MaxLast {
		return nil, &Error{Code: CodeBadRequest, Message: "Last must be 1 to " + strconv.Itoa(subproto.MaxLast)}
	}
	if opts.IfGone != "" && opts.IfGone != "earliest" {
		return nil, &Error{Code: CodeBadRequest, Message: `IfGone must be "" or "earliest"`}
	}
	if opts.MaxInflight != 0 && opts.Consumer == "" {
		return nil, &Error{Code: CodeBadRequest, Message: "MaxInflight needs a Consumer"}
	}
	if err := checkPresenceOptions(pattern, &opts); err != nil {
		return nil, err
	}
	s := &Subscription{
		c:       c,
		topic:   topic,
		pattern: pattern,
		h:       h,
		opts:    opts,
		since:   opts.Since,
		ch:      make(chan []Message, c.o.buffer),
		pch:     make(chan presenceEvent, presenceQueue),
		quit:    make(chan struct{}),
		ready:   make(chan struct{}),
	}
	c.mu.Lock()
	if c.stopped {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	if _, dup := c.subs[topic]; dup {
		c.mu.Unlock()
		return nil, &Error{Code: CodeAlreadySubscribed, Message: "this client is already subscribed to " + topic}
	}
	if opts.Presence && c.cur != nil && !c.info.HasFeature(subproto.FeaturePresence) {
		c.mu.Unlock()
		return nil, unsupported(subproto.FeaturePresence, "subscribe to "+topic+" with presence")
	}
	s.seq = c.nextID.Add(1)
	c.subs[topic] = s
	cur := c.cur
	if cur != nil {
		c.sendSubLocked(s)
	}
	c.mu.Unlock()
	if cur != nil {
		cur.kickWriter()
	}
	go s.loop()
	select {
	case <-s.ready:
		if err := s.Err(); err != nil {
			return nil, err
		}
		return s, nil
	case <-ctx.Done():
		s.unsubscribe()
		return nil, ctx.Err()
	}
}

// sendSubLocked sends the sub command of s on the current connection:
// the first time with the caller's options, afterwards resuming where
// the subscription stands.
func (c *Client) sendSubLocked(s *Subscription) {
	if s.opts.Presence && !c.info.HasFeature(subproto.FeaturePresence) {
		// A broker without presence (another node after a reconnect) would
		// refuse the fields: end the subscription with the reason.
		err := unsupported(subproto.FeaturePresence, "subscribe to "+s.topic+" with presence")
		c.log.Warn("brokerd subscription ended", "topic", s.topic, "err", err)
		c.endSubLocked(s, err)
		return
	}
	cmd := subproto.Command{Op: subproto.OpSub, Topic: s.topic, Presence: s.opts.Presence, PresenceInfo: s.opts.PresenceInfo}
	if s.pattern {
		cmd.Pattern = true
		cmd.IfGone = s.opts.IfGone
		positions := s.opts.Positions
		if s.started {
			// Resume: each topic seen from its next offset, every other
			// one from the time the subscription began.
			positions = s.positions
		}
		if !s.since.IsZero() {
			cmd.Since, cmd.HasSince = max(s.since.UnixMilli(), 0), true
		}
		for topic, p := range positions {
			cmd.Positions = append(cmd.Positions, subproto.Position{Topic: topic, From: max(p.Next, 1), Epoch: p.Epoch})
		}
	} else {
		cmd.Consumer = s.opts.Consumer
		cmd.MaxInflight = s.opts.MaxInflight
		cmd.IfGone = s.opts.IfGone
		if s.started {
			// Resume: from the next undelivered offset (a durable consumer
			// resumes after its acknowledged offset whatever from says, or
			// here when it has none yet), in the epoch it had.
			cmd.Epoch = s.info.Epoch
			next := s.next.Load()
			if s.opts.Consumer != "" {
				next = s.info.From
			}
			cmd.From = subproto.From{Kind: subproto.FromOffset, Offset: next}
		} else {
			cmd.Epoch = s.opts.Epoch
			cmd.From = subproto.From{Kind: s.opts.From.kind, Offset: s.opts.From.offset}
			cmd.Last = s.opts.Last
			if !s.opts.Since.IsZero() {
				cmd.Since, cmd.HasSince = max(s.opts.Since.UnixMilli(), 0), true
			}
		}
	}
	cl := &call{kind: kSub, sub: s, cmd: cmd}
	cl.done = func(ev *event, err error) { c.onSubReply(s, ev, err) }
	cl.id = c.nextID.Add(1)
	c.calls[cl.id] = cl
	c.cur.appendLocked(cl)
}

// onSubReply handles the answer to a sub command.
func (c *Client) onSubReply(s *Subscription, ev *event, err error) {
	if errors.Is(err, errLost) {
		return // sent again on the next connection
	}
	c.mu.Lock()
	if s.ended {
		c.mu.Unlock()
		if err == nil {
			// Unsubscribed or closed while the sub was in flight.
			c.unsubCommand(s.topic)
		}
		return
	}
	if err != nil {
		var e *Error
		if errors.As(err, &e) && s.started && (e.Code == CodeUnavailable || e.Code == CodeInternal || e.Code == CodeRateLimited) {
			c.mu.Unlock()
			c.log.Warn("brokerd refused to resume a subscription; trying again", "topic", s.topic, "err", err)
			time.AfterFunc(c.o.backoff(3, 0), func() {
				c.mu.Lock()
				cur := c.cur
				if !s.ended && cur != nil {
					c.sendSubLocked(s)
				}
				c.mu.Unlock()
				if cur != nil {
					cur.kickWriter()
				}
			})
			return
		}
		c.log.Warn("brokerd subscription ended", "topic", s.topic, "err", err)
		c.endSubLocked(s, err)
		c.mu.Unlock()
		return
	}
	info := SubInfo{Epoch: ev.Epoch, Head: ev.Head, From: ev.From}
	if ev.Missed != nil {
		m := *ev.Missed
		info.Missed = &m
	}
	if s.started && s.opts.Consumer != "" {
		info.From = s.info.From // keep the first start for the next resume
	}
	s.info = info
	if !s.pattern {
		s.next.Store(ev.From)
	}
	if !s.started {
		s.started = true
		if s.pattern {
			s.positions = make(map[string]TopicPosition, len(s.opts.Positions))
			for topic, p := range s.opts.Positions {
				s.positions[topic] = p
			}
			if s.since.IsZero() {
				// A resume also delivers topics first written while away.
				s.since = time.Now()
			}
		}
		close(s.ready)
	}
	c.mu.Unlock()
}

// onTopic handles a pattern subscription's topic event: where a topic
// starts, or why it is not delivered.
func (c *Client) onTopic(ev *event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subs[ev.Sub]
	if s == nil || !s.pattern || s.positions == nil {
		return
	}
	if ev.Code != "" {
		// Not delivered with this position: forget it, so that a resume
		// does not ask for it again (a reset is followed by a topic event
		// of the new epoch).
		delete(s.positions, ev.Topic)
		c.log.Warn("brokerd does not deliver a topic of a pattern subscription", "pattern", s.topic, "topic", ev.Topic, "err", errorOf(ev))
		return
	}
	if p, ok := s.positions[ev.Topic]; ok && p.Epoch == ev.Epoch && p.Next > ev.From {
		return // a resume the client is already past
	}
	s.positions[ev.Topic] = TopicPosition{Next: ev.From, Epoch: ev.Epoch}
}

// patternMsg records a pattern subscription's msg of topic at offset and
// reports whether it is new (a resume may send again what was delivered).
func (c *Client) patternMsg(s *Subscription, topic string, offset uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := s.positions[topic]
	if !ok || s.positions == nil {
		return true
	}
	if offset < p.Next {
		return false
	}
	p.Next = offset + 1
	s.positions[topic] = p
	return true
}

// Positions returns where a pattern subscription stands in each topic it
// has delivered: pass them as SubOptions.Positions (with Since) to resume
// it in another process.
func (s *Subscription) Positions() map[string]TopicPosition {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	out := make(map[string]TopicPosition, len(s.positions))
	for k, v := range s.positions {
		out[k] = v
	}
	return out
}

// unsubbed handles the broker ending a subscription.
func (c *Client) unsubbed(topic string, e *Error) {
	c.mu.Lock()
	if s := c.subs[topic]; s != nil {
		c.endSubLocked(s, e)
	}
	c.mu.Unlock()
}

// endSubLocked ends s with err (nil for an unsubscribe).
func (c *Client) endSubLocked(s *Subscription, err error) {
	if s.ended {
		return
	}
	s.ended = true
	s.err = err
	if c.subs[s.topic] == s {
		delete(c.subs, s.topic)
	}
	close(s.quit)
	if !s.started {
		if err == nil {
			s.err = errors.New("client: unsubscribed before the broker answered")
		}
		close(s.ready)
	}
}

// unsubCommand sends an unsub without waiting for the reply.
func (c *Client) unsubCommand(topic string) {
	_ = c.start(&call{kind: kUnsub, topic: topic})
}

// unsubscribe ends s locally and tells the broker, without waiting.
func (s *Subscription) unsubscribe() {
	c := s.c
	c.mu.Lock()
	was := s.ended
	c.endSubLocked(s, nil)
	c.mu.Unlock()
	if !was {
		c.unsubCommand(s.topic)
	}
}

// deliver hands a batch to the handler goroutine; it blocks while the
// subscription's buffer is full, which stops the connection's reader.
func (s *Subscription) deliver(msgs []Message) {
	select {
	case s.ch <- msgs:
	case <-s.quit:
	}
}

func (s *Subscription) loop() {
	for {
		select {
		case pe := <-s.pch:
			s.handlePresence(pe)
		case batch := <-s.ch:
			for i := range batch {
				select {
				case <-s.quit:
					return
				default:
				}
				s.h(&batch[i])
			}
		case <-s.quit:
			return
		}
	}
}

// Topic returns the topic or pattern subscribed to.
func (s *Subscription) Topic() string { return s.topic }

// Info returns the broker's answer to the latest sub (first or resumed).
func (s *Subscription) Info() SubInfo {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.info
}

// Next returns the offset the subscription delivers next.
func (s *Subscription) Next() uint64 { return s.next.Load() }

// Done is closed when the subscription has ended: Unsubscribe, Close, or
// the broker or a failed resume ended it (Err says why).
func (s *Subscription) Done() <-chan struct{} { return s.quit }

// Err returns why the subscription ended: nil while it runs or after
// Unsubscribe, an *Error for the broker's reasons (ErrTakenOver,
// ErrForbidden, ErrEpochMismatch, ...), ErrClosed after Close.
func (s *Subscription) Err() error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.err
}

// Unsubscribe ends the subscription and waits for the broker's answer.
// Messages not yet handed to the handler are dropped.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	c := s.c
	c.mu.Lock()
	if s.ended {
		c.mu.Unlock()
		return nil
	}
	c.endSubLocked(s, nil)
	connected := c.cur != nil
	c.mu.Unlock()
	if !connected {
		return nil // the broker forgot it with the connection
	}
	_, err := c.wait(ctx, &call{kind: kUnsub, topic: s.topic})
	if errors.Is(err, errLost) || errors.Is(err, ErrNotSubscribed) {
		return nil
	}
	return err
}

// Ack acknowledges, for the subscription's durable consumer, every
// message up to and including offset, and waits until the broker has
// stored it. After a reconnect the consumer resumes after the highest
// acknowledged offset. Acks are cumulative: acknowledging every few
// messages is enough.
func (s *Subscription) Ack(ctx context.Context, offset uint64) error {
	if s.opts.Consumer == "" {
		return &Error{Code: CodeBadRequest, Message: "Ack needs a subscription with a Consumer"}
	}
	s.c.mu.Lock()
	epoch := s.info.Epoch
	s.c.mu.Unlock()
	_, err := s.c.wait(ctx, &call{kind: kAck, retry: true, topic: s.topic, consumer: s.opts.Consumer, offset: offset, epoch: epoch})
	return err
}
