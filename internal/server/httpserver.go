package server

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/subproto"
	"golang.org/x/time/rate"
)

// httpLimits bounds what plain HTTP clients can hold: open connections
// not (yet) upgraded to WebSocket, and requests being served at once.
// Each is counted when it bites.
type httpLimits struct {
	maxConns int64
	conns    atomic.Int64 // open connections, hijacked ones excluded

	requests chan struct{} // one token per request being served; nil: no limit

	rejectedConns    atomic.Int64
	rejectedRequests atomic.Int64
	writeTimeouts    atomic.Int64 // answers cut off by the write deadline
	acceptErrors     atomic.Int64
	acceptLog        *rate.Limiter // WARN for accept errors at most this often
	acceptUnlogged   atomic.Int64
}

func (h *httpLimits) init(cfg Config) {
	h.maxConns = int64(cfg.MaxHTTPConnections)
	if cfg.MaxHTTPRequests > 0 {
		h.requests = make(chan struct{}, cfg.MaxHTTPRequests)
	}
	h.acceptLog = rate.NewLimiter(rate.Every(10*time.Second), 1)
}

// Listener wraps ln so that its accept errors (the open-file limit
// reached, above all) are counted and logged at WARN, at most once every
// 10 s with the number left unlogged. http.Server retries them after a
// short pause, so the server recovers once descriptors free up.
func (s *Server) Listener(ln net.Listener) net.Listener { return &acceptLogger{Listener: ln, srv: s} }

type acceptLogger struct {
	net.Listener
	srv *Server
}

func (l *acceptLogger) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		h := &l.srv.http
		h.acceptErrors.Add(1)
		if h.acceptLog.Allow() {
			l.srv.log.Warn("accepting a connection failed; retrying (is the open-file limit too low?)", "err", err, "unlogged_since_last", h.acceptUnlogged.Swap(0))
		} else {
			h.acceptUnlogged.Add(1)
		}
	}
	return c, err
}

// AcceptErrors counts failed accepts of the listener given to Listener.
func (s *Server) AcceptErrors() int64 { return s.http.acceptErrors.Load() }

// connState counts connections and closes a new one past the cap. It runs
// on the accept loop: it must not block (a closed connection gets no
// answer, as a TLS one could not get it without a handshake).
func (h *httpLimits) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		if n := h.conns.Add(1); h.maxConns > 0 && n > h.maxConns {
			h.rejectedConns.Add(1)
			_ = c.Close()
		}
	case http.StateHijacked, http.StateClosed:
		h.conns.Add(-1)
	}
}

// limit answers 503 when MaxHTTPRequests requests are being served. The
// WebSocket endpoint is left out: its connections have their own limits
// and leave the HTTP server as soon as they are upgraded.
func (h *httpLimits) limit(next http.Handler) http.Handler {
	if h.requests == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			next.ServeHTTP(w, r)
			return
		}
		select {
		case h.requests <- struct{}{}:
			defer func() { <-h.requests }()
		default:
			h.rejectedRequests.Add(1)
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"code": subproto.CodeUnavailable,
				"message": "too many requests in progress; retry later", "retry_after_ms": 1000})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// HTTPServer returns an http.Server for the edge with its bounds: header
// size, read timeouts for headers and bodies, a write timeout, an idle
// timeout and the cap on open HTTP connections. WebSocket connections are
// hijacked before these apply to them for long: the upgrade clears every
// deadline and the connection's own read and write timeouts take over.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s.Handler(),
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		// From the end of the headers: reading the body, then writing the
		// answer. A history page moves its deadline on with each piece.
		WriteTimeout: s.cfg.ReadTimeout + s.cfg.HTTPWriteTimeout,
		IdleTimeout:  s.cfg.IdleTimeout,
		ConnState:    s.http.connState,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// HTTPRejected counts HTTP connections closed by the connection cap and
// requests answered 503 by the request cap.
func (s *Server) HTTPRejected() (conns, requests int64) {
	return s.http.rejectedConns.Load(), s.http.rejectedRequests.Load()
}

// HTTPWriteTimeouts counts HTTP answers cut off because the client did not
// read them within HTTPWriteTimeout.
func (s *Server) HTTPWriteTimeouts() int64 { return s.http.writeTimeouts.Load() }

// HTTPConnections is the number of open HTTP connections not upgraded to
// WebSocket.
func (s *Server) HTTPConnections() int64 { return s.http.conns.Load() }

// writeDeadline pushes the write deadline of an HTTP answer HTTPWriteTimeout
// ahead; called before each piece is written.
func (s *Server) writeDeadline(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.HTTPWriteTimeout))
}
