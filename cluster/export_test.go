package cluster

import (
	"context"

	"github.com/brokerd/brokerd/broker"
)

// SimulateLiveOutage makes this node miss the live records of topic, as
// while it was cut off from NATS, until the returned function restores
// the subscription and runs the repair a reconnect runs.
func (n *Node) SimulateLiveOutage(topic string) (reconnect func()) {
	n.imu.Lock()
	in := n.interest[topic]
	_ = in.sub.Unsubscribe()
	n.imu.Unlock()
	return func() {
		n.imu.Lock()
		in.sub, _ = n.nc.ChanSubscribe(n.liveSubject(topic), n.liveCh)
		n.imu.Unlock()
		_ = n.nc.Flush()
		n.repairLive()
	}
}

// Followers returns the followers of topic's partition as its owner sees
// them: those acknowledgements wait for, and those its lease names.
func (n *Node) Followers(topic string) (want, listed []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := &n.parts[n.partition(topic)]
	return append([]string(nil), st.want...), append([]string(nil), st.listed...)
}

// PauseFollowing makes this node miss the records owners send it as a
// follower, as while its subscription was gone, until the returned
// function restores the subscription.
func (n *Node) PauseFollowing() (resume func()) {
	_ = n.followSub.Unsubscribe()
	// The unsubscription must reach the server before the caller goes
	// on: on a busy machine records sent right after it reached this
	// node all the same.
	_ = n.nc.Flush()
	return func() {
		n.followSub, _ = n.nc.Subscribe(n.replSubject(n.cfg.Node), n.serveRepl)
		_ = n.nc.Flush()
	}
}

// SendReplica sends records of topic to node as an owner of term would,
// and returns the node's answer: "ok", "gap", "stale" or "error", with
// the offset it holds up to or misses from.
func (n *Node) SendReplica(node, topic string, term uint64, epoch string, recs []broker.Record) (string, uint64, error) {
	res, err := n.replCall(node, replEntry{topic: topic, term: term, epoch: epoch, recs: recs})
	if err != nil {
		return "", 0, err
	}
	return [...]string{"ok", "gap", "stale", "error", "verify"}[res.st], res.off, nil
}

// SendAgreement tells node, as the owner of term would, that its copy of
// topic agrees with the owner's up to head, and returns its answer as
// SendReplica does.
func (n *Node) SendAgreement(node, topic string, term uint64, epoch string, head uint64) (string, uint64, error) {
	res, err := n.replCall(node, replEntry{topic: topic, term: term, epoch: epoch, kind: kindAgree, head: head})
	if err != nil {
		return "", 0, err
	}
	return [...]string{"ok", "gap", "stale", "error", "verify"}[res.st], res.off, nil
}

// CheckCopies has the owner of topic's partition check this node's copies
// of the partition's topics, as a lease pass does for a partition a later
// owner holds.
func (n *Node) CheckCopies(topic string) {
	n.checkCopies([]int{n.partition(topic)})
}

// LocalCommitHook returns the hook the node installed on its local store,
// for a test to wrap it.
func (n *Node) LocalCommitHook() func([]broker.Committed) { return n.onLocalCommit }

// RefuseRenewal does to topic's partition what a renewal refused by the
// lease bucket does (sent with a stale revision after one whose answer
// was lost): the node stops serving it until the next pass claims it back.
func (n *Node) RefuseRenewal(topic string) {
	n.mu.Lock()
	st := &n.parts[n.partition(topic)]
	st.mine, st.ready = false, false
	n.mu.Unlock()
}

// Syncing lists the followers of topic's partition being brought up to
// date.
func (n *Node) Syncing(topic string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for f, v := range n.parts[n.partition(topic)].syncing {
		if v {
			out = append(out, f)
		}
	}
	return out
}

// Serving tells whether this node holds topic's partition and serves it.
func (n *Node) Serving(topic string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := &n.parts[n.partition(topic)]
	return st.mine && st.ready
}

// MarkBeforeAppend does what an append on the owner does before it
// reaches the local store.
func (n *Node) MarkBeforeAppend(topic string) { n.markBeforeAppend(topic) }

// TakeCutShort writes the lease of topic's partition for this node as a
// take with its data would, and stops there, as when the answer was lost
// or the node was killed before its data was made ready.
func (n *Node) TakeCutShort(topic string) error {
	p := n.partition(topic)
	ctx, cancel := n.opCtx()
	defer cancel()
	e, err := n.leases.Get(ctx, leaseKey(p))
	if err != nil {
		return err
	}
	if err := n.setIntent(p, e.Revision(), true); err != nil {
		return err
	}
	_, err = n.leases.Update(ctx, leaseKey(p), leaseValue(n.cfg.Node, 0, nil), e.Revision())
	return err
}

// PauseRPC makes this node answer no request from other nodes, as while
// it was stuck, until the returned function subscribes again; its
// heartbeat goes on.
func (n *Node) PauseRPC() (resume func()) {
	_ = n.rpcSub.Unsubscribe()
	_ = n.nc.Flush()
	return func() {
		n.rpcSub, _ = n.nc.Subscribe(n.rpcSubject(n.cfg.Node), n.serve)
		_ = n.nc.Flush()
	}
}

// AppendInTerm appends data to topic through the store this node would
// use as its owner in term (see data).
func (n *Node) AppendInTerm(topic string, term uint64, data []byte) (broker.Appended, error) {
	st, _, err := n.data(n.partition(topic), term, topic)
	if err != nil {
		return broker.Appended{}, err
	}
	return st.Append(context.Background(), topic, data, "")
}
