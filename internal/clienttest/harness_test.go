package clienttest_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/server"
	"github.com/brokerd/brokerd/store"
)

const waitTimeout = 15 * time.Second

// TestMain fails the run when goroutines outlive the tests.
func TestMain(m *testing.M) {
	before := goroutines()
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(5 * time.Second)
		for goroutines() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := goroutines(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			fmt.Fprintf(os.Stderr, "goroutine leak: %d goroutines before the tests, %d after\n%s\n", before, n, buf)
			code = 1
		}
	}
	os.Exit(code)
}

// goroutines counts goroutines, leaving out the signal watcher the fuzzer
// starts.
func goroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "os/signal.signal_recv") {
			n++
		}
	}
	return n
}

var discard = slog.New(slog.DiscardHandler)

// testBroker is a whole brokerd in-process on a fixed address, so that it
// can be stopped and started again on the same data directory.
type testBroker struct {
	t    testing.TB
	dir  string
	addr string
	URL  string
	cfg  broker.Config

	mu    sync.Mutex
	st    *store.DB
	b     *broker.Server
	hs    *http.Server
	conns map[*trackedConn]struct{}

	blackhole atomic.Bool // drop everything the broker writes
}

func startBroker(t testing.TB, adjust ...func(*broker.Config)) *testBroker {
	t.Helper()
	tb := &testBroker{t: t, dir: t.TempDir(), conns: make(map[*trackedConn]struct{})}
	tb.cfg = broker.Config{Node: "test", Logger: discard, ShutdownRetryAfter: 200 * time.Millisecond}
	for _, f := range adjust {
		f(&tb.cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tb.addr = ln.Addr().String()
	tb.URL = "ws://" + tb.addr + "/ws"
	tb.start(ln)
	t.Cleanup(tb.stop)
	return tb
}

func (tb *testBroker) start(ln net.Listener) {
	tb.t.Helper()
	st, err := store.Open(tb.dir, &store.Options{Logger: discard, RetentionInterval: -1})
	if err != nil {
		tb.t.Fatalf("store.Open: %v", err)
	}
	b, err := broker.New(tb.cfg, st)
	if err != nil {
		tb.t.Fatalf("broker.New: %v", err)
	}
	edge, err := server.New(server.Config{Logger: discard}, b)
	if err != nil {
		tb.t.Fatalf("server.New: %v", err)
	}
	hs := &http.Server{Handler: edge.Handler(), ErrorLog: nil}
	tb.mu.Lock()
	tb.st, tb.b, tb.hs = st, b, hs
	tb.mu.Unlock()
	go func() { _ = hs.Serve(&trackingListener{Listener: ln, tb: tb}) }()
}

// stop shuts the broker down gracefully: 1001 closes with retry_after_ms.
func (tb *testBroker) stop() {
	tb.mu.Lock()
	st, b, hs := tb.st, tb.b, tb.hs
	tb.st, tb.b, tb.hs = nil, nil, nil
	tb.mu.Unlock()
	if b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = hs.Close()
	if err := b.Shutdown(ctx); err != nil {
		tb.t.Errorf("broker.Shutdown: %v", err)
	}
	for b.Stats().Connections.Load() > 0 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	tb.dropConns()
	if err := st.Check(); err != nil {
		tb.t.Errorf("store check: %v", err)
	}
	if err := st.Close(); err != nil {
		tb.t.Errorf("store.Close: %v", err)
	}
}

// restart stops the broker and starts it again on the same directory and
// address.
func (tb *testBroker) restart() {
	tb.t.Helper()
	tb.stop()
	var ln net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", tb.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		tb.t.Fatalf("listen again on %s: %v", tb.addr, err)
	}
	tb.start(ln)
}

// dropConns cuts every connection at the server side, without a close
// frame.
func (tb *testBroker) dropConns() {
	tb.mu.Lock()
	conns := make([]*trackedConn, 0, len(tb.conns))
	for c := range tb.conns {
		conns = append(conns, c)
	}
	tb.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

func (tb *testBroker) broker() *broker.Server {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.b
}

func (tb *testBroker) topic(name string) broker.TopicInfo {
	tb.mu.Lock()
	st := tb.st
	tb.mu.Unlock()
	info, _, err := st.Topic(name)
	if err != nil {
		tb.t.Fatalf("store.Topic: %v", err)
	}
	return info
}

func (tb *testBroker) records(topic string) []broker.Record {
	tb.mu.Lock()
	st := tb.st
	tb.mu.Unlock()
	recs, err := st.Read(topic, 1, 100000, 1<<30)
	if err != nil {
		tb.t.Fatalf("store.Read: %v", err)
	}
	return recs
}

type trackingListener struct {
	net.Listener
	tb *testBroker
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, tb: l.tb}
	l.tb.mu.Lock()
	l.tb.conns[tc] = struct{}{}
	l.tb.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	tb   *testBroker
	once sync.Once
}

func (c *trackedConn) Write(p []byte) (int, error) {
	if c.tb.blackhole.Load() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.tb.mu.Lock()
		delete(c.tb.conns, c)
		c.tb.mu.Unlock()
	})
	return c.Conn.Close()
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
