package broker

import "github.com/brokerd/brokerd/subproto"

// Claims is implemented by a Store that several brokers share (a
// cluster), so that a durable consumer has one live subscription per
// topic across all of them: a newer sub on any broker takes over, and the
// older one, wherever it is, ends with unsubbed taken_over.
//
// Contract:
//   - ClaimStamp returns a stamp later than every stamp this store made or
//     received (a hybrid logical clock): a sub made after a claim from
//     another broker was seen here is later than that claim.
//   - Claim announces to the other brokers that consumerKey's
//     subscription to topic is live here since stamp. It must not block;
//     delivery is best effort (a broker away from the others at that
//     moment misses it).
//   - SetClaimHooks installs claimed, called from the store's own
//     goroutine with each claim another broker made, and announce, called
//     when claims may have been missed (the store was cut off from the
//     others and is back): the broker then announces each of its live
//     consumer subscriptions again with Claim. Neither may block for long.
type Claims interface {
	ClaimStamp() ClaimStamp
	Claim(consumerKey, topic string, stamp ClaimStamp)
	SetClaimHooks(claimed func(consumerKey, topic string, stamp ClaimStamp), announce func())
}

// ClaimStamp orders the subscriptions of one durable consumer and topic
// across brokers: of two, the later one holds the consumer.
type ClaimStamp struct {
	Time int64  // hybrid logical clock: unix nanoseconds, never repeated by one store
	Node string // the broker that made it, to order equal times
}

// Before tells whether a is earlier than b.
func (a ClaimStamp) Before(b ClaimStamp) bool {
	return a.Time < b.Time || a.Time == b.Time && a.Node < b.Node
}

// claimedElsewhere ends this broker's live subscription of consumerKey
// to topic when another broker's claim is later; when this broker's is
// the later one it is announced again, so that the other ends its own.
func (srv *Server) claimedElsewhere(consumerKey, topic string, stamp ClaimStamp) {
	k := consumerTopic{consumerKey, topic}
	srv.cmu.Lock()
	sub := srv.consumers[k]
	if sub == nil {
		srv.cmu.Unlock()
		return
	}
	if !sub.claim.Before(stamp) {
		mine := sub.claim
		srv.cmu.Unlock()
		if cl, ok := srv.store.(Claims); ok && mine != stamp {
			cl.Claim(consumerKey, topic, mine)
		}
		return
	}
	delete(srv.consumers, k)
	srv.cmu.Unlock()
	sub.sess.endSub(sub, subproto.CodeTakenOver)
}

// announceClaims announces every live consumer subscription of this
// broker again, after the store may have missed other brokers' claims.
func (srv *Server) announceClaims() {
	cl, ok := srv.store.(Claims)
	if !ok {
		return
	}
	type claim struct {
		k     consumerTopic
		stamp ClaimStamp
	}
	srv.cmu.Lock()
	list := make([]claim, 0, len(srv.consumers))
	for k, sub := range srv.consumers {
		list = append(list, claim{k, sub.claim})
	}
	srv.cmu.Unlock()
	for _, c := range list {
		cl.Claim(c.k.consumer, c.k.topic, c.stamp)
	}
}

// claim stamps sub as the newest subscription of its consumer and topic
// and, in a cluster, tells the other brokers; the older subscription on
// this broker, if any, is returned.
func (srv *Server) claim(sub *subscription) *subscription {
	cl, ok := srv.store.(Claims)
	if ok {
		sub.claim = cl.ClaimStamp()
	}
	old := srv.takeOver(sub)
	if ok {
		cl.Claim(sub.consumerKey, sub.topic, sub.claim)
	}
	return old
}
