package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/server"
	"github.com/brokerd/brokerd/store"
	"github.com/brokerd/brokerd/subproto"
	"github.com/lxzan/gws"
)

// waitTimeout bounds every wait for an event. It is generous: the suite
// runs under the race detector on small machines.
const waitTimeout = 15 * time.Second

// TestMain fails the run when goroutines outlive the tests: every server,
// session writer and client reader must end once its test has cleaned up.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			fmt.Fprintf(os.Stderr, "goroutine leak: %d goroutines before the tests, %d after\n%s\n", before, n, buf)
			code = 1
		}
	}
	os.Exit(code)
}

// ---------------------------------------------------------------------------
// Server

// testServer is a whole brokerd in-process: a bbolt store in a temporary
// directory, the broker, the edge, and an HTTP server on a free port.
type testServer struct {
	t      testing.TB
	Store  *store.DB
	Broker *broker.Server
	Edge   *server.Server
	HTTP   *httptest.Server
	URL    string // ws://127.0.0.1:port/ws
	Host   string // 127.0.0.1:port
}

// serverConfig holds the three configurations a test may adjust.
type serverConfig struct {
	Broker broker.Config
	Server server.Config
	Store  store.Options
	// SendBuffer, when set, is the SO_SNDBUF of the server's sockets: a
	// small one makes a client that stops reading back the server up
	// after kilobytes instead of megabytes.
	SendBuffer int
	// WrapStore, when set, wraps the store the broker uses (the store
	// itself is still checked and closed at the end).
	WrapStore func(*store.DB) broker.Store
	// Dir, when set, is the store's directory (default a new temporary one).
	Dir string
}

var discard = slog.New(slog.DiscardHandler)

// startServer starts a server; each option adjusts the configuration. It
// is shut down, and its store checked and closed, when the test ends.
func startServer(t testing.TB, opts ...func(*serverConfig)) *testServer {
	t.Helper()
	cfg := serverConfig{}
	cfg.Broker.Node = "node-test"
	cfg.Broker.Version = "1.2.3-test"
	cfg.Broker.Logger = discard
	cfg.Server.Logger = discard
	cfg.Store.Logger = discard
	cfg.Store.RetentionInterval = -1 // tests apply retention themselves
	cfg.Server.ConnRatePerIP = -1    // every client of a test comes from one address
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	st, err := store.Open(cfg.Dir, &cfg.Store)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Check(); err != nil {
			t.Errorf("store check at the end of the test: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("store.Close: %v", err)
		}
	})
	var bst broker.Store = st
	if cfg.WrapStore != nil {
		bst = cfg.WrapStore(st)
	}
	b, err := broker.New(cfg.Broker, bst)
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("broker.Shutdown: %v", err)
		}
	})
	edge, err := server.New(cfg.Server, b)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	hs := httptest.NewUnstartedServer(nil)
	hs.Config = edge.HTTPServer()
	if cfg.SendBuffer > 0 {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			return setSockopt(rc, syscall.SO_SNDBUF, cfg.SendBuffer)
		}}
		ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hs.Listener.Close()
		hs.Listener = ln
	}
	hs.Listener = edge.Listener(hs.Listener)
	hs.Start()
	t.Cleanup(hs.Close)
	host := strings.TrimPrefix(hs.URL, "http://")
	return &testServer{t: t, Store: st, Broker: b, Edge: edge, HTTP: hs, URL: "ws://" + host + "/ws", Host: host}
}

// head returns the topic's last stored offset (0 when it has no log).
func (ts *testServer) head(topic string) uint64 {
	ts.t.Helper()
	info, _, err := ts.Store.Topic(topic)
	if err != nil {
		ts.t.Fatalf("store.Topic(%q): %v", topic, err)
	}
	return info.Head
}

// topicInfo returns the topic's metadata; the topic must exist.
func (ts *testServer) topicInfo(topic string) broker.TopicInfo {
	ts.t.Helper()
	info, ok, err := ts.Store.Topic(topic)
	if err != nil || !ok {
		ts.t.Fatalf("store.Topic(%q) = ok %v, err %v", topic, ok, err)
	}
	return info
}

// get does a plain HTTP request against the server.
func (ts *testServer) get(path string, header http.Header) (int, string) {
	ts.t.Helper()
	req, err := http.NewRequest(http.MethodGet, ts.HTTP.URL+path, nil)
	if err != nil {
		ts.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := ts.HTTP.Client().Do(req)
	if err != nil {
		ts.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Events

// event is one object the server sent.
type event struct {
	Op    string
	Frame int            // index of the frame that carried it
	Raw   []byte         // the object's bytes as received
	M     map[string]any // decoded with UseNumber
}

func (e event) String() string { return string(e.Raw) }

func (e event) has(k string) bool { _, ok := e.M[k]; return ok }

func (e event) str(k string) string { s, _ := e.M[k].(string); return s }

// num returns the integer field k, 0 when it is absent or not an integer.
func (e event) num(k string) uint64 {
	n, ok := e.M[k].(json.Number)
	if !ok {
		return 0
	}
	v, err := strconv.ParseUint(string(n), 10, 64)
	if err != nil {
		return 0
	}
	return v
}

func (e event) id() uint64 { return e.num("id") }

// data returns the raw bytes of the event's data member.
func (e event) data() []byte {
	var v struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(e.Raw, &v); err != nil {
		return nil
	}
	return v.Data
}

func decodeEvent(line []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, errors.New("more than one JSON value on a line")
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the object")
	}
	return m, nil
}

// ---------------------------------------------------------------------------
// WebSocket client

// client is a test client on a real WebSocket connection (gws). It records
// every event the server sends and how the connection ended.
type client struct {
	t    testing.TB
	name string
	Conn *gws.Conn
	Resp *http.Response
	ids  atomic.Uint64

	noPong  bool   // do not answer the server's pings
	onFrame func() // runs in the read loop before each frame is recorded

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every change
	events    []event
	frames    int
	closed    bool
	closeCode uint16 // 0 when the connection ended without a close frame
	closeMsg  []byte
	closeErr  error              // why the reader ended
	bad       []string           // problems with what the server sent
	pongs     int                // WebSocket pongs received
	pings     int                // WebSocket pings received
	hold      chan struct{}      // while not nil, the reader waits for it to close
	nmsgs     map[string]int     // msg events per topic
	replies   map[uint64][]event // ok, err and pong events by id
	nreplies  int                // ok, err and pong events
}

type clientOption func(*client, *gws.ClientOption)

// withoutPong makes the client ignore the server's pings.
func withoutPong() clientOption { return func(c *client, _ *gws.ClientOption) { c.noPong = true } }

// withFrameDelay makes the client's reader sleep d before each frame.
func withFrameDelay(d time.Duration) clientOption {
	return func(c *client, _ *gws.ClientOption) { c.onFrame = func() { time.Sleep(d) } }
}

// withRecvBuffer sets a small SO_RCVBUF on the client's socket, so that
// a client that reads slowly backs the server up quickly.
func withRecvBuffer(n int) clientOption {
	return func(_ *client, o *gws.ClientOption) {
		o.NewDialer = func() (gws.Dialer, error) {
			return &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				return setSockopt(rc, syscall.SO_RCVBUF, n)
			}}, nil
		}
	}
}

// setSockopt sets a SOL_SOCKET option of the socket rc.
func setSockopt(rc syscall.RawConn, opt, v int) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, v)
	})
	return errors.Join(err, serr)
}

// dialErr opens a client connection; the handshake's error is returned.
func dialErr(t testing.TB, ts *testServer, opts ...clientOption) (*client, *http.Response, error) {
	t.Helper()
	c := &client{t: t, changed: make(chan struct{})}
	o := &gws.ClientOption{
		Addr:             ts.URL,
		RequestHeader:    http.Header{"Sec-WebSocket-Protocol": {subproto.Subprotocol}},
		HandshakeTimeout: 5 * time.Second,
	}
	for _, opt := range opts {
		opt(c, o)
	}
	conn, resp, err := gws.NewClient(c, o)
	if err != nil {
		return nil, resp, err
	}
	c.Conn, c.Resp = conn, resp
	go conn.ReadLoop()
	t.Cleanup(c.close)
	return c, resp, nil
}

// dial opens a client connection and waits for welcome.
func dial(t testing.TB, ts *testServer, opts ...clientOption) *client {
	t.Helper()
	c, resp, err := dialErr(t, ts, opts...)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", ts.URL, err, status)
	}
	c.waitFor("welcome", func(evs []event) bool { return len(evs) > 0 })
	return c
}

func (c *client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *client) OnOpen(*gws.Conn) {}

func (c *client) OnClose(_ *gws.Conn, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.closeErr = err
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		c.closeCode = ce.Code
		c.closeMsg = append([]byte(nil), ce.Reason...)
	}
	c.notifyLocked()
}

func (c *client) OnPing(conn *gws.Conn, payload []byte) {
	c.mu.Lock()
	c.pings++
	c.mu.Unlock()
	if !c.noPong {
		_ = conn.WritePong(payload)
	}
}

func (c *client) OnPong(*gws.Conn, []byte) {
	c.mu.Lock()
	c.pongs++
	c.notifyLocked()
	c.mu.Unlock()
}

func (c *client) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	c.mu.Lock()
	hold := c.hold
	c.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if c.onFrame != nil {
		c.onFrame()
	}
	frame := append([]byte(nil), m.Bytes()...)
	c.mu.Lock()
	defer c.mu.Unlock()
	idx := c.frames
	c.frames++
	if m.Opcode != gws.OpcodeText {
		c.bad = append(c.bad, fmt.Sprintf("frame %d has opcode %d, want text", idx, m.Opcode))
	}
	for _, line := range bytes.Split(frame, []byte{'\n'}) {
		ev, err := decodeEvent(line)
		if err != nil {
			c.bad = append(c.bad, fmt.Sprintf("frame %d: line %q is not one JSON object: %v", idx, line, err))
			continue
		}
		op, _ := ev["op"].(string)
		if !subproto.Op(op).IsEvent() {
			c.bad = append(c.bad, fmt.Sprintf("frame %d: %q is not an event", idx, line))
		}
		e := event{Op: op, Frame: idx, Raw: line, M: ev}
		c.events = append(c.events, e)
		if op == "ok" || op == "err" || op == "pong" {
			c.nreplies++
		}
		switch {
		case op == "msg":
			if c.nmsgs == nil {
				c.nmsgs = make(map[string]int)
			}
			c.nmsgs[e.str("topic")]++
		case (op == "ok" || op == "err" || op == "pong") && e.has("id"):
			if c.replies == nil {
				c.replies = make(map[uint64][]event)
			}
			c.replies[e.id()] = append(c.replies[e.id()], e)
		}
	}
	c.notifyLocked()
}

// pause stops the client's reader before its next frame: the server's
// writes back up in the socket. release lets it read again.
func (c *client) pause() {
	c.mu.Lock()
	if c.hold == nil {
		c.hold = make(chan struct{})
	}
	c.mu.Unlock()
}

func (c *client) release() {
	c.mu.Lock()
	if c.hold != nil {
		close(c.hold)
		c.hold = nil
	}
	c.mu.Unlock()
}

// close ends the connection with a normal close and waits for the reader.
func (c *client) close() {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	c.release() // a paused reader must run to its end
	if !closed {
		_ = c.Conn.WriteClose(1000, nil)
		_ = c.Conn.NetConn().Close()
	}
	c.waitClosed(5 * time.Second)
	c.mu.Lock()
	bad := c.bad
	c.bad = nil
	c.mu.Unlock()
	for _, b := range bad {
		c.t.Errorf("client %s: %s", c.name, b)
	}
}

// kill drops the TCP connection without a close frame.
func (c *client) kill() {
	_ = c.Conn.NetConn().Close()
	c.waitClosed(5 * time.Second)
}

// snapshot returns the events received so far.
func (c *client) snapshot() []event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.events[:len(c.events):len(c.events)]
}

// waitFor waits until pred holds for the events received so far and
// returns them. It fails the test when the deadline passes, or when the
// connection has ended and pred still does not hold.
func (c *client) waitFor(what string, pred func(evs []event) bool) []event {
	c.t.Helper()
	return c.waitForWithin(waitTimeout, what, pred)
}

func (c *client) waitForWithin(within time.Duration, what string, pred func(evs []event) bool) []event {
	c.t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		c.mu.Lock()
		evs := c.events[:len(c.events):len(c.events)]
		ch, closed := c.changed, c.closed
		code, reason, cerr := c.closeCode, c.closeMsg, c.closeErr
		c.mu.Unlock()
		if pred(evs) {
			return evs
		}
		if closed {
			c.t.Fatalf("client %s: waiting for %s: the connection closed (code %d, reason %q, %v) after %d events; last: %s",
				c.name, what, code, reason, cerr, len(evs), tailEvents(evs, 3))
		}
		select {
		case <-ch:
		case <-timer.C:
			c.t.Fatalf("client %s: timed out after %v waiting for %s; %d events, last: %s", c.name, within, what, len(evs), tailEvents(evs, 3))
		}
	}
}

// quiet checks that nothing matching pred arrives within d. Only absence
// needs this: every presence is waited for with waitFor.
func (c *client) quiet(d time.Duration, what string, pred func(e event) bool) {
	c.t.Helper()
	n := len(c.snapshot())
	time.Sleep(d)
	for _, e := range c.snapshot()[n:] {
		if pred(e) {
			c.t.Fatalf("client %s: unexpected %s: %s", c.name, what, e)
		}
	}
}

// waitClosed waits until the connection has ended and returns the close
// code (0 when no close frame arrived) and reason.
func (c *client) waitClosed(within time.Duration) (uint16, []byte) {
	c.t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		c.mu.Lock()
		closed, ch := c.closed, c.changed
		code, reason := c.closeCode, c.closeMsg
		c.mu.Unlock()
		if closed {
			return code, reason
		}
		select {
		case <-ch:
		case <-timer.C:
			c.t.Fatalf("client %s: the connection is still open after %v", c.name, within)
		}
	}
}

func (c *client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func tailEvents(evs []event, n int) string {
	var parts []string
	for _, e := range evs[max(0, len(evs)-n):] {
		s := string(e.Raw)
		if len(s) > 200 {
			s = s[:200] + "…"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " | ")
}

// send writes raw as one text frame. Safe from any goroutine: a failure is
// reported with Errorf.
func (c *client) send(raw string) {
	if err := c.Conn.WriteString(raw); err != nil {
		c.t.Errorf("client %s: send: %v", c.name, err)
	}
}

// noID, as the value of "id", sends a command without an id.
const noID = "\x00no id"

// encode returns the command as one JSON object. Unless fields holds
// "id", the next id of the client is added; it returns that id (0 for
// noID or an id the caller chose that is not a positive integer).
func (c *client) encode(fields map[string]any) (string, uint64) {
	m := make(map[string]any, len(fields)+1)
	for k, v := range fields {
		m[k] = v
	}
	var id uint64
	switch v := m["id"].(type) {
	case nil:
		id = c.ids.Add(1)
		m["id"] = id
	case string:
		if v == noID {
			delete(m, "id")
		}
	case int:
		if v > 0 {
			id = uint64(v)
		}
	case uint64:
		id = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		c.t.Errorf("encode %v: %v", fields, err)
	}
	return string(b), id
}

// cmd sends one command in its own frame and returns its id.
func (c *client) cmd(fields map[string]any) uint64 {
	raw, id := c.encode(fields)
	c.send(raw)
	return id
}

// isReply reports whether e replies to the command with id.
func isReply(e event, id uint64) bool {
	return (e.Op == "ok" || e.Op == "err" || e.Op == "pong") && e.has("id") && e.id() == id
}

// reply waits for the reply to the command with id, and fails when
// there is more than one.
func (c *client) reply(id uint64) event {
	c.t.Helper()
	var rs []event
	c.waitFor(fmt.Sprintf("the reply to id %d", id), func([]event) bool {
		c.mu.Lock()
		rs = c.replies[id]
		c.mu.Unlock()
		return len(rs) > 0
	})
	if len(rs) > 1 {
		c.t.Fatalf("client %s: %d replies to id %d: %v", c.name, len(rs), id, rs)
	}
	return rs[0]
}

// do sends a command and returns its reply.
func (c *client) do(fields map[string]any) event {
	c.t.Helper()
	return c.reply(c.cmd(fields))
}

// mustOK sends a command and fails unless it gets ok.
func (c *client) mustOK(fields map[string]any) event {
	c.t.Helper()
	r := c.do(fields)
	if r.Op != "ok" {
		c.t.Fatalf("client %s: %v: got %s, want ok", c.name, fields, r)
	}
	return r
}

// mustErr sends a command and fails unless it gets err with code.
func (c *client) mustErr(fields map[string]any, code subproto.Code) event {
	c.t.Helper()
	r := c.do(fields)
	if r.Op != "err" || r.str("code") != string(code) {
		c.t.Fatalf("client %s: %v: got %s, want err %s", c.name, fields, r, code)
	}
	if r.str("message") == "" {
		c.t.Errorf("client %s: err without a message: %s", c.name, r)
	}
	return r
}

// pub publishes raw JSON data and returns the offset of the ok.
func (c *client) pub(topic, data string) uint64 {
	c.t.Helper()
	r := c.mustOK(map[string]any{"op": "pub", "topic": topic, "data": json.RawMessage(data)})
	if r.str("topic") != topic || r.num("offset") == 0 {
		c.t.Fatalf("client %s: pub ok %s: want topic %q and an offset", c.name, r, topic)
	}
	return r.num("offset")
}

// sub subscribes with the extra fields and returns the ok.
func (c *client) sub(topic string, extra map[string]any) event {
	c.t.Helper()
	f := map[string]any{"op": "sub", "topic": topic}
	for k, v := range extra {
		f[k] = v
	}
	return c.mustOK(f)
}

// msgs returns the msg events of topic in evs.
func msgs(evs []event, topic string) []event {
	var out []event
	for _, e := range evs {
		if e.Op == "msg" && e.str("topic") == topic {
			out = append(out, e)
		}
	}
	return out
}

// waitMsgs waits until at least n msgs of topic arrived and returns them.
func (c *client) waitMsgs(topic string, n int) []event {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d msgs of %s", n, topic), func([]event) bool { return c.msgCount(topic) >= n })
	return msgs(c.snapshot(), topic)
}

// waitReplies waits until n replies (ok, err, pong) arrived.
func (c *client) waitReplies(n int) []event {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d replies", n), func([]event) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.nreplies >= n
	})
	return c.snapshot()
}

// msgCount returns how many msgs of topic arrived so far.
func (c *client) msgCount(topic string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nmsgs[topic]
}

// checkOffsets fails unless ms hold exactly the offsets from..to in order.
func checkOffsets(t testing.TB, who string, ms []event, from, to uint64) {
	t.Helper()
	want := int(to - from + 1)
	if to < from {
		want = 0
	}
	if len(ms) != want {
		t.Errorf("%s: got %d msgs, want %d (offsets %d..%d)", who, len(ms), want, from, to)
	}
	for i, m := range ms {
		if got := m.num("offset"); got != from+uint64(i) {
			t.Fatalf("%s: msg %d has offset %d, want %d (no gap, no duplicate, in order); msg: %s", who, i, got, from+uint64(i), m)
		}
	}
}

// ---------------------------------------------------------------------------
// Raw client: hand-made frames for what a real client library refuses to send.

type rawConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

// dialRaw opens a TCP connection, does the upgrade by hand and reads the
// welcome.
func dialRaw(t testing.TB, ts *testServer) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", ts.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	var key [16]byte
	_, _ = rand.Read(key[:])
	req := "GET /ws HTTP/1.1\r\n" +
		"Host: " + ts.Host + "\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key[:]) + "\r\n" +
		"Sec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Protocol: " + subproto.Subprotocol + "\r\n\r\n"
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	r := &rawConn{t: t, c: c, br: bufio.NewReader(c)}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		t.Fatalf("reading the upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: HTTP %d, want 101", resp.StatusCode)
	}
	op, payload, err := r.readFrame()
	if err != nil || op != 1 || !bytes.HasPrefix(payload, []byte(`{"op":"welcome"`)) {
		t.Fatalf("first frame: opcode %d %q %v, want welcome", op, payload, err)
	}
	return r
}

// frame returns a client frame: FIN set as given, masked with a random key.
func frame(fin bool, opcode byte, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		out = append(out, 0x80|byte(n))
	case n <= 0xffff:
		out = append(out, 0x80|126, byte(n>>8), byte(n))
	default:
		out = append(out, 0x80|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	out = append(out, mask[:]...)
	for i, b := range payload {
		out = append(out, b^mask[i%4])
	}
	return out
}

func (r *rawConn) write(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("raw write: %v", err)
	}
}

// readFrame reads one server frame (unmasked, unfragmented).
func (r *rawConn) readFrame() (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(r.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[1]&0x80 != 0 {
		return 0, nil, errors.New("server frame is masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err = io.ReadFull(r.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err = io.ReadFull(r.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	if n > 64<<20 {
		return 0, nil, fmt.Errorf("server frame of %d bytes", n)
	}
	payload = make([]byte, n)
	if _, err = io.ReadFull(r.br, payload); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, payload, nil
}

// rawClose is how a raw connection ended.
type rawClose struct {
	gotClose bool   // a close frame arrived
	code     uint16 // its code
	reason   string
	texts    []string // text frames before it
	err      error    // the read error when no close frame arrived
}

// readUntilClose reads frames until a close frame or the end of the
// connection.
func (r *rawConn) readUntilClose(within time.Duration) rawClose {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(within))
	var rc rawClose
	for {
		op, payload, err := r.readFrame()
		if err != nil {
			rc.err = err
			if isTimeout(err) {
				r.t.Fatalf("raw connection still open after %v; frames: %q", within, rc.texts)
			}
			return rc
		}
		switch op {
		case 1:
			rc.texts = append(rc.texts, string(payload))
		case 8:
			rc.gotClose = true
			if len(payload) >= 2 {
				rc.code = binary.BigEndian.Uint16(payload)
				rc.reason = string(payload[2:])
			}
			return rc
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ---------------------------------------------------------------------------
// Small helpers

// checkHealthy proves that the broker still serves other clients: a fresh
// connection publishes and watcher, subscribed to topic, receives. It
// fails t, not the test that opened watcher.
func checkHealthy(t testing.TB, ts *testServer, watcher *client, topic string) {
	t.Helper()
	p := dial(t, ts)
	defer p.close()
	off := p.pub(topic, `{"healthy":true}`)
	eventually(t, waitTimeout, fmt.Sprintf("the watcher to get offset %d of %s", off, topic), func() bool {
		for _, m := range msgs(watcher.snapshot(), topic) {
			if m.num("offset") == off {
				return true
			}
		}
		return false
	})
}

// payload returns a JSON string value of about n bytes, distinct per i.
func payload(i, n int) string {
	s := fmt.Sprintf(`"%08d-`, i)
	return s + strings.Repeat("x", max(0, n-len(s)-1)) + `"`
}
