package cluster

import (
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/brokerd/brokerd/broker"
)

var _ broker.Claims = (*Node)(nil)

// Durable consumers' take-over across nodes (broker.Claims). A node whose
// client subscribes with a durable consumer publishes a claim on
// brokerd.<cluster>.claim: the consumer, the topic and a hybrid logical
// clock stamp. Every other node ends its own live subscription of that
// consumer and topic when the claim is later than it, or announces its own
// again when it is the later one, so that exactly one stays live. Claims
// are best effort: a node cut off from NATS when one is made misses it,
// so on reconnecting every node announces its live consumer subscriptions
// again, and the older of each pair ends then.

// maxClaim bounds a claim message; larger ones are ignored.
const maxClaim = 4 << 10

type claimMsg struct {
	Consumer string `json:"c"`
	Topic    string `json:"t"`
	Time     int64  `json:"ts"`
	Node     string `json:"n"`
}

func (n *Node) claimSubject() string { return n.prefix + "claim" }

// ClaimStamp returns a stamp later than any this node made or received.
func (n *Node) ClaimStamp() broker.ClaimStamp {
	for {
		old := n.clock.Load()
		next := max(time.Now().UnixNano(), old+1)
		if n.clock.CompareAndSwap(old, next) {
			return broker.ClaimStamp{Time: next, Node: n.cfg.Node}
		}
	}
}

// seeStamp moves the clock past a stamp received from another node.
func (n *Node) seeStamp(t int64) {
	for {
		old := n.clock.Load()
		if t <= old || n.clock.CompareAndSwap(old, t) {
			return
		}
	}
}

// Claim tells the other nodes that consumerKey's subscription to topic is
// live here since stamp.
func (n *Node) Claim(consumerKey, topic string, stamp broker.ClaimStamp) {
	b, err := json.Marshal(claimMsg{Consumer: consumerKey, Topic: topic, Time: stamp.Time, Node: stamp.Node})
	if err != nil || len(b) > maxClaim || n.closed.Load() {
		return
	}
	if err := n.nc.Publish(n.claimSubject(), b); err != nil {
		n.log.Debug("cluster: announcing a consumer's take-over", "err", err)
	}
}

// SetClaimHooks installs the broker's hooks: claimed for other nodes'
// claims, announce after a reconnection to NATS, when claims made
// meanwhile were missed.
func (n *Node) SetClaimHooks(claimed func(consumerKey, topic string, stamp broker.ClaimStamp), announce func()) {
	n.claimHook.Store(&claimed)
	n.announceHook.Store(&announce)
}

// announceClaims has the broker announce its live consumer
// subscriptions again.
func (n *Node) announceClaims() {
	if fp := n.announceHook.Load(); fp != nil && *fp != nil {
		(*fp)()
	}
}

// onClaim hands another node's claim to the broker.
func (n *Node) onClaim(m *nats.Msg) {
	if len(m.Data) > maxClaim {
		return
	}
	var c claimMsg
	if err := json.Unmarshal(m.Data, &c); err != nil || c.Node == n.cfg.Node || c.Consumer == "" || c.Topic == "" {
		return
	}
	n.seeStamp(c.Time)
	if fp := n.claimHook.Load(); fp != nil && *fp != nil {
		(*fp)(c.Consumer, c.Topic, broker.ClaimStamp{Time: c.Time, Node: c.Node})
	}
}
