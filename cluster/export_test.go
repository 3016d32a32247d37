package cluster

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
