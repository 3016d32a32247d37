package server_test

import (
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

// BenchmarkIdleConnection reports the Go memory (heap in use plus
// goroutine stacks) one idle, subscribed connection costs the server. The
// clients are bare sockets in the same process; their share (a few
// hundred bytes each) is included.
func BenchmarkIdleConnection(b *testing.B) {
	const n = 2000
	ts := startServer(b)
	upgrade := "GET /ws HTTP/1.1\r\nHost: " + ts.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Protocol: brokerd.v1.json\r\n\r\n"
	// A masked text frame: {"op":"sub","topic":"idle"} with a zero mask.
	sub := []byte(`{"op":"sub","topic":"idle"}`)
	frame := append([]byte{0x81, 0x80 | byte(len(sub)), 0, 0, 0, 0}, sub...)
	var stack uint64
	measure := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		stack = ms.StackInuse
		return ms.HeapInuse + ms.StackInuse
	}
	for i := 0; i < b.N; i++ {
		before := measure()
		stackBefore := stack
		conns := make([]net.Conn, 0, n)
		for j := 0; j < n; j++ {
			c, err := net.Dial("tcp", ts.Host)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.WriteString(c, upgrade); err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(frame); err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
		}
		// The 101, the welcome and the ok stay unread in the sockets'
		// buffers: they are small.
		for ts.Broker.Stats().Subscriptions.Load() < n {
			time.Sleep(10 * time.Millisecond)
		}
		after := measure()
		if f := os.Getenv("BROKERD_HEAP_PROFILE"); f != "" {
			if out, err := os.Create(f); err == nil {
				_ = pprof.Lookup("heap").WriteTo(out, 0)
				out.Close()
			}
		}
		b.ReportMetric(float64(after-before)/n, "bytes/conn")
		b.ReportMetric(float64(stack-stackBefore)/n, "stack-bytes/conn")
		b.ReportMetric(float64(runtime.NumGoroutine())/n, "goroutines/conn")
		for _, c := range conns {
			_ = c.Close()
		}
		for ts.Broker.Stats().Connections.Load() > 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
}
