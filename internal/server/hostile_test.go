package server_test

// Hostile clients: one test per way a client, signed in or not, tried to
// make the server hold memory, goroutines or slots without bound, or got
// a wrong answer (issue 15). Each measures the answer, the goroutines or
// the heap, so that none of them comes back.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/auth"
	"github.com/brokerd/brokerd/store"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"
)

// heapPeak samples the heap in use until stop is called and returns the
// highest value seen above the value at the start, in bytes.
func heapPeak(t testing.TB) (stop func() int64) {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := int64(ms.HeapInuse)
	var peak atomic.Int64
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if d := int64(ms.HeapInuse) - base; d > peak.Load() {
				peak.Store(d)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	stop = func() int64 {
		once.Do(func() { close(done); <-ended })
		return peak.Load()
	}
	t.Cleanup(func() { stop() })
	return stop
}

// dialSmall opens a TCP connection to the server whose receive buffer is
// small, so that a client that does not read backs the server up after a
// few kilobytes.
func dialSmall(t testing.TB, ts *testServer) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return setSockopt(rc, syscall.SO_RCVBUF, 4096)
	}}
	c, err := d.Dial("tcp", ts.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// fillTopic stores n records of about size bytes of data in topic.
func fillTopic(t testing.TB, ts *testServer, topic string, n, size int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := ts.Broker.Publish(context.Background(), topic, []byte(payload(i, size)), ""); err != nil {
			t.Fatal(err)
		}
	}
}

// Row 1: clients ask for a 4 MiB history page and never read it. Each
// used to hold the page twice (the records and the JSON) for as long as
// it kept the connection open; now a page is written in pieces of 256 KiB
// and an answer that makes no progress for the write timeout is cut off.
func TestHostileHistoryPageNotRead(t *testing.T) {
	const clients = 16
	ts := startServer(t, func(c *serverConfig) {
		// Long enough for the reading client at the end to take each
		// 256 KiB piece through a 4 KiB socket buffer on a loaded machine.
		c.Server.HTTPWriteTimeout = time.Second
		c.SendBuffer = 4096
	})
	fillTopic(t, ts, "history.big", 16, 256<<10) // 4 MiB
	peak := heapPeak(t)
	conns := make([]net.Conn, clients)
	for i := range conns {
		conns[i] = dialSmall(t, ts)
		fmt.Fprintf(conns[i], "GET /v1/topics/history.big/messages?limit=1000 HTTP/1.1\r\nHost: %s\r\n\r\n", ts.Host)
	}
	eventually(t, waitTimeout, fmt.Sprintf("%d answers cut off by the write timeout (have %d)", clients, ts.Edge.HTTPWriteTimeouts()), func() bool {
		return ts.Edge.HTTPWriteTimeouts() >= clients
	})
	grew := peak()
	t.Logf("heap peak while %d clients did not read a 4 MiB page: +%.1f MiB", clients, float64(grew)/(1<<20))
	// Before: about 8 MiB a client (128 MiB here), held until the client
	// went away. Now one piece (and its JSON) a client.
	if grew > 48<<20 {
		t.Errorf("the heap grew by %d MiB while %d clients did not read a history page; want well under 48 MiB", grew>>20, clients)
	}
	// The connections were closed: the clients read a page cut short.
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
		b, err := io.ReadAll(c)
		if err != nil && !isTimeout(err) && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("client %d: %v", i, err)
		}
		if isTimeout(err) || strings.HasSuffix(string(b), "}\n") {
			t.Fatalf("client %d: got the whole page (%d bytes) or the connection stayed open: %v", i, len(b), err)
		}
	}
	// A client that reads gets the whole page.
	code, body := ts.get("/v1/topics/history.big/messages?limit=1000", nil)
	if code != 200 || !strings.HasSuffix(body, `"next":17}`+"\n") {
		t.Fatalf("a reading client: HTTP %d, %d bytes ending %q", code, len(body), body[max(0, len(body)-40):])
	}
}

// Row 3: request headers of a megabyte. Go's default MaxHeaderBytes (1 MiB)
// let each connection hold that much; now past 16 KiB the answer is 431.
// Headers that never end are cut off by the header timeout.
func TestHostileHugeHeaders(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Server.ReadHeaderTimeout = 300 * time.Millisecond
	})
	c, err := net.Dial("tcp", ts.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nX-Junk: %s\r\n\r\n", ts.Host, strings.Repeat("a", 64<<10))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("64 KiB of headers: HTTP %d, want 431", resp.StatusCode)
	}

	// Headers that stall: closed within the header timeout.
	slow, err := net.Dial("tcp", ts.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "GET /healthz HTTP/1.1\r\nHost: %s\r\nX-Slow: %s", ts.Host, strings.Repeat("a", 8<<10))
	start := time.Now()
	_ = slow.SetReadDeadline(time.Now().Add(waitTimeout))
	_, err = io.ReadAll(slow)
	if isTimeout(err) {
		t.Fatalf("a request whose headers never end is still open after %v", waitTimeout)
	}
	t.Logf("unfinished headers closed after %v", time.Since(start).Round(time.Millisecond))
}

// Row 4: request bodies that stall, and more connections than the cap.
// Each stalled body used to hold its goroutine and buffer for good.
func TestHostileStalledBodies(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Server.ReadTimeout = 500 * time.Millisecond
	})
	before := runtime.NumGoroutine()
	const n = 50
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", ts.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		if i%2 == 0 {
			fmt.Fprintf(c, "POST /v1/topics/stall HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000000\r\n\r\n{\"a\":\"%s", ts.Host, strings.Repeat("x", 4096))
		} else {
			fmt.Fprintf(c, "POST /v1/topics/stall HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n{\"a\":\"%s", ts.Host, strings.Repeat("x", 4000))
		}
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
		b, err := io.ReadAll(c)
		if isTimeout(err) {
			t.Fatalf("connection %d with a stalled body is still open after %v", i, waitTimeout)
		}
		if len(b) > 0 && !strings.HasPrefix(string(b), "HTTP/1.1 400") {
			t.Fatalf("connection %d: %q", i, b)
		}
	}
	eventually(t, waitTimeout, "the goroutines of the stalled requests to end", func() bool {
		return runtime.NumGoroutine() <= before+5 && ts.Edge.HTTPConnections() == 0
	})
	if info, ok, _ := ts.Store.Topic("stall"); ok {
		t.Fatalf("a body cut off was stored: %+v", info)
	}
}

// Row 4: the caps on open HTTP connections and on requests being served.
// WebSocket connections count against neither once upgraded.
func TestHostileHTTPConnectionCap(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Server.MaxHTTPConnections = 4
		c.Server.MaxHTTPRequests = 2
	})
	// WebSocket clients beyond both caps.
	var ws []*client
	for i := 0; i < 6; i++ {
		ws = append(ws, dial(t, ts))
	}
	// Two requests whose bodies stall fill the request cap.
	var stalled []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", ts.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /v1/topics/capped HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n\r\n{", ts.Host)
		stalled = append(stalled, c)
	}
	eventually(t, waitTimeout, "the request cap to answer 503", func() bool {
		code, body := ts.get("/v1/topics", nil)
		return code == http.StatusServiceUnavailable && strings.Contains(body, `"code":"unavailable"`)
	})
	// Two more idle connections reach the connection cap (the client of
	// ts.get may hold one too): the next ones are closed at once.
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", ts.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	eventually(t, waitTimeout, "a connection past the cap to be closed", func() bool {
		c, err := net.Dial("tcp", ts.Host)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return err == io.EOF || (err != nil && strings.Contains(err.Error(), "reset"))
	})
	if conns, reqs := ts.Edge.HTTPRejected(); conns == 0 || reqs == 0 {
		t.Fatalf("rejected: %d connections, %d requests; want both counted", conns, reqs)
	}
	// The WebSocket clients still work.
	for _, c := range ws {
		if e := c.do(map[string]any{"op": "ping"}); e.str("op") != "pong" {
			t.Fatalf("ping: %s", e)
		}
	}
	for _, c := range stalled {
		c.Close()
	}
}

// The HTTP server's timeouts stop at the upgrade: a WebSocket connection
// idle for longer than every one of them stays open and works.
func TestHostileTimeoutsSpareWebSockets(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Server.ReadHeaderTimeout = 100 * time.Millisecond
		c.Server.ReadTimeout = 100 * time.Millisecond
		c.Server.HTTPWriteTimeout = 100 * time.Millisecond
		c.Server.IdleTimeout = 100 * time.Millisecond
	})
	c := dial(t, ts)
	c.quiet(time.Second, "a close", func(event) bool { return c.isClosed() })
	if c.isClosed() {
		t.Fatal("the WebSocket connection was closed by the HTTP server's timeouts")
	}
	if e := c.do(map[string]any{"op": "ping"}); e.str("op") != "pong" {
		t.Fatalf("ping: %s", e)
	}
	c.sub("idle.ws", nil)
	c.pub("idle.ws", `1`)
	c.waitMsgs("idle.ws", 1)
}

// slowDisk is a store whose appends wait for open to be closed, as when
// the disk cannot keep up: the publishes' data waits in memory.
type slowDisk struct {
	*store.DB
	gate chan struct{}
	once sync.Once
}

func (d *slowDisk) open() { d.once.Do(func() { close(d.gate) }) }

func (d *slowDisk) AppendAsync(topic string, data []byte, key string, done func(broker.Appended, error)) {
	go func() {
		<-d.gate
		d.DB.AppendAsync(topic, data, key, done)
	}()
}

// Row 2: connections pipeline large publishes faster than the disk
// writes. The limit counted messages (1,024 per connection), not bytes:
// each connection could hold a gigabyte. Now the data waiting is bounded
// per connection and for the server, and past it the server stops
// reading from the connection; nothing is lost.
func TestHostilePendingPublishBytes(t *testing.T) {
	const (
		conns = 4
		pubs  = 48
		size  = 256 << 10 // 12 MiB a connection, 48 MiB in all
	)
	disk := &slowDisk{gate: make(chan struct{})}
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.MaxPendingBytes = 2 << 20
		c.Broker.PendingBytes = 4 << 20
		c.WrapStore = func(db *store.DB) broker.Store { disk.DB = db; return disk }
	})
	t.Cleanup(disk.open)
	peak := heapPeak(t)
	data := payload(0, size)
	var wg sync.WaitGroup
	clients := make([]*client, conns)
	for i := range clients {
		c := dial(t, ts)
		clients[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 1; j <= pubs; j++ {
				frame := fmt.Sprintf(`{"op":"pub","id":%d,"topic":"pending.%d","data":%s}`, j, i, data)
				if err := c.Conn.WriteString(frame); err != nil {
					return
				}
			}
		}()
	}
	// Nothing is released while the disk stalls: once every reader has
	// begun to wait, none reads again.
	eventually(t, waitTimeout, "every connection's reader to wait", func() bool {
		return ts.Broker.Stats().PendingWaits.Load() >= conns
	})
	// What was read stays within the budgets plus the one frame each
	// reader holds while it waits.
	read := ts.Broker.Stats().BytesIn.Load()
	grew := peak()
	t.Logf("while the disk stalled: %.1f MiB read of %d MiB sent, heap +%.1f MiB, %d bytes pending",
		float64(read)/(1<<20), conns*pubs*size>>20, float64(grew)/(1<<20), ts.Broker.PendingBytes())
	if read > 4<<20+conns*(size+1024) {
		t.Errorf("the server read %d bytes of publishes that wait for the disk; want at most the 4 MiB budget and one frame a connection", read)
	}
	if pb := ts.Broker.PendingBytes(); pb > 4<<20 {
		t.Errorf("%d bytes pending, over the 4 MiB budget", pb)
	}
	if grew > 32<<20 {
		t.Errorf("the heap grew by %d MiB; want well under 32 MiB", grew>>20)
	}
	// The disk catches up: every publish is stored and answered.
	disk.open()
	wg.Wait()
	for _, c := range clients {
		c.waitReplies(pubs)
	}
	for i := 0; i < conns; i++ {
		if h := ts.head(fmt.Sprintf("pending.%d", i)); h != pubs {
			t.Fatalf("pending.%d: head %d, want %d", i, h, pubs)
		}
	}
}

// Row 10: with compression, a message that inflates past the frame limit
// (a deflate bomb, or one byte over the limit) was closed with 1011, which
// tells a client to reconnect and retry; it is 1009, as without
// compression.
func TestHostileCompressedTooBig(t *testing.T) {
	const limit = 64 << 10
	ts := startServer(t, func(c *serverConfig) {
		c.Server.Compression = true
		c.Server.MaxFrameBytes = limit
	})
	pub := func(n int) string {
		head := `{"op":"pub","topic":"deflate.big","data":"`
		return head + strings.Repeat("a", n-len(head)-2) + `"}`
	}
	for _, tc := range []struct {
		name string
		msg  string
	}{
		{"one byte over", pub(limit + 1)},
		{"bomb", pub(16 << 20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, dc := dialDeflate(t, ts)
			select {
			case <-dc.msgs: // welcome
			case <-time.After(waitTimeout):
				t.Fatal("no welcome")
			}
			_ = conn.WriteString(tc.msg)
			select {
			case err := <-dc.closed:
				var ce *gws.CloseError
				if !errors.As(err, &ce) || ce.Code != 1009 {
					t.Fatalf("closed with %v, want 1009", err)
				}
			case <-time.After(waitTimeout):
				t.Fatal("the connection is still open")
			}
		})
	}
	// At the limit it is taken.
	conn, dc := dialDeflate(t, ts)
	<-dc.msgs
	_ = conn.WriteString(pub(limit))
	eventually(t, waitTimeout, "the message at the limit to be stored", func() bool { return ts.head("deflate.big") == 1 })
}

// upgradeRaw does the WebSocket upgrade by hand with extra header lines
// and returns the connection once the 101 is read.
func upgradeRaw(t testing.TB, ts *testServer, extra string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", ts.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+
		"Sec-WebSocket-Protocol: brokerd.v1.json\r\n%s\r\n", ts.Host, extra)
	r := &rawConn{t: t, c: c, br: bufio.NewReader(c)}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		t.Fatalf("reading the upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: HTTP %d, want 101", resp.StatusCode)
	}
	return r
}

// Row 11: a bad token in the handshake. The close cleared the queue before
// welcome was written, so most clients saw the 4001 without the welcome
// the contract puts first.
func TestHostileBadTokenGetsWelcome(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.Auth = staticAuth{"good": {Subject: "u", Publish: []string{">"}, Subscribe: []string{">"}}}
	})
	const n = 100
	var wg sync.WaitGroup
	var missing atomic.Int64
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := upgradeRaw(t, ts, "Authorization: Bearer bogus\r\n")
			rc := r.readUntilClose(waitTimeout)
			if !rc.gotClose || rc.code != 4001 {
				t.Errorf("closed with %d (close frame: %v, %v), want 4001", rc.code, rc.gotClose, rc.err)
			}
			if len(rc.texts) == 0 || !strings.HasPrefix(rc.texts[0], `{"op":"welcome"`) {
				missing.Add(1)
			}
		}()
	}
	wg.Wait()
	if m := missing.Load(); m > 0 {
		t.Fatalf("%d of %d connections got the 4001 close without welcome first", m, n)
	}
}

// Row 12: a sub refused with epoch_mismatch or offset_out_of_range
// created the topic all the same; a client could create topics by the
// thousand with subs that all fail.
func TestHostileRefusedSubCreatesNothing(t *testing.T) {
	ts := startServer(t)
	c := dial(t, ts)
	c.mustErr(map[string]any{"op": "sub", "topic": "ghost.epoch", "epoch": "e-from-elsewhere"}, "epoch_mismatch")
	c.mustErr(map[string]any{"op": "sub", "topic": "ghost.offset", "from": 5}, "offset_out_of_range")
	for _, topic := range []string{"ghost.epoch", "ghost.offset"} {
		if info, ok, err := ts.Store.Topic(topic); ok || err != nil {
			t.Errorf("%s exists after a refused sub: %+v, %v", topic, info, err)
		}
	}
	// A sub that is taken still creates the log and names its epoch.
	if ok := c.sub("ghost.taken", map[string]any{"from": 1}); ok.str("epoch") == "" {
		t.Fatalf("ok without epoch: %s", ok)
	}
}

// Row 13: a token whose sub claim is 2,000 bytes made every durable
// consumer sub and ack answer internal (the store's key limit). The token
// is refused now (tested in internal/auth); whatever the authenticator,
// a subject and consumer name too long to store together get bad_request.
func TestHostileLongConsumerKey(t *testing.T) {
	long := strings.Repeat("u", 200)
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.Auth = staticAuth{"long": {Subject: long, Publish: []string{">"}, Subscribe: []string{">"}}}
	})
	c := dial(t, ts)
	c.mustOK(map[string]any{"op": "auth", "token": "long"})
	name := strings.Repeat("c", 100)
	c.mustErr(map[string]any{"op": "sub", "topic": "keys.long", "consumer": name}, "bad_request")
	c.pub("keys.long", `1`)
	c.mustErr(map[string]any{"op": "ack", "topic": "keys.long", "consumer": name, "offset": 1}, "bad_request")
	if n := ts.Broker.Stats().ErrorCount("internal"); n != 0 {
		t.Fatalf("%d internal errors", n)
	}
	c.sub("keys.long", map[string]any{"consumer": "short"})
}

// Row 14: small things. An HTTP/1.0 upgrade got 101; PUT and DELETE on
// the API got the console's 404; WebSocket pings were outside the
// command rate.
func TestHostileSmallThings(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.CommandRate = 20
		c.Broker.CommandBurst = 20
	})
	t.Run("HTTP/1.0 upgrade", func(t *testing.T) {
		c, err := net.Dial("tcp", ts.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(waitTimeout))
		fmt.Fprintf(c, "GET /ws HTTP/1.0\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+
			"Sec-WebSocket-Protocol: brokerd.v1.json\r\n\r\n", ts.Host)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusHTTPVersionNotSupported {
			t.Fatalf("HTTP/1.0 upgrade: %d, want 505", resp.StatusCode)
		}
	})
	t.Run("405", func(t *testing.T) {
		for _, tc := range []struct{ method, path, allow string }{
			{http.MethodPut, "/v1/topics/t", "POST"},
			{http.MethodDelete, "/v1/topics/t", "POST"},
			{http.MethodPost, "/v1/topics/t/messages", "GET, HEAD"},
			{http.MethodDelete, "/v1/topics", "GET, HEAD"},
		} {
			req, _ := http.NewRequest(tc.method, ts.HTTP.URL+tc.path, nil)
			resp, err := ts.HTTP.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != tc.allow {
				t.Errorf("%s %s: %d Allow %q, want 405 Allow %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Allow"), tc.allow)
			}
		}
	})
	t.Run("pings count in the command rate", func(t *testing.T) {
		r := upgradeRaw(t, ts, "")
		// In one write: the server reads them all before it closes (a
		// close with unread bytes would reset the connection and lose
		// the close frame).
		var pings []byte
		for i := 0; i < 30; i++ {
			pings = append(pings, frame(true, 0x9, []byte("p"))...)
		}
		r.write(pings)
		rc := r.readUntilClose(waitTimeout)
		if !rc.gotClose || rc.code != 4029 {
			t.Fatalf("30 pings at once at a rate of 20/s: closed %v with %d (%v), want 4029", rc.gotClose, rc.code, rc.err)
		}
	})
}

// withToken sends tok in the handshake's Authorization header.
func withToken(tok string) clientOption {
	return func(_ *client, o *gws.ClientOption) { o.RequestHeader.Set("Authorization", "Bearer "+tok) }
}

// Row 7: with auth on, token-less upgrades filled every connection slot
// and a client with a valid token got 1013. They have slots of their own
// now; a connection moves to the others when it authenticates.
func TestHostileUnauthenticatedSlots(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.Auth = staticAuth{"good": {Subject: "u", Publish: []string{">"}, Subscribe: []string{">"}}}
		c.Server.MaxConnections = 3
		c.Server.MaxUnauthConnections = 2
	})
	tryAgain := func(c *client, what string) {
		t.Helper()
		if code, reason := c.waitClosed(waitTimeout); code != 1013 {
			t.Fatalf("%s: closed with %d %s, want 1013", what, code, reason)
		}
	}
	a, b := dial(t, ts), dial(t, ts) // token-less: both unauthenticated slots
	c, _, err := dialErr(t, ts)
	if err != nil {
		t.Fatal(err)
	}
	tryAgain(c, "a third token-less connection")
	if ts.Edge.RejectedUnauthed() != 1 {
		t.Fatalf("rejected unauthenticated: %d, want 1", ts.Edge.RejectedUnauthed())
	}
	// Clients with a token still get every slot.
	var authed []*client
	for i := 0; i < 3; i++ {
		d := dial(t, ts, withToken("good"))
		if e := d.do(map[string]any{"op": "ping"}); e.str("op") != "pong" {
			t.Fatalf("client with a token: %s", e)
		}
		authed = append(authed, d)
	}
	d, _, err := dialErr(t, ts, withToken("good"))
	if err != nil {
		t.Fatal(err)
	}
	tryAgain(d, "a fourth client with a token")
	// A token-less connection that authenticates needs a slot like them.
	a.send(`{"op":"auth","id":1,"token":"good"}`)
	tryAgain(a, "authenticating while every slot is taken")
	authed[0].close()
	eventually(t, waitTimeout, "a slot to free", func() bool { return ts.Edge.Connections() < 3 })
	b.mustOK(map[string]any{"op": "auth", "token": "good"})
	b.sub("slots.ok", nil)
	if n := ts.Edge.Unauthed(); n != 0 {
		t.Fatalf("%d connections counted as unauthenticated, want 0", n)
	}
}

// Row 8: the data disk fills up. Publishes got internal, nothing was
// logged above DEBUG and /readyz stayed 200. Now they get unavailable with
// retry_after_ms, the failure is counted and logged, /readyz answers 503
// until a write succeeds again, and nothing is lost once space is freed.
func TestHostileDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("this test fills a small tmpfs, and mounting one is not allowed here (it needs root): %v", err)
	}
	// Registered before the store's cleanup, so it runs after the close.
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	ts := startServer(t, func(c *serverConfig) { c.Dir = dir })
	c := dial(t, ts)
	c.pub("disk.full", `"before"`)
	// Fill what is left of the disk.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	// Publish until the store cannot grow.
	data := payload(1, 32<<10)
	var refused event
	for i := 0; i < 1000 && refused.Op == ""; i++ {
		if e := c.do(map[string]any{"op": "pub", "topic": "disk.full", "data": json.RawMessage(data)}); e.Op == "err" {
			refused = e
		}
	}
	if refused.Op == "" {
		t.Fatal("1,000 publishes of 32 KiB were stored on a full 4 MiB disk")
	}
	if refused.str("code") != "unavailable" || refused.num("retry_after_ms") == 0 {
		t.Fatalf("a publish on a full disk: %s, want unavailable with retry_after_ms", refused)
	}
	if code, body := ts.get("/readyz", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz on a full disk: %d %s", code, body)
	}
	if code, m := ts.post("/v1/topics/disk.full", data, nil); code != http.StatusServiceUnavailable || m["code"] != "unavailable" || m["retry_after_ms"] == nil {
		t.Fatalf("HTTP publish on a full disk: %d %v", code, m)
	}
	if ts.Broker.Stats().StorageErrors.Load() == 0 {
		t.Fatal("no storage error counted")
	}
	// Space is freed: writes resume and /readyz recovers.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	off := c.pub("disk.full", `"after"`)
	if code, body := ts.get("/readyz", nil); code != http.StatusOK {
		t.Fatalf("/readyz once space is freed: %d %s", code, body)
	}
	c.sub("disk.full", map[string]any{"from": "earliest"})
	ms := c.waitMsgs("disk.full", int(off))
	if string(ms[0].data()) != `"before"` || string(ms[len(ms)-1].data()) != `"after"` {
		t.Fatalf("history after the disk filled: first %s, last %s", ms[0].data(), ms[len(ms)-1].data())
	}
}

// Row 9: the open-file limit is reached. Accept errors were logged at
// DEBUG only and not counted; the server did recover. Now each is counted
// (and logged at WARN, rate-limited), and the server still recovers.
func TestHostileAcceptErrors(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("needs bash (its /dev/tcp) to connect from another process")
	}
	ts := startServer(t)
	_, port, _ := net.SplitHostPort(ts.Host)
	signal := filepath.Join(t.TempDir(), "go")
	// Clients in other processes, started while descriptors are free; they
	// connect once signal exists (a directory: making it takes no
	// descriptor in this process).
	const n = 3
	for i := 0; i < n; i++ {
		cmd := exec.Command(bash, "-c", fmt.Sprintf(`for i in $(seq 2000); do [ -d %q ] && break; sleep 0.01; done; exec 3<>/dev/tcp/127.0.0.1/%s; sleep 20`, signal, port))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	}
	// Lower the open-file limit to the lowest free descriptor: the server
	// cannot accept.
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("needs /proc/self/fd: %v", err)
	}
	used := map[uint64]bool{}
	for _, e := range entries {
		var fd uint64
		fmt.Sscan(e.Name(), &fd)
		used[fd] = true
	}
	// The directory's own descriptor was among them and is closed now.
	lowest := uint64(0)
	for used[lowest] || lowest < 3 {
		lowest++
	}
	limit := syscall.Rlimit{Cur: lowest, Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &limit); err != nil {
		t.Skipf("cannot lower the open-file limit: %v", err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
				t.Errorf("restoring the open-file limit: %v", err)
			}
		}
	}
	defer restore()
	if err := os.Mkdir(signal, 0o755); err != nil {
		restore()
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitTimeout)
	for ts.Edge.AcceptErrors() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	restore()
	if ts.Edge.AcceptErrors() == 0 {
		t.Fatal("no accept error counted while the open-file limit was reached")
	}
	t.Logf("%d accept errors counted", ts.Edge.AcceptErrors())
	eventually(t, waitTimeout, "the server to accept the clients once descriptors are free", func() bool {
		return ts.Edge.HTTPConnections() >= n
	})
}

// Row 13, end to end with the JWT verifier: a token whose sub claim is
// 2,000 bytes is refused with a message that says why, on the WebSocket
// (4001, after welcome) and on the HTTP API (401).
func TestHostileLongSubClaim(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	v, err := auth.NewHMAC(secret)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *serverConfig) { c.Broker.Auth = v })
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": strings.Repeat("u", 2000), "exp": time.Now().Add(time.Hour).Unix(), "subscribe": []string{">"},
	}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	const want = "sub claim is longer than 64 bytes"
	r := upgradeRaw(t, ts, "Authorization: Bearer "+tok+"\r\n")
	rc := r.readUntilClose(waitTimeout)
	if rc.code != 4001 || !strings.Contains(rc.reason, want) || len(rc.texts) != 1 {
		t.Fatalf("WebSocket: close %d %q after %d frames, want 4001 saying %q after welcome", rc.code, rc.reason, len(rc.texts), want)
	}
	code, body := ts.get("/v1/topics", http.Header{"Authorization": {"Bearer " + tok}})
	if code != http.StatusUnauthorized || !strings.Contains(body, want) {
		t.Fatalf("HTTP: %d %s, want 401 saying %q", code, body, want)
	}
}
