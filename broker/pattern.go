package broker

import (
	"errors"
	"fmt"
	"strings"

	"github.com/brokerd/brokerd/subproto"
)

// Pattern subscriptions (protocol v1.1) deliver each matching topic like a
// topic subscription: from a position, from since, or from what is
// appended after the ok; per topic in offset order, with no gap and no
// duplicate, replay then live.
//
// A pattern subscription keeps one patTopic per topic it has delivered or
// is about to. Each is live (dispatch queues its records) or lagging (the
// session's writer feeds it from the log, one page per turn, round robin
// between the lagging topics of the subscription and between the
// session's lagging subscriptions). So however many topics a pattern
// replays, one session reads one page at a time, and what it holds is
// bounded by its outbound queue: no reader per topic, no buffer per topic.
//
// A lagging topic records the highest offset dispatch offered it (seen).
// Dispatch hands a record to the subscription after the record is
// readable from the store, so once the log has been read past seen, every
// record not read yet is still to be dispatched: the topic rejoins the
// live stream. Deciding under Session.mu, which dispatch takes too, means
// no record slips in between.

// patternState is the state of a pattern subscription, guarded by
// sess.mu.
type patternState struct {
	since    int64
	hasSince bool
	ifGone   bool
	// opened: the ok is queued; before, dispatch only records topics as
	// lagging, so nothing reaches the client before its ok.
	opened bool
	topics map[string]*patTopic
	lag    []*patTopic // lagging topics, round robin
}

// patTopic is one topic of a pattern subscription, guarded by sess.mu.
type patTopic struct {
	name  string
	epoch string
	// next is the next offset to deliver; 0 while the start is to be
	// found from since (a topic first seen live by a sub with since).
	next      uint64
	seen      uint64 // lagging: the highest offset dispatch offered
	lagging   bool
	announced bool       // the topic event went out
	missed    *[2]uint64 // for the topic event
	blocked   bool       // a coded topic event went out: not delivered any more
	parked    bool       // lagging with nothing to read: waits for dispatch
	// newEpoch, newSeen: dispatch offered records of another epoch (a
	// reset the log reader has not handled yet), up to newSeen.
	newEpoch string
	newSeen  uint64
}

// lagTopicLocked makes pt fed from the log.
func (s *Session) lagTopicLocked(sub *subscription, pt *patTopic) {
	if pt.lagging {
		return
	}
	pt.lagging = true
	sub.pat.lag = append(sub.pat.lag, pt)
	if sub.pat.opened {
		s.setLaggingLocked(sub)
	}
}

func (s *Session) unlagTopicLocked(sub *subscription, pt *patTopic) {
	if !pt.lagging {
		return
	}
	pt.lagging = false
	for i, x := range sub.pat.lag {
		if x == pt {
			sub.pat.lag = append(sub.pat.lag[:i], sub.pat.lag[i+1:]...)
			break
		}
	}
}

// pushPatLocked queues an event of a pattern subscription (a msg or a
// topic event) in the outbound FIFO.
func (s *Session) pushPatLocked(sub *subscription, b []byte) {
	s.out = append(s.out, outItem{b: b, sub: sub})
	s.outMsgs++
	s.outBytes += len(b)
	sub.queued++
	s.kickLocked()
}

// announceLocked queues the topic event before pt's first msg.
func (s *Session) announceLocked(sub *subscription, pt *patTopic) {
	if pt.announced {
		return
	}
	pt.announced = true
	s.pushPatLocked(sub, subproto.AppendTopic(nil, &subproto.Topic{Sub: sub.topic, Topic: pt.name, Epoch: pt.epoch, From: pt.next, Missed: pt.missed}))
	pt.missed = nil
}

// blockLocked tells the client why pt is not delivered (code), and stops
// delivering it.
func (s *Session) blockLocked(sub *subscription, pt *patTopic, code subproto.Code, info TopicInfo) {
	s.unlagTopicLocked(sub, pt)
	pt.blocked = true
	s.pushPatLocked(sub, subproto.AppendTopic(nil, &subproto.Topic{Sub: sub.topic, Topic: pt.name, Code: code,
		Epoch: info.Epoch, Earliest: info.Earliest, Latest: info.Head}))
}

// offerPattern hands a live record of topic to a pattern subscription.
// Called from dispatch; it never blocks. A topic without room, or whose
// record does not follow what was delivered, is fed from the log instead.
func (s *Session) offerPattern(sub *subscription, topic, epoch string, off uint64, enc []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || sub.ended {
		return
	}
	p := sub.pat
	pt := p.topics[topic]
	if pt == nil {
		// First seen live: from this record on, or from since when the
		// sub gave it.
		pt = &patTopic{name: topic, epoch: epoch, next: off}
		if p.hasSince && !s.srv.Policy(topic).NoPatternReplay {
			pt.next = 0
		}
		p.topics[topic] = pt
	}
	if pt.blocked {
		return
	}
	if pt.epoch != epoch {
		// A new history: the log reader says so and starts it over.
		if pt.newEpoch != epoch {
			pt.newEpoch, pt.newSeen = epoch, 0
		}
		pt.newSeen = max(pt.newSeen, off)
		s.wakeTopicLocked(sub, pt)
		return
	}
	if pt.next != 0 && off < pt.next {
		return // delivered already
	}
	if pt.lagging || pt.next == 0 || !p.opened || off > pt.next || !s.roomLocked(sub, len(enc)) {
		pt.seen = max(pt.seen, off)
		s.wakeTopicLocked(sub, pt)
		return
	}
	s.announceLocked(sub, pt)
	s.pushPatLocked(sub, enc)
	pt.next++
}

// wakeTopicLocked makes pt fed from the log, and wakes it when it waits.
func (s *Session) wakeTopicLocked(sub *subscription, pt *patTopic) {
	s.lagTopicLocked(sub, pt)
	pt.parked = false
	if sub.parked {
		sub.parked = false
		s.kickLocked()
	}
}

// pumpPattern feeds one lagging topic of a pattern subscription a page
// from the log, and rejoins it to the live stream when it has caught up.
func (s *Session) pumpPattern(sub *subscription) {
	s.mu.Lock()
	if s.closed || sub.ended {
		s.mu.Unlock()
		return
	}
	p := sub.pat
	var pt *patTopic
	for range len(p.lag) {
		x := p.lag[0]
		copy(p.lag, p.lag[1:])
		p.lag[len(p.lag)-1] = x
		if !x.parked {
			pt = x
			break
		}
	}
	if pt == nil {
		if len(p.lag) == 0 {
			s.unlagLocked(sub)
		} else {
			sub.parked = true // every lagging topic waits for dispatch
		}
		s.mu.Unlock()
		return
	}
	next, epoch := pt.next, pt.epoch
	n := min(s.srv.cfg.ReplayPage, s.shareLocked()-sub.queued, s.srv.cfg.QueueMessages-s.outMsgs)
	maxBytes := s.srv.cfg.QueueBytes - s.outBytes
	s.mu.Unlock()
	if n <= 0 || maxBytes <= 0 {
		return
	}
	st := s.srv.store
	info, ok, err := st.Topic(pt.name)
	if errors.Is(err, ErrUnavailable) {
		s.retryUnavailable(sub, pt)
		return
	}
	if err != nil {
		s.log.Error("reading topic metadata", "topic", pt.name, "err", err)
		s.endSub(sub, subproto.CodeInternal)
		return
	}
	if !ok {
		// Deleted: forget it; a new log of that name starts over.
		s.mu.Lock()
		if p.topics[pt.name] == pt {
			s.unlagTopicLocked(sub, pt)
			delete(p.topics, pt.name)
		}
		s.mu.Unlock()
		return
	}
	from := next
	var start Start
	var serr *subproto.Error
	if next == 0 && info.Epoch == epoch {
		req := StartRequest{Since: p.since, HasSince: true, IfGone: p.ifGone}
		f, err := startFacts(st, pt.name, info, req, "")
		if errors.Is(err, ErrUnavailable) {
			s.retryUnavailable(sub, pt)
			return
		}
		if err != nil {
			s.log.Error("finding where a topic starts", "topic", pt.name, "err", err)
			s.endSub(sub, subproto.CodeInternal)
			return
		}
		start, serr = decideStart(req, f)
		from = start.Offset
	}
	var recs []Record
	if info.Epoch == epoch && serr == nil && from <= info.Head {
		recs, err = st.Read(pt.name, from, n, maxBytes)
		if errors.Is(err, ErrUnavailable) {
			s.retryUnavailable(sub, pt)
			return
		}
		if err != nil && !errors.Is(err, ErrTopicNotFound) {
			s.log.Error("reading topic log", "topic", pt.name, "err", err)
			s.endSub(sub, subproto.CodeInternal)
			return
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || sub.ended || pt.blocked || !pt.lagging || pt.next != next || pt.epoch != epoch {
		return
	}
	switch {
	case info.Epoch != epoch:
		// The history was reset: say so, then deliver the new epoch
		// from its first offset.
		s.pushPatLocked(sub, subproto.AppendTopic(nil, &subproto.Topic{Sub: sub.topic, Topic: pt.name, Code: subproto.CodeEpochMismatch,
			Epoch: info.Epoch, Earliest: info.Earliest, Latest: info.Head}))
		pt.epoch, pt.next, pt.announced, pt.missed = info.Epoch, info.Earliest, false, nil
		pt.seen = 0
		if pt.newEpoch == info.Epoch {
			pt.seen = pt.newSeen
		}
		pt.newEpoch, pt.newSeen = "", 0
		return
	case serr != nil:
		s.blockLocked(sub, pt, serr.Code, info)
		return
	case next == 0:
		pt.next, pt.missed = start.Offset, start.Missed
	}
	if len(recs) == 0 && info.Earliest > pt.next || len(recs) > 0 && recs[0].Offset > pt.next {
		// Retention removed records this topic had not delivered yet.
		if !p.ifGone || pt.announced {
			s.blockLocked(sub, pt, subproto.CodeOffsetOutOfRange, info)
			return
		}
		first := info.Earliest
		if len(recs) > 0 {
			first = recs[0].Offset
		}
		pt.missed = &[2]uint64{pt.next, first - 1}
		pt.next = first
	}
	before := pt.next
	if len(recs) > 0 {
		size := 0
		for i := range recs {
			size += len(recs[i].Data) + len(pt.name) + len(sub.topic) + 80
		}
		arena := make([]byte, 0, size)
		for i := range recs {
			r := &recs[i]
			if r.Offset != pt.next {
				continue
			}
			s.announceLocked(sub, pt)
			at := len(arena)
			arena = subproto.AppendMsg(arena, pt.name, r.Offset, r.Time, r.Data, sub.topic)
			s.pushPatLocked(sub, arena[at:len(arena):len(arena)])
			pt.next++
		}
	}
	switch {
	case len(recs) < n && pt.next > pt.seen:
		// Read past everything dispatch has offered: live again.
		s.unlagTopicLocked(sub, pt)
	case pt.next == before:
		// Nothing to read yet: wait for dispatch instead of reading
		// again and again.
		pt.parked = true
	}
	if len(p.lag) == 0 {
		s.unlagLocked(sub)
	}
}

// planEntry is where a pattern subscription starts one topic.
type planEntry struct {
	topic  string
	info   TopicInfo
	start  Start
	code   subproto.Code // the topic is not delivered: why
	exists bool
}

// planPattern lists the topics a pattern sub replays: those it has a
// position for, and, with since, the matching topics that hold records at
// or after since. More than MaxPatternTopics gives too_many_topics.
func (s *Session) planPattern(cmd *subproto.Command) ([]planEntry, *subproto.Error, error) {
	st := s.srv.store
	limit := s.srv.cfg.MaxPatternTopics
	tooMany := &subproto.Error{Code: subproto.CodeTooManyTopics, ID: cmd.ID,
		Message: fmt.Sprintf("the pattern would replay more than %d topics", limit)}
	if len(cmd.Positions) > limit {
		return nil, tooMany, nil
	}
	var plan []planEntry
	given := make(map[string]bool, len(cmd.Positions))
	for _, pos := range cmd.Positions {
		given[pos.Topic] = true
		if s.srv.Policy(pos.Topic).NoPatternReplay {
			continue // live only: delivered from what is appended after the ok
		}
		info, ok, err := st.Topic(pos.Topic)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			// No log (deleted, or never written): delivered from its
			// first offset when it is written.
			continue
		}
		req := StartRequest{From: subproto.From{Kind: subproto.FromOffset, Offset: pos.From}, Epoch: pos.Epoch, IfGone: cmd.IfGone != ""}
		e, err := planTopic(st, info, req)
		if err != nil {
			return nil, nil, err
		}
		plan = append(plan, e)
	}
	if !cmd.HasSince {
		return plan, nil, nil
	}
	prefix := literalPrefix(cmd.Topic)
	after := prefix
	for {
		page, err := st.Topics(after, 1000)
		if err != nil {
			return nil, nil, err
		}
		for _, info := range page {
			if !strings.HasPrefix(info.Topic, prefix) {
				return plan, nil, nil
			}
			if given[info.Topic] || !subproto.Match(cmd.Topic, info.Topic) || info.Earliest > info.Head ||
				s.srv.Policy(info.Topic).NoPatternReplay {
				continue
			}
			e, err := planTopic(st, info, StartRequest{Since: cmd.Since, HasSince: true, IfGone: cmd.IfGone != ""})
			if err != nil {
				return nil, nil, err
			}
			if e.code == "" && e.start.Offset > info.Head {
				continue // nothing at or after since
			}
			if len(plan) >= limit {
				return nil, tooMany, nil
			}
			plan = append(plan, e)
		}
		if len(page) < 1000 {
			return plan, nil, nil
		}
		after = page[len(page)-1].Topic
	}
}

func planTopic(st Store, info TopicInfo, req StartRequest) (planEntry, error) {
	e := planEntry{topic: info.Topic, info: info, exists: true}
	f, err := startFacts(st, info.Topic, info, req, "")
	if errors.Is(err, ErrTopicNotFound) {
		return planEntry{topic: info.Topic}, nil
	}
	if err != nil {
		return e, err
	}
	start, serr := decideStart(req, f)
	if serr != nil {
		e.code = serr.Code
	}
	e.start = start
	return e, nil
}

// literalPrefix is the part of pattern before its first wildcard, up to
// and including the dot before it: every matching topic starts with it.
func literalPrefix(pattern string) string {
	n := 0
	for {
		i := strings.IndexByte(pattern[n:], '.')
		if i < 0 {
			return pattern[:n]
		}
		seg := pattern[n : n+i]
		if seg == "*" || seg == ">" {
			return pattern[:n]
		}
		n += i + 1
	}
}

func (s *Session) subscribePattern(cmd *subproto.Command) {
	plan, perr, err := s.planPattern(cmd)
	if err != nil {
		s.replyErr(storeError(cmd.ID, err), nil)
		return
	}
	if perr != nil {
		s.replyErr(perr, nil)
		return
	}
	p := &patternState{since: cmd.Since, hasSince: cmd.HasSince, ifGone: cmd.IfGone != "", topics: make(map[string]*patTopic, len(plan))}
	sub := &subscription{sess: s, topic: cmd.Topic, pattern: true, live: true, pat: p}
	for i := range plan {
		e := &plan[i]
		if !e.exists {
			continue
		}
		pt := &patTopic{name: e.topic, epoch: e.info.Epoch, next: e.start.Offset, missed: e.start.Missed}
		p.topics[e.topic] = pt
		if e.code != "" {
			pt.blocked = true
			continue
		}
		pt.lagging = true
		p.lag = append(p.lag, pt)
	}
	if in, ok := s.srv.store.(Interested); ok {
		if err := in.Interest(cmd.Topic, true); err != nil {
			s.replyErr(storeError(cmd.ID, err), nil)
			return
		}
		sub.interested = true
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.srv.loseInterest(sub)
		return
	}
	if _, dup := s.subs[cmd.Topic]; dup {
		s.mu.Unlock()
		s.srv.loseInterest(sub)
		s.replyErr(errAlreadySubscribed(cmd.ID, cmd.Topic), nil)
		return
	}
	s.subs[cmd.Topic] = sub
	s.mu.Unlock()
	s.srv.stats.Subscriptions.Add(1)
	// Into the tree before the ok: a record dispatched from now on is
	// either offered (and, before the ok, recorded for the log) or
	// readable by the first page of its topic.
	s.srv.pmu.Lock()
	s.srv.patterns.insert(cmd.Topic, sub)
	s.srv.npatterns.Store(int64(s.srv.patterns.n))
	s.srv.pmu.Unlock()

	s.mu.Lock()
	ended := sub.ended
	if !ended {
		if cmd.ID != 0 {
			s.replyLocked(subproto.AppendOK(nil, &subproto.OK{ID: cmd.ID, Topic: cmd.Topic}))
		}
		for i := range plan {
			if e := &plan[i]; e.code != "" {
				s.pushPatLocked(sub, subproto.AppendTopic(nil, &subproto.Topic{Sub: sub.topic, Topic: e.topic, Code: e.code,
					Epoch: e.info.Epoch, Earliest: e.info.Earliest, Latest: e.info.Head}))
			}
		}
		p.opened = true
		if len(p.lag) > 0 {
			s.setLaggingLocked(sub)
		}
	}
	s.mu.Unlock()
	// A close that raced with the insert has detached the subscription
	// already: take it out of the tree again.
	if ended {
		s.srv.pmu.Lock()
		s.srv.patterns.remove(cmd.Topic, sub)
		s.srv.npatterns.Store(int64(s.srv.patterns.n))
		s.srv.pmu.Unlock()
	}
}
