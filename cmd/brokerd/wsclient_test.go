package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

const subprotocol = "brokerd.v1.json"

// event is one object the server sent. Data keeps the exact bytes of the
// data value.
type event struct {
	Op        string          `json:"op"`
	ID        uint64          `json:"id"`
	Topic     string          `json:"topic"`
	Offset    uint64          `json:"offset"`
	TS        int64           `json:"ts"`
	Dup       bool            `json:"dup"`
	Epoch     string          `json:"epoch"`
	Head      uint64          `json:"head"`
	From      uint64          `json:"from"`
	Earliest  uint64          `json:"earliest"`
	Latest    uint64          `json:"latest"`
	Code      string          `json:"code"`
	Message   string          `json:"message"`
	Data      json.RawMessage `json:"data"`
	Session   string          `json:"session"`
	Node      string          `json:"node"`
	Heartbeat int             `json:"heartbeat"`
}

func (e *event) String() string {
	b, _ := json.Marshal(e)
	return string(b)
}

// errClientClosed is returned by next once the connection has ended and
// every event received before has been consumed.
var errClientClosed = errors.New("connection closed")

// wsClient is a test client of the brokerd.v1.json subprotocol. Events are
// queued in order as they arrive; when the queue is full, the reader waits
// (and TCP pushes back on the server).
type wsClient struct {
	conn    *gws.Conn
	events  chan *event
	quit    chan struct{} // closed by close: the reader stops waiting
	done    chan struct{} // closed when the connection has ended
	once    sync.Once
	welcome *event

	mu       sync.Mutex
	closeErr error // why the connection ended; set before done is closed
	badFrame error // the first frame that was not valid protocol JSON
}

// dial connects to the daemon's /ws, offering the subprotocol, and waits
// for welcome.
func dial(addr string) (*wsClient, error) {
	c := &wsClient{events: make(chan *event, 4096), quit: make(chan struct{}), done: make(chan struct{})}
	h := http.Header{}
	h.Set("Sec-WebSocket-Protocol", subprotocol) // canonical key: the client looks it up with Get
	conn, resp, err := gws.NewClient(c, &gws.ClientOption{
		Addr:             "ws://" + addr + "/ws",
		RequestHeader:    h,
		HandshakeTimeout: 5 * time.Second,
	})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("handshake: HTTP %d: %w", resp.StatusCode, err)
		}
		return nil, err
	}
	if p := conn.SubProtocol(); p != subprotocol {
		_ = conn.NetConn().Close()
		return nil, fmt.Errorf("server selected subprotocol %q", p)
	}
	c.conn = conn
	go conn.ReadLoop()
	ev, err := c.next(5 * time.Second)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("waiting for welcome: %w (%v)", err, c.closeError())
	}
	if ev.Op != "welcome" || ev.Session == "" {
		c.close()
		return nil, fmt.Errorf("first event is %s, want welcome", ev)
	}
	c.welcome = ev
	return c, nil
}

// mustDial is dial failing the test.
func mustDial(t testing.TB, addr string) *wsClient {
	t.Helper()
	c, err := dial(addr)
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	t.Cleanup(func() {
		c.close()
		if err := c.protocolError(); err != nil {
			t.Errorf("client of %s: %v", addr, err)
		}
	})
	return c
}

func (c *wsClient) OnOpen(*gws.Conn) {}

func (c *wsClient) OnClose(_ *gws.Conn, err error) {
	c.mu.Lock()
	c.closeErr = err
	c.mu.Unlock()
	close(c.done)
}

func (c *wsClient) OnPing(conn *gws.Conn, payload []byte) { _ = conn.WritePong(payload) }
func (c *wsClient) OnPong(*gws.Conn, []byte)              {}

func (c *wsClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	if m.Opcode != gws.OpcodeText {
		c.fail(fmt.Errorf("server sent a frame of opcode %d", m.Opcode))
		return
	}
	for _, line := range bytes.Split(m.Bytes(), []byte{'\n'}) {
		if len(bytes.TrimSpace(line)) == 0 {
			c.fail(fmt.Errorf("frame with an empty line: %q", m.Bytes()))
			continue
		}
		ev := new(event)
		if err := json.Unmarshal(line, ev); err != nil || ev.Op == "" {
			c.fail(fmt.Errorf("invalid event %q: %v", line, err))
			continue
		}
		if ev.Data != nil {
			ev.Data = bytes.Clone(ev.Data)
		}
		select {
		case c.events <- ev:
		case <-c.quit:
			return
		}
	}
}

func (c *wsClient) fail(err error) {
	c.mu.Lock()
	if c.badFrame == nil {
		c.badFrame = err
	}
	c.mu.Unlock()
}

// protocolError returns the first malformed thing the server sent, if any.
func (c *wsClient) protocolError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.badFrame
}

// closeError returns why the connection ended (nil while it is open).
func (c *wsClient) closeError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

// next returns the next event, waiting up to timeout. Once the connection
// has ended and its events are consumed it returns errClientClosed.
func (c *wsClient) next(timeout time.Duration) (*event, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case ev := <-c.events:
		return ev, nil
	case <-timer.C:
		return nil, fmt.Errorf("no event within %v", timeout)
	case <-c.done:
		select {
		case ev := <-c.events:
			return ev, nil
		default:
			return nil, errClientClosed
		}
	}
}

// send writes one frame holding the given commands, one per line.
func (c *wsClient) send(cmds ...string) error {
	var b []byte
	for i, cmd := range cmds {
		if i > 0 {
			b = append(b, '\n')
		}
		b = append(b, cmd...)
	}
	return c.conn.WriteMessage(gws.OpcodeText, b)
}

// request sends one command with an id and waits for its reply, failing
// the test on any other event.
func (c *wsClient) request(t testing.TB, id uint64, cmd string) *event {
	t.Helper()
	if err := c.send(cmd); err != nil {
		t.Fatalf("sending %s: %v", cmd, err)
	}
	for {
		ev, err := c.next(10 * time.Second)
		if err != nil {
			t.Fatalf("waiting for the reply to %s: %v (%v)", cmd, err, c.closeError())
		}
		if ev.ID == id && (ev.Op == "ok" || ev.Op == "err" || ev.Op == "pong") {
			return ev
		}
		t.Fatalf("waiting for the reply to %s: unexpected %s", cmd, ev)
	}
}

// close ends the connection from the client side.
func (c *wsClient) close() {
	c.once.Do(func() {
		close(c.quit)
		_ = c.conn.WriteClose(1000, nil)
		_ = c.conn.NetConn().Close()
	})
}

// waitClosed waits up to timeout for the server to end the connection and
// returns the close code and reason it sent; code is 0 when the connection
// ended without a close frame. Events still queued are discarded.
func (c *wsClient) waitClosed(timeout time.Duration) (code uint16, reason []byte, err error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case <-c.events:
		case <-c.done:
			var ce *gws.CloseError
			if errors.As(c.closeError(), &ce) {
				return ce.Code, ce.Reason, nil
			}
			return 0, nil, nil
		case <-timer.C:
			return 0, nil, fmt.Errorf("connection still open after %v", timeout)
		}
	}
}

// Command builders. data must be valid JSON without a newline; it is
// sent exactly as given.

func pubCmd(id uint64, topic string, data []byte) string {
	return `{"op":"pub","id":` + strconv.FormatUint(id, 10) + `,"topic":` + strconv.Quote(topic) + `,"data":` + string(data) + `}`
}

func subCmd(id uint64, topic, from, epoch string) string {
	s := `{"op":"sub","id":` + strconv.FormatUint(id, 10) + `,"topic":` + strconv.Quote(topic)
	if from != "" {
		if _, err := strconv.ParseUint(from, 10, 64); err == nil {
			s += `,"from":` + from
		} else {
			s += `,"from":` + strconv.Quote(from)
		}
	}
	if epoch != "" {
		s += `,"epoch":` + strconv.Quote(epoch)
	}
	return s + "}"
}
