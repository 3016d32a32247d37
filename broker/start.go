package broker

import (
	"fmt"

	"github.com/brokerd/brokerd/subproto"
)

// Features are the protocol v1.1 features this broker has, listed in
// welcome.
var Features = []string{subproto.FeatureLast, subproto.FeatureSince, subproto.FeaturePatternReplay, subproto.FeatureAckEpoch, subproto.FeaturePresence}

// StartRequest is what a sub asks about where it starts.
type StartRequest struct {
	From     subproto.From
	Last     int   // 0: none
	Since    int64 // with HasSince
	HasSince bool
	Epoch    string // "" accepts any epoch
	IfGone   bool   // "if_gone":"earliest"
	Consumer bool   // the sub names a durable consumer
}

// StartFacts is what the store says about the topic when a subscription
// starts.
type StartFacts struct {
	Info TopicInfo
	// Acked is the durable consumer's stored position (HasAcked false when
	// it has none or the sub names no consumer).
	Acked    ConsumerOffset
	HasAcked bool
	// SinceOffset and EarliestTime are what Store.OffsetAt answered for
	// the request's Since (only read when HasSince).
	SinceOffset  uint64
	EarliestTime int64
}

// Start is where a subscription starts.
type Start struct {
	// Offset is the first offset the subscription delivers; Info.Head+1
	// when it delivers only what is appended after the ok.
	Offset uint64
	// Missed is the hole skipped with if_gone, nil when none.
	Missed *[2]uint64
	// Acked is the consumer's acknowledged offset the in-flight window
	// counts from (only meaningful for a consumer).
	Acked uint64
}

// decideStart decides where a subscription starts, or why it cannot. The
// error carries no id: the caller sets it, and sends the range context
// (epoch, earliest, latest) with it. The rules, in order:
//
//  1. An epoch that is not the topic's current one: epoch_mismatch.
//  2. A durable consumer with a position in the current epoch resumes
//     after it. A position of an older epoch, without the current epoch
//     named in the sub: epoch_mismatch. Otherwise the consumer starts
//     where the sub asks, as if it had none.
//  3. from: an offset, earliest, latest (the default: Head+1). last N:
//     max(earliest, Head−N+1). since T: the first retained record at or
//     after T (Head+1 when none); on a trimmed log (earliest > 1) a T
//     older than the earliest retained record's time is a start before
//     earliest, whose hole is every trimmed offset (their times are gone).
//  4. A start before earliest: offset_out_of_range, or with if_gone the
//     earliest, reporting the hole as missed.
//  5. A start beyond Head+1: offset_out_of_range.
func decideStart(req StartRequest, f StartFacts) (Start, *subproto.Error) {
	info := &f.Info
	if req.Epoch != "" && req.Epoch != info.Epoch {
		return Start{}, &subproto.Error{Code: subproto.CodeEpochMismatch,
			Message: "the topic's history was reset: offsets of epoch " + req.Epoch + " no longer apply"}
	}
	var st Start
	resumed := false
	if req.Consumer && f.HasAcked {
		switch {
		case f.Acked.Epoch == info.Epoch:
			st.Offset, st.Acked, resumed = f.Acked.Offset+1, f.Acked.Offset, true
		case req.Epoch != info.Epoch:
			return Start{}, &subproto.Error{Code: subproto.CodeEpochMismatch,
				Message: "the consumer acknowledged offsets of epoch " + f.Acked.Epoch + ", which no longer applies; subscribe with the current epoch to start over"}
		}
	}
	trimmedSince := false
	if !resumed {
		switch {
		case req.Last > 0:
			st.Offset = info.Earliest
			if n := uint64(req.Last); info.Head >= n && info.Head-n+1 > info.Earliest {
				st.Offset = info.Head - n + 1
			}
		case req.HasSince:
			st.Offset = f.SinceOffset
			if info.Earliest > 1 && f.SinceOffset == info.Earliest && info.Earliest <= info.Head && req.Since < f.EarliestTime {
				st.Offset, trimmedSince = 1, true
			}
		case req.From.Kind == subproto.FromEarliest:
			st.Offset = info.Earliest
		case req.From.Kind == subproto.FromOffset:
			st.Offset = req.From.Offset
		default:
			st.Offset = info.Head + 1
		}
		st.Acked = st.Offset - 1
	}
	if st.Offset < info.Earliest {
		if !req.IfGone {
			msg := fmt.Sprintf("offset %d is no longer retained; the earliest is %d", st.Offset, info.Earliest)
			if trimmedSince {
				msg = fmt.Sprintf("records of time %d may have been removed: the earliest retained (offset %d) is of time %d", req.Since, info.Earliest, f.EarliestTime)
			}
			return Start{}, &subproto.Error{Code: subproto.CodeOffsetOutOfRange, Message: msg}
		}
		st.Missed = &[2]uint64{st.Offset, info.Earliest - 1}
		st.Offset = info.Earliest
		if st.Acked < st.Offset-1 {
			st.Acked = st.Offset - 1
		}
	}
	if st.Offset > info.Head+1 {
		return Start{}, &subproto.Error{Code: subproto.CodeOffsetOutOfRange,
			Message: fmt.Sprintf("offset %d is beyond the head %d", st.Offset, info.Head)}
	}
	return st, nil
}

// startFacts reads from the store what decideStart needs for topic, whose
// metadata is info. consumerKey is "" when the sub names no consumer.
func startFacts(st Store, topic string, info TopicInfo, req StartRequest, consumerKey string) (StartFacts, error) {
	f := StartFacts{Info: info}
	if consumerKey != "" {
		co, ok, err := st.Consumer(consumerKey, topic)
		if err != nil {
			return f, err
		}
		f.Acked, f.HasAcked = co, ok
	}
	if req.HasSince && !(f.HasAcked && f.Acked.Epoch == info.Epoch) && (req.Epoch == "" || req.Epoch == info.Epoch) {
		off, et, err := st.OffsetAt(topic, req.Since)
		if err != nil {
			return f, err
		}
		f.SinceOffset, f.EarliestTime = off, et
		// The store may have moved on since info was read: keep the
		// answer within info's range.
		f.SinceOffset = max(f.SinceOffset, info.Earliest)
		f.SinceOffset = min(f.SinceOffset, info.Head+1)
	}
	return f, nil
}

// requestOf is the StartRequest of a sub command.
func requestOf(cmd *subproto.Command) StartRequest {
	return StartRequest{From: cmd.From, Last: cmd.Last, Since: cmd.Since, HasSince: cmd.HasSince,
		Epoch: cmd.Epoch, IfGone: cmd.IfGone == "earliest", Consumer: cmd.Consumer != ""}
}

// StartAt decides where a read of topic starts, by the rules of a sub
// (see decideStart) without a consumer: the HTTP history uses it. info is
// the topic's metadata. serr is the protocol error when the request is
// refused; err a store error.
func (srv *Server) StartAt(topic string, info TopicInfo, req StartRequest) (st Start, serr *subproto.Error, err error) {
	req.Consumer = false
	f, err := startFacts(srv.store, topic, info, req, "")
	if err != nil {
		return Start{}, nil, err
	}
	st, serr = decideStart(req, f)
	return st, serr, nil
}
