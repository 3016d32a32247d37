package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// benchStorage names the topic of each storage in the benchmarks below:
// one server holds both, so both are measured in the same run.
var benchStorage = []struct{ name, topic string }{{"durable", "orders.bench"}, {"ephemeral", "cursor.bench"}}

func benchServer(b *testing.B) *testServer {
	return startServer(b, withPolicies(b, broker.Policy{Match: "cursor.>", Ephemeral: true, Retention: broker.Retention{MaxMessages: 10000}}))
}

// BenchmarkPublishLatency: one connection publishes and waits for each
// ok before the next, over a real WebSocket, to a server on a real bbolt
// file (fsync on). ns/op is the latency of one publish.
func BenchmarkPublishLatency(b *testing.B) {
	for _, s := range benchStorage {
		b.Run(s.name, func(b *testing.B) {
			ts := benchServer(b)
			c := dial(b, ts)
			b.ResetTimer()
			for range b.N {
				c.pub(s.topic, `{"x":1,"y":2}`)
			}
		})
	}
}

// BenchmarkFanoutStorage: one publisher sends b.N messages without
// waiting for their ok; 100 subscribers over real WebSockets each receive
// all of them. ns/op is per message delivered to every subscriber.
func BenchmarkFanoutStorage(b *testing.B) {
	const subs = 100
	for _, s := range benchStorage {
		b.Run(fmt.Sprintf("%s/subs=%d", s.name, subs), func(b *testing.B) {
			ts := benchServer(b)
			var cs []*client
			for range subs {
				c := dial(b, ts)
				c.sub(s.topic, nil)
				cs = append(cs, c)
			}
			p := dial(b, ts)
			b.ResetTimer()
			for range b.N {
				p.send(`{"op":"pub","topic":"` + s.topic + `","data":{"x":1,"y":2}}`)
			}
			for _, c := range cs {
				eventually(b, 5*time.Minute, "every message at every subscriber", func() bool { return c.msgCount(s.topic) >= b.N })
			}
		})
	}
}
