package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/subproto"
	"github.com/lxzan/gws"
)

// wsHandler adapts gws connections to broker sessions.
type wsHandler struct {
	srv *Server
}

// connState is the gws session storage of one connection; it holds the
// broker session instead of a map, so every event finds it without a lock.
type connState struct {
	sess *broker.Session
	conn *wsConn
	slot atomic.Int32 // the connection slot held: slotNone, slotAuthed or slotUnauthed
}

// Connection slots: a connection that may still authenticate holds one of
// the separate, smaller set of slots for unauthenticated connections, so
// that token-less connections cannot take the slots of clients that have
// a token.
const (
	slotNone int32 = iota
	slotAuthed
	slotUnauthed
)

// release gives back the connection slot of st, once.
func (s *Server) release(st *connState) {
	switch st.slot.Swap(slotNone) {
	case slotAuthed:
		s.admit.release()
	case slotUnauthed:
		s.admit.releaseUnauthed()
	}
}

// authenticated moves st from an unauthenticated slot to a slot of its
// own; false when those are all taken.
func (s *Server) authenticated(st *connState) bool {
	if !s.admit.acquire() {
		s.log.Warn("connection limit reached", "max", s.cfg.MaxConnections, "when", "authenticating")
		return false
	}
	if st.slot.CompareAndSwap(slotUnauthed, slotAuthed) {
		s.admit.releaseUnauthed()
		return true
	}
	s.admit.release() // closed meanwhile
	return false
}

func (*connState) Len() int                     { return 0 }
func (*connState) Load(string) (any, bool)      { return nil, false }
func (*connState) Delete(string)                {}
func (*connState) Store(string, any)            {}
func (*connState) Range(func(string, any) bool) {}

func stateOf(c *gws.Conn) *connState { return c.Session().(*connState) }

// wsConn implements broker.Conn over a gws connection.
//
// Write deadlines: a deadline is set for each write and cleared once no
// write is in progress. A deadline left over from an earlier write would
// make the writes that gws does on its own (the close frame of a protocol
// error, the answer to a client's close) and the pongs fail once the
// connection has been idle for the write timeout.
type wsConn struct {
	c            *gws.Conn
	writeTimeout time.Duration
	closeOnce    sync.Once

	mu      sync.Mutex
	writers int  // writes in progress; guarded by mu
	closing bool // Close has begun; guarded by mu
}

// begin sets the write deadline for a write about to start.
func (w *wsConn) begin() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing {
		return net.ErrClosed
	}
	w.writers++
	return w.c.SetWriteDeadline(time.Now().Add(w.writeTimeout))
}

// end clears the write deadline when the last write in progress is done.
func (w *wsConn) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writers--
	if w.writers == 0 && !w.closing {
		_ = w.c.SetWriteDeadline(time.Time{})
	}
}

func (w *wsConn) WriteFrame(parts [][]byte) error {
	if err := w.begin(); err != nil {
		return err
	}
	defer w.end()
	return w.c.Writev(gws.OpcodeText, parts...)
}

func (w *wsConn) WritePing() error {
	if err := w.begin(); err != nil {
		return err
	}
	defer w.end()
	return w.c.WritePing(nil)
}

// writePong answers a client's ping, under the same write timeout.
func (w *wsConn) writePong(payload []byte) {
	if w.begin() != nil {
		return
	}
	defer w.end()
	_ = w.c.WritePong(payload)
}

// Close sends a close frame best-effort. A write stuck on a peer that does
// not read is cut short first, so Close returns within about a second.
func (w *wsConn) Close(code uint16, reason []byte) {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closing = true
		_ = w.c.SetWriteDeadline(time.Now().Add(time.Second))
		w.mu.Unlock()
		_ = w.c.WriteClose(code, reason)
		_ = w.c.NetConn().Close()
	})
}

func (h *wsHandler) touch(c *gws.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(h.srv.readTimeout))
}

func (h *wsHandler) OnOpen(c *gws.Conn) {}

func (h *wsHandler) OnClose(c *gws.Conn, err error) {
	st := stateOf(c)
	h.srv.release(st)
	if st.sess != nil {
		st.sess.Closed(err)
	}
}

func (h *wsHandler) OnPing(c *gws.Conn, payload []byte) {
	h.touch(c)
	st := stateOf(c)
	if st.sess != nil && !st.sess.HandlePing() {
		return
	}
	if st.conn != nil {
		st.conn.writePong(payload)
	}
}

func (h *wsHandler) OnPong(c *gws.Conn, payload []byte) { h.touch(c) }

func (h *wsHandler) OnMessage(c *gws.Conn, m *gws.Message) {
	defer m.Close()
	h.touch(c)
	st := stateOf(c)
	if m.Opcode != gws.OpcodeText {
		st.sess.HandleBinary()
		return
	}
	st.sess.HandleFrame(m.Bytes())
}

// offersSubprotocol reports whether the request offers our subprotocol.
func offersSubprotocol(r *http.Request) bool {
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if strings.TrimSpace(p) == subproto.Subprotocol {
				return true
			}
		}
	}
	return false
}

// checkOrigin applies the allowed origins: no Origin header (a backend
// client) always passes; otherwise the origin must be listed, be the
// request's own host when nothing is listed, or the list must hold "*".
func (s *Server) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	set := s.origins.Load()
	if set.any {
		return true
	}
	o := strings.ToLower(strings.TrimSuffix(origin, "/"))
	if len(set.m) == 0 {
		_, host, ok := strings.Cut(o, "://")
		return ok && host == strings.ToLower(r.Host)
	}
	_, ok := set.m[o]
	return ok
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "the WebSocket endpoint takes GET with an Upgrade header", http.StatusMethodNotAllowed)
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "this endpoint speaks WebSocket only (subprotocol "+subproto.Subprotocol+")", http.StatusUpgradeRequired)
		return
	}
	if !r.ProtoAtLeast(1, 1) {
		http.Error(w, "the WebSocket upgrade needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	if !offersSubprotocol(r) {
		http.Error(w, "unsupported or missing WebSocket subprotocol; this server speaks: "+subproto.Subprotocol, http.StatusBadRequest)
		return
	}
	if !s.checkOrigin(r) {
		s.log.Info("refused origin", "origin", r.Header.Get("Origin"), "remote", r.RemoteAddr)
		http.Error(w, "origin not allowed: "+r.Header.Get("Origin"), http.StatusForbidden)
		return
	}
	if !s.admit.allowIP(r) {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many new connections from your address; retry later", http.StatusTooManyRequests)
		return
	}
	if s.broker.Draining() {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "server is shutting down", http.StatusServiceUnavailable)
		return
	}
	// The offer may span several header lines (RFC 6455 4.1); gws reads
	// only the first. We have checked that ours is offered: select it.
	r.Header.Set("Sec-WebSocket-Protocol", subproto.Subprotocol)
	// Hijack here rather than in gws: its Upgrade drops the bytes the HTTP
	// server has read ahead, and with them a first frame that a client
	// sent right behind its request.
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "the WebSocket endpoint needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	netConn, brw, err := hj.Hijack()
	if err != nil {
		s.log.Debug("websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	c, err := s.upgrader.UpgradeFromConn(tooLargeConn{netConn}, smallReader(netConn, brw.Reader), r)
	if err != nil {
		s.log.Debug("websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	wc := &wsConn{c: c, writeTimeout: s.cfg.WriteTimeout}
	st := stateOf(c)
	st.conn = wc
	tok := bearer(r)
	info := broker.ConnInfo{Remote: r.RemoteAddr, Token: tok}
	if s.broker.Config().Auth != nil && tok == "" {
		// No token yet: one of the slots for unauthenticated connections
		// until it sends auth.
		if !s.admit.acquireUnauthed() {
			s.log.Warn("limit of unauthenticated connections reached", "remote", r.RemoteAddr, "max", s.cfg.MaxUnauthConnections)
			wc.Close(uint16(subproto.CloseTryAgainLater), subproto.AppendCloseReason(nil, "try_again_later", "too many connections waiting to authenticate", s.broker.RetryAfter()))
			return
		}
		st.slot.Store(slotUnauthed)
		info.OnAuthenticated = func() bool { return s.authenticated(st) }
	} else {
		if !s.admit.acquire() {
			s.log.Warn("connection limit reached", "remote", r.RemoteAddr, "max", s.cfg.MaxConnections)
			wc.Close(uint16(subproto.CloseTryAgainLater), subproto.AppendCloseReason(nil, "try_again_later", "connection limit reached", s.broker.RetryAfter()))
			return
		}
		st.slot.Store(slotAuthed)
	}
	sess, err := s.broker.Connect(wc, info)
	if err != nil {
		code := subproto.CloseInternal
		if errors.Is(err, broker.ErrDraining) {
			code = subproto.CloseGoingAway
		}
		wc.Close(uint16(code), subproto.CloseReason(code, s.broker.RetryAfter()))
		s.release(st)
		return
	}
	st.sess = sess
	h := s.wsHandler
	h.touch(c)
	go s.readLoop(c, sess)
}

// readLoop runs gws's read loop and turns a panic inside it (a malformed
// frame that gws does not reject cleanly) into a 1002 close of that one
// connection instead of a crash of the process.
func (s *Server) readLoop(c *gws.Conn, sess *broker.Session) {
	defer func() {
		if p := recover(); p != nil {
			s.readPanics.Add(1)
			sess.Logger().Warn("recovered from a panic in the websocket reader", "panic", fmt.Sprint(p))
			sess.Close(uint16(subproto.CloseProtocolError), subproto.AppendCloseReason(nil, subproto.CloseProtocolError.String(), "malformed frame", 0))
			_ = c.NetConn().Close()
			sess.Closed(errors.New("reader panic"))
			s.release(stateOf(c))
		}
	}()
	c.ReadLoop()
}

// isTimeout reports whether err is a deadline error.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// tooLargeConn corrects the close code gws sends when a compressed
// message inflates past the frame limit (a deflate bomb, or a message one
// byte over the limit once inflated): gws closes with 1011 ("internal
// error, reconnect and retry") and the reason "gws: message too large";
// the contract is 1009, as for an uncompressed message over the limit.
// gws writes each frame with one Write, so the close frame is whole here.
type tooLargeConn struct{ net.Conn }

var gwsTooLarge = []byte("gws: message too large")

func (c tooLargeConn) Write(b []byte) (int, error) {
	if len(b) >= 4 && b[0] == 0x88 && b[1] < 126 && b[2] == 0x03 && b[3] == 0xf3 && bytes.Equal(b[4:], gwsTooLarge) {
		p := bytes.Clone(b)
		binary.BigEndian.PutUint16(p[2:], uint16(subproto.CloseTooBig))
		return c.Conn.Write(p)
	}
	return c.Conn.Write(b)
}

// readBufferSize is the read buffer each connection keeps for life.
const readBufferSize = 1024

// smallReader returns a reader of readBufferSize over conn that first
// yields what the HTTP server's reader (4 KiB, which would otherwise stay
// with the connection for life) had already read ahead.
func smallReader(conn net.Conn, br *bufio.Reader) *bufio.Reader {
	n := br.Buffered()
	if n == 0 {
		return bufio.NewReaderSize(conn, readBufferSize)
	}
	ahead, _ := br.Peek(n)
	return bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(ahead)), conn), readBufferSize)
}
