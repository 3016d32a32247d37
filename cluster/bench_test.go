package cluster_test

import (
	"sync"
	"testing"
	"time"
)

// BenchmarkAppend measures appends through a cluster node by 64 callers,
// each waiting for its record's acknowledgement: a node alone without
// replication (replicas=1), alone with automatic replicas (nothing to wait
// for but the local copy), and the owner of two with automatic replicas
// (a follower's copy too). The stores do not fsync: this is the cluster's
// own cost. One op is one acknowledged append.
func BenchmarkAppend(b *testing.B) {
	for _, c := range []struct {
		name            string
		nodes, replicas int
	}{{"alone/replicas=1", 1, 1}, {"alone/replicas=auto", 1, 0}, {"two/replicas=auto", 2, 0}} {
		b.Run(c.name, func(b *testing.B) {
			url := startNATS(b)
			nodes := startClusterR(b, url, "bench", c.nodes, c.replicas)
			owner := nodes[0]
			topic := topicOwnedBy(b, owner, "bench.")
			if c.nodes > 1 {
				waitFor(b, "a follower in sync", func() bool {
					_, listed := owner.Node.Followers(topic)
					return len(listed) == 1
				})
			}
			next := make(chan struct{})
			var wg sync.WaitGroup
			for range 64 {
				wg.Go(func() {
					for range next {
						if _, err := owner.Node.Append(b.Context(), topic, []byte(`"x"`), ""); err != nil {
							b.Error(err)
						}
					}
				})
			}
			b.ResetTimer()
			start := time.Now()
			for b.Loop() {
				next <- struct{}{}
			}
			close(next)
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "acks/s")
		})
	}
}
