package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/subproto"
	"github.com/lxzan/gws"
)

// Frames the client writes stay within the broker's default limits.
const (
	maxFrameCommands = 500
	maxFrameBytes    = 256 << 10
	maxReadPayload   = 64 << 20
)

// conn is one WebSocket connection of a Client. Its reader is gws's read
// loop (OnMessage); its writer is writeLoop, which sends what the client
// appended to wbuf, coalesced into as few frames as the limits allow.
type conn struct {
	c     *Client
	ws    *gws.Conn
	since time.Time
	token string // the token it was opened with

	wbuf []byte // commands to write, '\n'-separated; guarded by c.mu
	kick chan struct{}

	welcomed  chan struct{}
	info      ConnInfo // set before welcomed is closed
	readLimit atomic.Int64
	lastTouch atomic.Int64

	closeOnce sync.Once
	closed    chan struct{} // closed when the reader has ended
	closeErr  error         // set before closed is closed

	ev event // the reader's scratch event
}

// connect dials, upgrades and waits for the welcome.
func (c *Client) connect(ctx context.Context) (*conn, error) {
	hdr := http.Header{}
	for k, v := range c.o.header {
		hdr[k] = append([]string(nil), v...)
	}
	hdr.Set("Sec-WebSocket-Protocol", subproto.Subprotocol)
	var token string
	if c.o.token != nil {
		var err error
		if token, err = c.o.token(ctx); err != nil {
			return nil, err
		}
	}
	if token != "" {
		hdr.Set("Authorization", "Bearer "+token)
	}
	cn := &conn{
		token:    token,
		c:        c,
		since:    time.Now(),
		kick:     make(chan struct{}, 1),
		welcomed: make(chan struct{}),
		closed:   make(chan struct{}),
	}
	cn.readLimit.Store(int64(c.o.handshakeTimeout))
	opt := &gws.ClientOption{
		Addr:               c.url,
		RequestHeader:      hdr,
		HandshakeTimeout:   c.o.handshakeTimeout,
		ReadMaxPayloadSize: maxReadPayload,
		Logger:             nopLogger{},
		NewDialer: func() (gws.Dialer, error) {
			return &net.Dialer{Timeout: c.o.handshakeTimeout}, nil
		},
	}
	if c.o.tls != nil {
		opt.TlsConfig = c.o.tls.Clone()
	}
	type result struct {
		ws   *gws.Conn
		resp *http.Response
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		ws, resp, err := gws.NewClient(cn, opt)
		ch <- result{ws, resp, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.ws != nil {
				_ = r.ws.NetConn().Close()
			}
		}()
		return nil, ctx.Err()
	}
	if r.err != nil {
		he := &HandshakeError{Err: r.err}
		if r.resp != nil {
			he.StatusCode = r.resp.StatusCode
			if r.resp.Body != nil {
				b, _ := io.ReadAll(io.LimitReader(r.resp.Body, 512))
				he.Body = string(bytes.TrimSpace(b))
			}
		}
		return nil, he
	}
	cn.ws = r.ws
	cn.touch(true)
	go cn.ws.ReadLoop()
	select {
	case <-cn.welcomed:
	case <-cn.closed:
		return nil, cn.closeErr
	case <-ctx.Done():
		cn.close()
		<-cn.closed
		return nil, ctx.Err()
	}
	hb := cn.info.Heartbeat
	if hb <= 0 {
		hb = 25 * time.Second
	}
	cn.readLimit.Store(int64(2*hb + 5*time.Second))
	cn.touch(true)
	go cn.writeLoop()
	return cn, nil
}

// close closes the connection with 1000.
func (cn *conn) close() {
	cn.closeOnce.Do(func() {
		_ = cn.ws.SetWriteDeadline(time.Now().Add(time.Second))
		_ = cn.ws.WriteClose(uint16(subproto.CloseNormal), nil)
		_ = cn.ws.NetConn().Close()
	})
}

// touch pushes the read deadline back: a connection that carries neither
// frames nor the broker's pings for two heartbeats is dead.
func (cn *conn) touch(force bool) {
	now := time.Now().UnixNano()
	if !force && now-cn.lastTouch.Load() < int64(time.Second) {
		return
	}
	cn.lastTouch.Store(now)
	_ = cn.ws.SetReadDeadline(time.Unix(0, now+cn.readLimit.Load()))
}

// appendLocked queues cl's command for the writer. c.mu is held.
func (cn *conn) appendLocked(cl *call) {
	if len(cn.wbuf) > 0 {
		cn.wbuf = append(cn.wbuf, '\n')
	}
	cn.wbuf = cl.encode(cn.wbuf)
}

func (cn *conn) kickWriter() {
	select {
	case cn.kick <- struct{}{}:
	default:
	}
}

// writeLoop writes queued commands, several to a frame.
func (cn *conn) writeLoop() {
	var spare []byte
	for {
		select {
		case <-cn.kick:
		case <-cn.closed:
			return
		}
		cn.c.mu.Lock()
		buf := cn.wbuf
		cn.wbuf = spare[:0]
		cn.c.mu.Unlock()
		for rest := buf; len(rest) > 0; {
			var frame []byte
			frame, rest = splitFrame(rest)
			if err := cn.ws.WriteMessage(gws.OpcodeText, frame); err != nil {
				_ = cn.ws.NetConn().Close()
				return
			}
		}
		if cap(buf) <= 4<<20 {
			spare = buf
		} else {
			spare = nil
		}
	}
}

// splitFrame cuts the first frame off a buffer of '\n'-separated
// commands: at most maxFrameCommands commands and, unless one command is
// larger, maxFrameBytes bytes.
func splitFrame(buf []byte) (frame, rest []byte) {
	n, pos := 0, 0 // commands taken, start of the next one
	for pos < len(buf) {
		end := len(buf)
		if i := bytes.IndexByte(buf[pos:], '\n'); i >= 0 {
			end = pos + i
		}
		if n > 0 && end > maxFrameBytes {
			return buf[:pos-1], buf[pos:]
		}
		n++
		if end == len(buf) {
			break
		}
		if n == maxFrameCommands {
			return buf[:end], buf[end+1:]
		}
		pos = end + 1
	}
	return buf, nil
}

// ---- gws.Event ----

func (cn *conn) OnOpen(*gws.Conn) {}

func (cn *conn) OnClose(_ *gws.Conn, err error) {
	var ce *gws.CloseError
	switch {
	case errors.As(err, &ce):
		cn.closeErr = parseCloseReason(int(ce.Code), ce.Reason)
	case err == nil:
		cn.closeErr = io.EOF
	default:
		cn.closeErr = err
	}
	close(cn.closed)
}

func (cn *conn) OnPing(ws *gws.Conn, payload []byte) {
	cn.touch(false)
	_ = ws.WritePong(payload)
}

func (cn *conn) OnPong(*gws.Conn, []byte) { cn.touch(false) }

var nl = []byte{'\n'}

// OnMessage handles one frame: replies complete their calls, messages go
// to their subscriptions in batches (one per subscription and frame).
func (cn *conn) OnMessage(_ *gws.Conn, m *gws.Message) {
	cn.touch(false)
	if m.Opcode != gws.OpcodeText {
		_ = m.Close()
		return
	}
	c := cn.c
	frame := m.Bytes()
	keep := false // messages alias the frame: do not recycle it
	var (
		bsub *Subscription
		bkey string
		msgs []Message
	)
	flush := func() {
		if bsub != nil && len(msgs) > 0 {
			bsub.deliver(msgs)
		}
		msgs = nil
	}
	ev := &cn.ev
	for rest := frame; len(rest) > 0; {
		var line []byte
		line, rest, _ = bytes.Cut(rest, nl)
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := parseEvent(line, ev); err != nil {
			c.log.Warn("brokerd sent a malformed event", "event", string(line))
			continue
		}
		switch ev.Op {
		case subproto.OpMsg:
			key := ev.Topic
			if ev.Sub != "" {
				key = ev.Sub
			}
			if bsub == nil || key != bkey {
				flush()
				c.mu.Lock()
				bsub = c.subs[key]
				c.mu.Unlock()
				bkey = key
			}
			s := bsub
			if s == nil {
				continue
			}
			m := Message{Offset: ev.Offset, Time: time.UnixMilli(ev.TS), Data: ev.Data, Topic: s.topic}
			if s.pattern {
				m.Topic, m.Pattern = ev.Topic, s.topic
				if !c.patternMsg(s, ev.Topic, ev.Offset) {
					continue // already delivered (a resumed subscription)
				}
			} else {
				if ev.Offset < s.next.Load() {
					continue // already delivered (a resumed subscription)
				}
				s.next.Store(ev.Offset + 1)
			}
			keep = true
			msgs = append(msgs, m)
		case subproto.OpOK, subproto.OpPong:
			c.reply(ev, false)
		case subproto.OpErr:
			if ev.ID == 0 {
				c.log.Warn("brokerd error", "err", errorOf(ev))
				continue
			}
			c.reply(ev, true)
		case subproto.OpTopic:
			c.onTopic(ev)
		case subproto.OpJoin, subproto.OpLeave, subproto.OpPresenceMuted:
			c.onPresence(ev)
		case subproto.OpUnsubbed:
			flush()
			bsub = nil
			c.unsubbed(ev.Topic, errorOf(ev))
		case subproto.OpWelcome:
			cn.info = ConnInfo{
				Session:   ev.Session,
				Node:      ev.Node,
				Version:   ev.Version,
				Heartbeat: time.Duration(ev.Heartbeat) * time.Second,
				Features:  ev.Features,
			}
			select {
			case <-cn.welcomed:
			default:
				close(cn.welcomed)
			}
		}
	}
	flush()
	if !keep {
		_ = m.Close()
	}
}

type nopLogger struct{}

func (nopLogger) Error(...any) {}
