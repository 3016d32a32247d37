package broker

import (
	"errors"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/subproto"
	"github.com/google/uuid"
	"golang.org/x/time/rate"
)

// Session is one client connection as the broker sees it: its
// subscriptions, its bounded outbound queue and the writer that drains it.
//
// The transport's reader calls HandleFrame; the writer goroutine runs only
// while there is something to write or a subscription to feed from the
// log, so an idle session costs no goroutine of its own.
type Session struct {
	srv  *Server
	conn Conn
	id   string
	log  *slog.Logger

	// pending bounds publishes waiting to be durable; pendingBytes their
	// data (Config.MaxPendingBytes).
	pending      chan struct{}
	pendingBytes budget
	// presenceSlot holds the one presence reply a session may have
	// queued: a list can be large, and a client that asks again and again
	// without reading waits instead of piling them up.
	presenceSlot chan struct{}
	done         chan struct{} // closed when the session closes
	closing      atomic.Bool   // closeWhenFlushed was called: commands are ignored

	// Owned by the reader goroutine (HandleFrame), except authTimer which
	// is also stopped on close.
	authed    bool
	grant     *Grant // nil when auth is off
	user      string // authenticated subject, "" without auth
	authTimer *time.Timer
	limiter   *rate.Limiter // nil when unlimited
	// pubLimits: the publish rate limiters of this connection, one per
	// policy of pubGen that has a rate (see publishAllowed).
	pubLimits map[*Policy]*rate.Limiter
	pubGen    *Policies
	onAuth    func() bool // ConnInfo.OnAuthenticated
	// consumerEpochs: the epoch of this connection's latest subscription
	// of each consumer and topic. The ack command has no epoch; an ack for
	// offsets of an older epoch is refused instead of landing in a new
	// history, where it would skip messages.
	consumerEpochs map[consumerTopic]string

	mu sync.Mutex
	// guarded by mu:
	closed   bool
	out      []outItem // FIFO of frames to write
	outBytes int       // bytes of msg items in out
	outMsgs  int       // msg items in out
	outCtrl  int       // control items in out
	writing  bool      // the writer goroutine runs
	pingDue  bool
	subs     map[string]*subscription // by topic or pattern
	lagging  []*subscription          // subscriptions fed from the log
	closeErr error
	ctrlRoom *sync.Cond // signalled when control frames leave the queue
	// flushClose: close with this code and reason once the queue is
	// written (closeWhenFlushed); nil otherwise.
	flushClose *flushClose
}

type flushClose struct {
	code   uint16
	reason []byte
}

type outItem struct {
	b   []byte
	sub *subscription // nil for replies and other control frames
	// freePending: the reply to a pub or ack; writing it frees the
	// command's pending slot, so replies waiting for a client that does
	// not read hold the client's reader back instead of piling up.
	freePending bool
	// freePresence: the reply to a presence command (up to 512 KiB);
	// writing it frees the session's one presence slot.
	freePresence bool
}

// subscription is one sub of a session. Fields after sess are guarded by
// sess.mu unless noted.
type subscription struct {
	sess        *Session
	topic       string // topic or pattern
	pattern     bool
	t           *topicState // exact subscriptions
	consumer    string      // consumer name as the client gave it
	consumerKey string      // owner-qualified consumer name, "" if none
	maxInflight int
	epoch       string
	claim       ClaimStamp // consumer subscriptions: when it took the consumer over (Claims); set before it is registered

	ended   bool
	live    bool   // receives records from dispatch; else fed from the log
	next    uint64 // next offset to queue
	acked   uint64 // consumer's acknowledged offset
	queued  int    // msg items of this subscription in the queue
	lagging bool   // listed in sess.lagging
	parked  bool   // lagging with nothing to read: skipped until dispatch or an ack wakes it

	interested bool          // pattern: the store was told (Interested); set before use
	pat        *patternState // pattern subscriptions
	// member: a presence subscription's member (set before it is
	// registered), nil for others.
	member *subproto.Member
}

var newline = []byte{'\n'}

func newSession(srv *Server, c Conn, info ConnInfo) *Session {
	id := uuid.NewString()
	var lim *rate.Limiter
	if srv.cfg.CommandRate > 0 {
		lim = rate.NewLimiter(rate.Limit(srv.cfg.CommandRate), srv.cfg.CommandBurst)
	}
	s := &Session{
		limiter:      lim,
		srv:          srv,
		conn:         c,
		id:           id,
		log:          srv.log.With("conn", id, "remote", info.Remote),
		pending:      make(chan struct{}, srv.cfg.MaxPendingPublishes),
		pendingBytes: budget{max: int64(srv.cfg.MaxPendingBytes)},
		presenceSlot: make(chan struct{}, 1),
		done:         make(chan struct{}),
		subs:         make(map[string]*subscription),
	}
	s.ctrlRoom = sync.NewCond(&s.mu)
	return s
}

// ID returns the session's id, also sent to the client in welcome.
func (s *Session) ID() string { return s.id }

// Logger returns the session's logger, tagged with its id.
func (s *Session) Logger() *slog.Logger { return s.log }

func (s *Session) welcome() {
	hb := int(s.srv.cfg.Heartbeat.Seconds())
	s.reply(subproto.AppendWelcome(nil, s.id, s.srv.cfg.Node, s.srv.cfg.Version, hb, Features))
}

// reply queues a control frame (ok, err, pong, welcome, unsubbed). Control
// frames are never dropped, but a client that keeps sending commands
// while it reads nothing is closed when too many replies pile up.
func (s *Session) reply(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replyLocked(b)
}

func (s *Session) replyLocked(b []byte) { s.pushCtrlLocked(outItem{b: b}) }

// replyPending queues the reply to a pub or ack whose pending slot the
// writer frees once the reply is written.
func (s *Session) replyPending(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.pushCtrlLocked(outItem{b: b, freePending: true})
}

func (s *Session) pushCtrlLocked(it outItem) {
	if s.closed {
		return
	}
	// Replies are bounded before they are made (waitCtrlRoom, the pending
	// slots, the subscription limit); this is a safety net only.
	cfg := &s.srv.cfg
	if s.outCtrl >= 2*cfg.QueueMessages+cfg.MaxPendingPublishes+cfg.MaxSubscriptions {
		s.closeLocked(uint16(subproto.CloseSlowConsumer), closeReason(subproto.CloseSlowConsumer, "outbound queue full"), nil)
		return
	}
	s.out = append(s.out, it)
	s.outCtrl++
	s.kickLocked()
}

// waitCtrlRoom holds the reader back while the client has many replies
// it has not read: a client that sends commands but does not read gets
// TCP backpressure, not an unbounded queue.
func (s *Session) waitCtrlRoom() {
	s.mu.Lock()
	for !s.closed && s.outCtrl >= s.srv.cfg.QueueMessages {
		s.ctrlRoom.Wait()
	}
	s.mu.Unlock()
}

func (s *Session) replyErr(e *subproto.Error, ctx *subproto.ErrContext) {
	s.srv.stats.countErr(e.Code)
	s.reply(subproto.AppendErr(nil, e, s.srv.retryCtx(e, ctx)))
}

func (s *Session) ping() {
	s.mu.Lock()
	if !s.closed {
		s.pingDue = true
		s.kickLocked()
	}
	s.mu.Unlock()
}

// kickLocked starts the writer if it is not running.
func (s *Session) kickLocked() {
	if !s.writing && !s.closed {
		s.writing = true
		go s.writeLoop()
	}
}

// share is how many queued messages one subscription may have before it
// falls back to the log.
func (s *Session) shareLocked() int {
	n := len(s.subs)
	if n == 0 {
		n = 1
	}
	sh := s.srv.cfg.QueueMessages / n
	if sh < s.srv.cfg.MinShare {
		sh = s.srv.cfg.MinShare
	}
	return sh
}

func (s *Session) roomLocked(sub *subscription, size int) bool {
	cfg := &s.srv.cfg
	return s.outMsgs < cfg.QueueMessages && s.outBytes+size <= cfg.QueueBytes && sub.queued < s.shareLocked()
}

// windowLocked is how many more messages a consumer subscription may have
// in flight (unacknowledged); effectively unbounded for others.
func (sub *subscription) windowLocked() int {
	if sub.consumerKey == "" {
		return 1 << 30
	}
	inflight := 0
	if sub.next > sub.acked+1 {
		inflight = int(sub.next - sub.acked - 1)
	}
	return sub.maxInflight - inflight
}

func (s *Session) pushMsgLocked(sub *subscription, b []byte) {
	s.out = append(s.out, outItem{b: b, sub: sub})
	s.outMsgs++
	s.outBytes += len(b)
	sub.queued++
	sub.next++
	s.kickLocked()
}

func (s *Session) setLaggingLocked(sub *subscription) {
	sub.live = false
	if !sub.lagging {
		sub.lagging = true
		s.lagging = append(s.lagging, sub)
		s.srv.stats.CatchUps.Add(1)
	}
	s.kickLocked()
}

// offer hands a live record to an exact subscription. Called from
// dispatch with sub.t.mu held. A subscription without room switches to
// reading the log; nothing is dropped.
func (s *Session) offer(sub *subscription, off uint64, enc []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || sub.ended {
		return
	}
	if !sub.live {
		if sub.parked {
			sub.parked = false // something new to read from the log
			s.kickLocked()
		}
		return
	}
	if off < sub.next {
		return
	}
	if off > sub.next || sub.windowLocked() <= 0 || !s.roomLocked(sub, len(enc)) {
		s.setLaggingLocked(sub)
		return
	}
	s.pushMsgLocked(sub, enc)
}

// nextLaggingLocked picks, round robin, a subscription that is fed from
// the log and has room for more.
func (s *Session) nextLaggingLocked() *subscription {
	for i := 0; i < len(s.lagging); i++ {
		sub := s.lagging[0]
		copy(s.lagging, s.lagging[1:])
		s.lagging[len(s.lagging)-1] = sub
		// Room for at least one more byte: a queue full to the byte
		// must drain before the log is read again.
		if !sub.parked && sub.windowLocked() > 0 && s.roomLocked(sub, 1) {
			return sub
		}
	}
	return nil
}

func (s *Session) unlagLocked(sub *subscription) {
	if !sub.lagging {
		return
	}
	sub.lagging = false
	for i, x := range s.lagging {
		if x == sub {
			s.lagging = append(s.lagging[:i], s.lagging[i+1:]...)
			break
		}
	}
}

// writeLoop drains the queue, coalescing what is waiting into one frame,
// and feeds lagging subscriptions from the log while the queue has room.
// It exits when there is nothing left to do.
func (s *Session) writeLoop() {
	var (
		items []outItem
		parts [][]byte
	)
	maxFrame := s.srv.cfg.MaxFrameBytes
	for {
		s.mu.Lock()
		if s.closed {
			s.writing = false
			s.mu.Unlock()
			return
		}
		if s.pingDue {
			s.pingDue = false
			s.mu.Unlock()
			if err := s.conn.WritePing(); err != nil {
				s.writeFailed(err)
				return
			}
			continue
		}
		if s.outMsgs < s.srv.cfg.QueueMessages/2 {
			if sub := s.nextLaggingLocked(); sub != nil {
				s.mu.Unlock()
				s.pump(sub)
				continue
			}
		}
		if len(s.out) == 0 {
			s.writing = false
			if fc := s.flushClose; fc != nil {
				s.closeLocked(fc.code, fc.reason, nil)
			}
			s.mu.Unlock()
			return
		}
		size, n := 0, 0
		for n < len(s.out) && (n == 0 || size+len(s.out[n].b) <= maxFrame) {
			size += len(s.out[n].b) + 1
			n++
		}
		items = append(items[:0], s.out[:n]...)
		rest := copy(s.out, s.out[n:])
		clear(s.out[rest:])
		s.out = s.out[:rest]
		parts = parts[:0]
		delivered, freed, freedPresence := 0, 0, false
		for _, it := range items {
			if it.sub == nil {
				s.outCtrl--
				if it.freePending {
					freed++
				}
				freedPresence = freedPresence || it.freePresence
			} else {
				s.outMsgs--
				s.outBytes -= len(it.b)
				it.sub.queued--
				if it.sub.ended {
					continue // unsubscribed or taken over: drop its queued messages
				}
				delivered++
			}
			if len(parts) > 0 {
				parts = append(parts, newline)
			}
			parts = append(parts, it.b)
		}
		if freed > 0 || len(items) > 0 {
			s.ctrlRoom.Broadcast()
		}
		s.mu.Unlock()
		clear(items)
		if len(parts) == 0 {
			continue
		}
		err := s.conn.WriteFrame(parts)
		for ; freed > 0; freed-- {
			<-s.pending
		}
		if freedPresence {
			<-s.presenceSlot
		}
		if err != nil {
			s.writeFailed(err)
			return
		}
		st := &s.srv.stats
		st.FramesOut.Add(1)
		st.BytesOut.Add(int64(size))
		st.Delivered.Add(int64(delivered))
		clear(parts)
	}
}

func (s *Session) writeFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		s.srv.stats.SlowCloses.Add(1)
		s.log.Info("closing slow consumer: no write progress", "timeout", true)
		s.Close(uint16(subproto.CloseSlowConsumer), closeReason(subproto.CloseSlowConsumer, "no write progress within the write timeout"))
	} else {
		s.Close(uint16(subproto.CloseGoingAway), nil)
	}
	s.mu.Lock()
	s.writing = false
	s.mu.Unlock()
}

// unavailableRetry is how long a subscription fed from the log waits
// before it reads again after the store answered unavailable.
const unavailableRetry = 200 * time.Millisecond

// retryUnavailable parks a subscription fed from the log (for a pattern,
// its topic pt) after the store answered unavailable (in a cluster: a
// partition changing hands, an owner out of reach), and wakes it again a
// moment later. A subscription is not ended for what a failover makes
// unavailable for a while.
func (s *Session) retryUnavailable(sub *subscription, pt *patTopic) {
	s.mu.Lock()
	if pt != nil {
		pt.parked = true
	} else {
		sub.parked = true
	}
	s.mu.Unlock()
	time.AfterFunc(unavailableRetry, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		switch {
		case s.closed || sub.ended:
		case pt != nil:
			if pt.parked && pt.lagging {
				s.wakeTopicLocked(sub, pt)
			}
		case sub.parked:
			sub.parked = false
			s.kickLocked()
		}
	})
}

// pump feeds one lagging subscription a page from the log. When the page
// reaches the end of the log it tries to rejoin the live stream.
func (s *Session) pump(sub *subscription) {
	if sub.pattern {
		s.pumpPattern(sub)
		return
	}
	s.mu.Lock()
	if s.closed || sub.ended || sub.live {
		s.mu.Unlock()
		return
	}
	from := sub.next
	n := min(s.srv.cfg.ReplayPage, sub.windowLocked(), s.shareLocked()-sub.queued, s.srv.cfg.QueueMessages-s.outMsgs)
	maxBytes := s.srv.cfg.QueueBytes - s.outBytes
	s.mu.Unlock()
	if n <= 0 || maxBytes <= 0 {
		return
	}
	sub.t.mu.Lock()
	lastBefore := sub.t.last
	sub.t.mu.Unlock()
	recs, err := s.srv.store.Read(sub.topic, from, n, maxBytes)
	if errors.Is(err, ErrUnavailable) {
		s.retryUnavailable(sub, nil)
		return
	}
	if err != nil && !errors.Is(err, ErrTopicNotFound) {
		s.log.Error("reading topic log", "topic", sub.topic, "err", err)
		s.endSub(sub, subproto.CodeInternal)
		return
	}
	full := len(recs) >= n
	// The page must belong to the subscription's epoch (a reset starts
	// offsets over), and an empty page tells whether retention removed
	// everything from from on.
	info, ok, err := s.srv.store.Topic(sub.topic)
	switch {
	case errors.Is(err, ErrUnavailable):
		s.retryUnavailable(sub, nil)
		return
	case err != nil:
		s.log.Error("reading topic metadata", "topic", sub.topic, "err", err)
		s.endSub(sub, subproto.CodeInternal)
		return
	case !ok:
		s.endSub(sub, subproto.CodeTopicDeleted)
		return
	case info.Epoch != sub.epoch:
		s.srv.adoptEpoch(sub.t, info)
		s.endSub(sub, subproto.CodeEpochMismatch)
		return
	case len(recs) == 0 && info.Earliest > from:
		s.endSub(sub, subproto.CodeOffsetOutOfRange)
		return
	}
	if len(recs) == 0 {
		// A reset that no commit has reported yet leaves the topic state
		// with the old epoch's head: adopt the store's view, or the
		// subscription could never rejoin.
		s.srv.adoptEpoch(sub.t, info)
	}
	s.mu.Lock()
	if s.closed || sub.ended || sub.live || sub.next != from {
		s.mu.Unlock()
		return
	}
	if len(recs) > 0 && recs[0].Offset > from {
		// Retention removed records this subscription had not received
		// yet: end it rather than skip them silently.
		s.mu.Unlock()
		s.endSub(sub, subproto.CodeOffsetOutOfRange)
		return
	}
	// One arena per page; each message is a slice of it.
	size := 0
	for i := range recs {
		size += len(recs[i].Data) + len(sub.topic) + 64
	}
	arena := make([]byte, 0, size)
	for i := range recs {
		r := &recs[i]
		if r.Offset != sub.next {
			continue
		}
		start := len(arena)
		arena = subproto.AppendMsg(arena, sub.topic, r.Offset, r.Time, r.Data, "")
		s.pushMsgLocked(sub, arena[start:len(arena):len(arena)])
	}
	progress := sub.next != from
	s.mu.Unlock()
	if !full {
		// With nothing read, a subscription that cannot rejoin waits for
		// dispatch of its topic (or an ack) instead of spinning.
		s.tryRejoin(sub, !progress, lastBefore)
	}
}

// tryRejoin switches a lagging subscription back to the live stream when
// it has queued everything dispatch has already passed.
//
// When it cannot and park is set, the subscription is parked if nothing
// was dispatched for the topic since lastBefore (read before the log was):
// dispatch wakes it, so it waits instead of reading the log again and
// again. Deciding under t.mu means no dispatch can slip in between.
func (s *Session) tryRejoin(sub *subscription, park bool, lastBefore uint64) {
	t := sub.t
	t.mu.Lock()
	s.mu.Lock()
	switch {
	case s.closed || sub.ended || sub.live:
	case sub.next > t.last && sub.windowLocked() > 0:
		sub.live = true
		s.unlagLocked(sub)
	case park && t.last == lastBefore:
		sub.parked = true
	}
	s.mu.Unlock()
	t.mu.Unlock()
}

// endSub ends a subscription; a non-empty code tells the client with
// unsubbed.
func (s *Session) endSub(sub *subscription, code subproto.Code) {
	s.mu.Lock()
	if sub.ended {
		s.mu.Unlock()
		return
	}
	sub.ended = true
	if s.subs[sub.topic] == sub {
		delete(s.subs, sub.topic)
	}
	s.unlagLocked(sub)
	if code != "" {
		s.replyLocked(subproto.AppendUnsubbed(nil, sub.topic, code))
	}
	s.mu.Unlock()
	s.srv.detach(sub)
}

// detach removes an ended subscription from the server's indexes.
func (srv *Server) detach(sub *subscription) {
	srv.stats.Subscriptions.Add(-1)
	if sub.pattern {
		srv.pmu.Lock()
		srv.patterns.remove(sub.topic, sub)
		srv.npatterns.Store(int64(srv.patterns.n))
		srv.pmu.Unlock()
		srv.loseInterest(sub)
		return
	}
	if sub.member != nil {
		srv.presenceLeave(sub)
	}
	t := sub.t
	t.mu.Lock()
	t.subs, _ = without(t.subs, sub)
	t.mu.Unlock()
	srv.releaseTopic(t)
	if sub.consumerKey != "" {
		srv.dropConsumer(sub)
	}
}

// Close closes the session and its connection with code and reason.
func (s *Session) Close(code uint16, reason []byte) {
	s.mu.Lock()
	s.closeLocked(code, reason, nil)
	s.mu.Unlock()
}

// closeWhenFlushed closes the session with code and reason once what is
// queued (welcome, replies) has been written, so that the client sees it
// before the close; commands that arrive meanwhile are ignored. A client
// that does not read is closed by the write timeout as usual.
func (s *Session) closeWhenFlushed(code uint16, reason []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.flushClose != nil {
		return
	}
	s.flushClose = &flushClose{code: code, reason: reason}
	s.closing.Store(true)
	if len(s.out) == 0 && !s.writing {
		s.closeLocked(code, reason, nil)
		return
	}
	s.kickLocked()
}

// Closed tells the broker the transport's connection has ended.
func (s *Session) Closed(err error) {
	s.mu.Lock()
	s.closeLocked(0, nil, err)
	s.mu.Unlock()
}

// Done is closed when the session has closed.
func (s *Session) Done() <-chan struct{} { return s.done }

func (s *Session) closeLocked(code uint16, reason []byte, err error) {
	if s.closed {
		return
	}
	s.closed = true
	s.closeErr = err
	close(s.done)
	s.ctrlRoom.Broadcast()
	if s.authTimer != nil {
		s.authTimer.Stop()
	}
	subs := make([]*subscription, 0, len(s.subs))
	for _, sub := range s.subs {
		sub.ended = true
		subs = append(subs, sub)
	}
	clear(s.subs)
	clear(s.out)
	s.out = nil
	s.lagging = nil
	// Cleanup takes other locks (lock order) and may block on the
	// transport: do it off this lock.
	s.srv.closers.Add(1)
	go func() {
		defer s.srv.closers.Done()
		if code != 0 {
			s.conn.Close(code, reason)
		}
		for _, sub := range subs {
			s.srv.detach(sub)
		}
		s.srv.forget(s)
	}()
}

// closeReason is the JSON close reason for code with a message for humans.
func closeReason(code subproto.CloseCode, msg string) []byte {
	return subproto.AppendCloseReason(nil, code.String(), msg, 0)
}

// loseInterest pairs the Interest call of a pattern subscription.
func (srv *Server) loseInterest(sub *subscription) {
	if !sub.interested {
		return
	}
	if in, ok := srv.store.(Interested); ok {
		_ = in.Interest(sub.topic, false)
	}
}
