package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/subproto"
	"github.com/lxzan/gws"
)

// countingClient counts the msg events it receives, without decoding.
type countingClient struct {
	gws.BuiltinEventHandler
	want int64
	n    atomic.Int64
	done chan struct{}
	once sync.Once
}

var msgMark = []byte(`"op":"msg"`)

func (c *countingClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	if c.n.Add(int64(bytes.Count(m.Bytes(), msgMark))) >= c.want {
		c.once.Do(func() { close(c.done) })
	}
	m.Close()
}

// BenchmarkPatternResume measures a subscriber catching up on 1,000
// topics × 100 messages over one connection: time to caught up (ns/op)
// and the process's peak heap while it does. "positions" and "since" are
// one pattern subscription (v1.1); "topics" is the v1.0 way, one
// subscription per topic from offset 1.
func BenchmarkPatternResume(b *testing.B) {
	const topics, per = 1000, 100
	ts := startServer(b, func(sc *serverConfig) {
		sc.Broker.MaxSubscriptions = topics + 1
		sc.Store.NoSync = true
	})
	var wg sync.WaitGroup
	for i := range topics {
		for k := range per {
			wg.Add(1)
			ts.Store.AppendAsync(fmt.Sprintf("bench.%d", i), []byte(fmt.Sprintf(`{"i":%d,"text":"a message of a chat room"}`, k)), "", func(_ broker.Appended, err error) {
				if err != nil {
					b.Error(err)
				}
				wg.Done()
			})
		}
	}
	wg.Wait()
	positions := map[string]any{}
	for i := range topics {
		positions[fmt.Sprintf("bench.%d", i)] = map[string]any{"from": 1}
	}
	posCmd, _ := json.Marshal(map[string]any{"op": "sub", "id": 1, "topic": "bench.>", "positions": positions})
	sinceCmd := []byte(`{"op":"sub","id":1,"topic":"bench.>","since":0}`)
	var topicCmds bytes.Buffer
	for i := range topics {
		fmt.Fprintf(&topicCmds, `{"op":"sub","topic":"bench.%d","from":1}`+"\n", i)
	}
	for _, v := range []struct {
		name   string
		frames [][]byte
	}{
		{"positions", [][]byte{posCmd}},
		{"since", [][]byte{sinceCmd}},
		{"topics", [][]byte{topicCmds.Bytes()}},
	} {
		b.Run(v.name, func(b *testing.B) {
			var peak atomic.Uint64
			stop := make(chan struct{})
			sampled := make(chan struct{})
			runtime.GC()
			go func() {
				defer close(sampled)
				var ms runtime.MemStats
				for {
					runtime.ReadMemStats(&ms)
					if ms.HeapInuse > peak.Load() {
						peak.Store(ms.HeapInuse)
					}
					select {
					case <-stop:
						return
					case <-time.After(5 * time.Millisecond):
					}
				}
			}()
			for b.Loop() {
				c := &countingClient{want: topics * per, done: make(chan struct{})}
				conn, _, err := gws.NewClient(c, &gws.ClientOption{Addr: ts.URL,
					RequestHeader: http.Header{"Sec-WebSocket-Protocol": {subproto.Subprotocol}}})
				if err != nil {
					b.Fatal(err)
				}
				go conn.ReadLoop()
				for _, f := range v.frames {
					if err := conn.WriteMessage(gws.OpcodeText, f); err != nil {
						b.Fatal(err)
					}
				}
				select {
				case <-c.done:
				case <-time.After(2 * time.Minute):
					b.Fatalf("caught up on %d of %d messages", c.n.Load(), topics*per)
				}
				conn.WriteClose(1000, nil)
			}
			close(stop)
			<-sampled
			b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MB")
			b.ReportMetric(float64(topics*per)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
