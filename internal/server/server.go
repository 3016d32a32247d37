// Package server is brokerd's network edge: the HTTP mux, the WebSocket
// upgrade (gws) with subprotocol and Origin checks, and the health
// endpoints. It turns connections into broker sessions and knows nothing
// of topics itself.
package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/console"
	"github.com/brokerd/brokerd/subproto"
	"github.com/lxzan/gws"
)

// Config configures the edge. The zero value works.
type Config struct {
	// AllowedOrigins lists the browser origins (scheme://host[:port]) that
	// may connect; empty means the request's own host only; "*" allows any.
	// Clients that send no Origin header (backends) are always allowed.
	AllowedOrigins []string
	// MaxFrameBytes bounds one incoming WebSocket message (default 1 MiB).
	MaxFrameBytes int
	// WriteTimeout is how long a write may make no progress before the
	// connection is closed as a slow consumer (default 10s).
	WriteTimeout time.Duration
	// PongTimeout is how long past a heartbeat a silent connection is
	// kept (default 10s).
	PongTimeout time.Duration
	// HandshakeTimeout bounds the WebSocket handshake (default 5s).
	HandshakeTimeout time.Duration
	// MaxConnections bounds open WebSocket connections; past it a new one
	// is closed with 1013 and a retry_after_ms (default 10,000; negative:
	// no limit). With auth on, a connection without a handshake token is
	// not counted here until it authenticates, but in MaxUnauthConnections.
	MaxConnections int
	// MaxUnauthConnections bounds connections that have yet to send auth
	// (auth on, no token in the handshake); past it a new one is closed
	// with 1013, and one that authenticates when MaxConnections are open
	// too (default 1,000; negative: no limit).
	MaxUnauthConnections int
	// ConnRatePerIP bounds new connections per second from one IP (one
	// /64 for IPv6), with bursts of ConnBurstPerIP; past it the upgrade is
	// refused with HTTP 429 (defaults 1,000/s and 2,000: thousands of
	// clients behind one NAT get back in within seconds of a restart, while
	// one address cannot open connections faster than that; negative rate:
	// no limit).
	ConnRatePerIP  float64
	ConnBurstPerIP int
	// TrustedProxies lists the CIDRs of reverse proxies whose
	// X-Forwarded-For header names the client (for the per-IP limit).
	TrustedProxies []string
	// Compression offers permessage-deflate (off by default). Decompressed
	// messages stay bounded by MaxFrameBytes.
	Compression bool
	// MaxPageBytes bounds the message data of one history page of the
	// HTTP API (default 4 MiB). A page is streamed in pieces of at most
	// pageChunkBytes, so a client that does not read holds one piece.
	MaxPageBytes int

	// The HTTP server (HTTPServer). A WebSocket connection leaves these
	// behind once upgraded: its own timeouts apply from then on.
	//
	// MaxHeaderBytes bounds the request line and headers (default 16 KiB;
	// past it: HTTP 431).
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds reading a request's headers (default 5s).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included (default
	// 30s): a body that stalls is cut off.
	ReadTimeout time.Duration
	// HTTPWriteTimeout is how long writing one piece of an HTTP answer may
	// make no progress before the connection is closed (default 10s).
	HTTPWriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long (default 2m).
	IdleTimeout time.Duration
	// MaxHTTPConnections bounds open HTTP connections that have not become
	// WebSocket connections; past it a new connection is closed at once
	// (default 2,048; negative: no limit).
	MaxHTTPConnections int
	// MaxHTTPRequests bounds HTTP requests being served at once (the API,
	// metrics, health; not WebSocket connections); past it: HTTP 503 with
	// Retry-After (default 64; negative: no limit). Each may hold a body of
	// up to the broker's MaxMessageBytes for up to ReadTimeout.
	MaxHTTPRequests int
	// Logger receives the edge's logs (default slog.Default()).
	Logger *slog.Logger

	// Backup writes a consistent copy of this node's store to w, calling
	// size with its length first (store.DB.Backup); GET /v1/admin/backup
	// streams it. Nil: that endpoint answers 404.
	Backup func(w io.Writer, size func(int64)) (int64, error)
	// Reload reads the node's configuration again and applies what may
	// change while it runs, as SIGHUP does; POST /v1/admin/reload calls
	// it. Nil: that endpoint answers 404.
	Reload func() (ReloadResult, error)
	// AdminToken guards the admin endpoints (GET /v1/admin/backup, POST
	// /v1/admin/reload): a request must carry it as a bearer token.
	// Empty: they answer 403.
	AdminToken string
}

// ReloadResult is what a reload applied, as POST /v1/admin/reload answers
// it.
type ReloadResult struct {
	File         string   `json:"file,omitempty"`          // the config file read, if any
	Policies     int      `json:"policies"`                // the file's policies (the default one not counted)
	NeedsRestart []string `json:"needs_restart,omitempty"` // changed options that take effect only at a restart
}

func (c Config) withDefaults() Config {
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = 1 << 20
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.PongTimeout == 0 {
		c.PongTimeout = 10 * time.Second
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 10000
	}
	if c.MaxUnauthConnections == 0 {
		c.MaxUnauthConnections = 1000
	}
	if c.ConnRatePerIP == 0 {
		c.ConnRatePerIP = 1000
	}
	if c.ConnBurstPerIP == 0 {
		c.ConnBurstPerIP = 2000
	}
	if c.MaxPageBytes == 0 {
		c.MaxPageBytes = 4 << 20
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 16 << 10
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = 5 * time.Second
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 30 * time.Second
	}
	if c.HTTPWriteTimeout == 0 {
		c.HTTPWriteTimeout = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 2 * time.Minute
	}
	if c.MaxHTTPConnections == 0 {
		c.MaxHTTPConnections = 2048
	}
	if c.MaxHTTPRequests == 0 {
		c.MaxHTTPRequests = 64
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Server serves the broker over HTTP and WebSocket.
type Server struct {
	cfg         Config
	broker      *broker.Server
	log         *slog.Logger
	upgrader    *gws.Upgrader
	wsHandler   *wsHandler
	mux         *http.ServeMux
	origins     atomic.Pointer[originSet] // SetAllowedOrigins replaces it
	readTimeout time.Duration
	readPanics  atomic.Int64
	admit       *admission
	http        httpLimits
	backupBusy  atomic.Bool // a backup is being streamed
}

// New returns the edge for b.
func New(cfg Config, b *broker.Server) (*Server, error) {
	cfg = cfg.withDefaults()
	if cfg.MaxFrameBytes < 0 || cfg.WriteTimeout < 0 || cfg.PongTimeout < 0 || cfg.MaxPageBytes < 0 ||
		cfg.MaxHeaderBytes < 0 || cfg.ReadHeaderTimeout < 0 || cfg.ReadTimeout < 0 || cfg.HTTPWriteTimeout < 0 || cfg.IdleTimeout < 0 {
		return nil, errors.New("server: negative limit")
	}
	s := &Server{
		cfg:         cfg,
		broker:      b,
		log:         cfg.Logger,
		mux:         http.NewServeMux(),
		readTimeout: b.Config().Heartbeat + cfg.PongTimeout,
	}
	if err := s.SetAllowedOrigins(cfg.AllowedOrigins); err != nil {
		return nil, err
	}
	s.http.init(cfg)
	s.admit = newAdmission(cfg.MaxConnections, cfg.ConnRatePerIP, cfg.ConnBurstPerIP, 65536)
	s.admit.maxUnauthed = int64(cfg.MaxUnauthConnections)
	for _, c := range cfg.TrustedProxies {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("server: trusted proxy %q is not a CIDR (e.g. 10.0.0.0/8): %v", c, err)
		}
		s.admit.trusted = append(s.admit.trusted, p.Masked())
	}
	s.wsHandler = &wsHandler{srv: s}
	s.upgrader = gws.NewUpgrader(s.wsHandler, &gws.ServerOption{
		ReadMaxPayloadSize: cfg.MaxFrameBytes,
		// Each connection holds its read buffer for life: keep it small
		// (larger payloads are read into their own buffer anyway).
		ReadBufferSize: readBufferSize,
		// Without context takeover a connection keeps no compression
		// window between messages, so compression costs no idle memory.
		PermessageDeflate: gws.PermessageDeflate{Enabled: cfg.Compression},
		CheckUtf8Enabled:  true,
		HandshakeTimeout:  cfg.HandshakeTimeout,
		SubProtocols:      []string{subproto.Subprotocol},
		// The Origin check and everything else about admission is ours;
		// serveWS has done it before the upgrade.
		Authorize:  func(*http.Request, gws.SessionStorage) bool { return true },
		NewSession: func() gws.SessionStorage { return &connState{} },
		Recovery: func(l gws.Logger) {
			if p := recover(); p != nil {
				s.readPanics.Add(1)
				s.log.Error("recovered from a panic handling a message", "panic", fmt.Sprint(p))
			}
		},
		Logger: gwsLogger{s.log},
	})
	s.mux.HandleFunc("/ws", s.serveWS)
	s.mux.HandleFunc("GET /healthz", s.serveHealth)
	s.mux.HandleFunc("GET /readyz", s.serveReady)
	s.mux.HandleFunc("POST /v1/topics/{topic}", s.servePublish)
	s.mux.HandleFunc("GET /v1/topics/{topic}/messages", s.serveMessages)
	s.mux.HandleFunc("GET /v1/topics/{topic}/presence", s.servePresence)
	s.mux.HandleFunc("GET /v1/topics", s.serveTopics)
	s.mux.HandleFunc("GET /v1/admin/backup", s.serveBackup)
	s.mux.Handle("/v1/admin/backup", methodNotAllowed(http.MethodGet, http.MethodHead))
	s.mux.HandleFunc("POST /v1/admin/reload", s.serveReload)
	s.mux.Handle("/v1/admin/reload", methodNotAllowed(http.MethodPost))
	// Other methods on the API's paths: 405 naming the allowed ones, not
	// the console's 404.
	s.mux.Handle("/v1/topics/{topic}", methodNotAllowed(http.MethodPost))
	s.mux.Handle("/v1/topics/{topic}/messages", methodNotAllowed(http.MethodGet, http.MethodHead))
	s.mux.Handle("/v1/topics/{topic}/presence", methodNotAllowed(http.MethodGet, http.MethodHead))
	s.mux.Handle("/v1/topics", methodNotAllowed(http.MethodGet, http.MethodHead))
	s.mux.Handle("/", console.Handler())
	return s, nil
}

// Handler returns the HTTP handler serving every endpoint, with the
// bound on requests served at once.
func (s *Server) Handler() http.Handler { return s.http.limit(s.mux) }

// Mux returns the mux, for wiring further endpoints.
func (s *Server) Mux() *http.ServeMux { return s.mux }

// Rejected counts connections refused by the connection limit and by the
// per-IP connection rate.
func (s *Server) Rejected() (connLimit, rateLimit int64) {
	return s.admit.rejectedLimit.Load(), s.admit.rejectedRate.Load()
}

// RejectedUnauthed counts connections refused because
// MaxUnauthConnections connections were waiting to authenticate.
func (s *Server) RejectedUnauthed() int64 { return s.admit.rejectedUnauthed.Load() }

// Connections is the number of open WebSocket connections counted in
// MaxConnections (authenticated, or not needing to be).
func (s *Server) Connections() int64 { return s.admit.conns.Load() }

// Unauthed is the number of open connections that have yet to authenticate.
func (s *Server) Unauthed() int64 { return s.admit.unauthed.Load() }

// ReadPanics counts panics recovered in WebSocket readers.
func (s *Server) ReadPanics() int64 { return s.readPanics.Load() }

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.broker.Draining() {
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	if _, _, err := s.broker.Store().Topic("_readyz"); err != nil {
		http.Error(w, "store unusable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	if err := s.broker.StorageFailing(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// methodNotAllowed answers 405 with the Allow header.
func methodNotAllowed(allow ...string) http.Handler {
	list := strings.Join(allow, ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", list)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]any{"code": subproto.CodeBadRequest,
			"message": r.Method + " is not allowed here; allowed: " + list})
	})
}

type gwsLogger struct{ l *slog.Logger }

func (g gwsLogger) Error(v ...any) { g.l.Error("websocket", "detail", fmt.Sprint(v...)) }

// originSet is the parsed list of allowed origins.
type originSet struct {
	any bool                // "*" was listed
	m   map[string]struct{} // scheme://host[:port], lower case
}

// SetAllowedOrigins replaces the allowed origins (Config.AllowedOrigins)
// while the server runs: upgrades and HTTP publishes from then on are
// checked against them; open connections stay. A malformed origin is an
// error and changes nothing.
func (s *Server) SetAllowedOrigins(origins []string) error {
	set := &originSet{m: make(map[string]struct{})}
	for _, o := range origins {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if o == "*" {
			set.any = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("server: allowed origin %q is not scheme://host[:port]", o)
		}
		set.m[strings.ToLower(u.Scheme+"://"+u.Host)] = struct{}{}
	}
	s.origins.Store(set)
	return nil
}
