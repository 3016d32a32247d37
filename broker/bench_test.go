package broker

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// discardConn counts what it is given and writes nothing.
type discardConn struct {
	objects atomic.Int64
}

func (c *discardConn) WriteFrame(parts [][]byte) error {
	n := 0
	for _, p := range parts {
		if len(p) != 1 || p[0] != '\n' {
			n++
		}
	}
	c.objects.Add(int64(n))
	return nil
}
func (c *discardConn) WritePing() error     { return nil }
func (c *discardConn) Close(uint16, []byte) {}

// BenchmarkFanout measures the live path: one committed record handed to
// N subscriptions over connections that discard writes. ns/op is per
// published message; deliveries/s counts messages written to sockets.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			st := newMemStore()
			srv, err := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), CommandRate: -1}, st)
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Shutdown(b.Context())
			conns := make([]*discardConn, n)
			sessions := make([]*Session, n)
			for i := range conns {
				conns[i] = &discardConn{}
				s, err := srv.Connect(conns[i], ConnInfo{})
				if err != nil {
					b.Fatal(err)
				}
				s.HandleFrame([]byte(`{"op":"sub","id":1,"topic":"bench.fanout"}`))
				sessions[i] = s
			}
			// Wait until every subscription is live (welcome + ok written).
			for i, s := range sessions {
				for {
					s.mu.Lock()
					sub := s.subs["bench.fanout"]
					live := sub != nil && sub.live
					s.mu.Unlock()
					if live && conns[i].objects.Load() >= 2 {
						break
					}
					time.Sleep(time.Millisecond)
				}
			}
			data := []byte(`{"payload":"` + "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678" + `"}`)
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				// The in-memory store calls the commit hook synchronously.
				st.AppendAsync("bench.fanout", data, "", func(Appended, error) {})
			}
			want := int64(b.N + 2)
			for _, c := range conns {
				for c.objects.Load() < want {
					time.Sleep(50 * time.Microsecond)
				}
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)*float64(n)/el.Seconds(), "deliveries/s")
		})
	}
}

// BenchmarkPubRoundTrip measures a pub through a session: decode, append
// (in-memory store), ok encoded and written.
func BenchmarkPubRoundTrip(b *testing.B) {
	st := newMemStore()
	srv, err := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), CommandRate: -1}, st)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(b.Context())
	c := &discardConn{}
	s, err := srv.Connect(c, ConnInfo{})
	if err != nil {
		b.Fatal(err)
	}
	frame := []byte(`{"op":"pub","id":7,"topic":"bench.pub","data":{"k":"0123456789012345678901234567890123456789012345678901234567890123456789"}}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.HandleFrame(frame)
	}
	for c.objects.Load() < int64(b.N+1) {
		time.Sleep(50 * time.Microsecond)
	}
}

// BenchmarkPubRoundTripParallel is BenchmarkPubRoundTrip from many
// connections at once: what they share (the server-wide budget of pending
// publish bytes, the store) shows as contention.
func BenchmarkPubRoundTripParallel(b *testing.B) {
	st := newMemStore()
	srv, err := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), CommandRate: -1}, st)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(b.Context())
	frame := []byte(`{"op":"pub","id":7,"topic":"bench.pub","data":{"k":"0123456789012345678901234567890123456789012345678901234567890123456789"}}`)
	var (
		mu    sync.Mutex
		conns []*discardConn // kept for the length of the run
	)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := &discardConn{}
		s, err := srv.Connect(c, ConnInfo{})
		if err != nil {
			b.Error(err)
			return
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		n := int64(0)
		for pb.Next() {
			s.HandleFrame(frame)
			n++
		}
		for c.objects.Load() < n+1 {
			time.Sleep(50 * time.Microsecond)
		}
	})
}
