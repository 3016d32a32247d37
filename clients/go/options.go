package client

import (
	"context"
	"crypto/tls"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"time"
)

// Option configures a Client; see Dial.
type Option func(*options)

type options struct {
	token            func(context.Context) (string, error)
	staticToken      bool
	tls              *tls.Config
	header           http.Header
	minBackoff       time.Duration
	maxBackoff       time.Duration
	window           int
	buffer           int
	log              *slog.Logger
	handshakeTimeout time.Duration
	onConnect        func(ConnInfo)
	onDisconnect     func(error)
}

func defaultOptions() options {
	return options{
		header:           http.Header{},
		minBackoff:       100 * time.Millisecond,
		maxBackoff:       10 * time.Second,
		window:           1024,
		buffer:           64,
		log:              slog.Default(),
		handshakeTimeout: 10 * time.Second,
	}
}

// WithToken authenticates every connection with token, sent as
// "Authorization: Bearer <token>" in the upgrade request. A connection the
// broker closes for the token (4001, 4003) is not retried: the Client
// stops with that error. Use WithTokenFunc for tokens that expire.
func WithToken(token string) Option {
	return func(o *options) {
		o.token = func(context.Context) (string, error) { return token, nil }
		o.staticToken = true
	}
}

// WithTokenFunc calls fn for a token before every connection attempt, so
// that a reconnect after an expired token (4003) uses a fresh one.
func WithTokenFunc(fn func(ctx context.Context) (string, error)) Option {
	return func(o *options) { o.token = fn; o.staticToken = false }
}

// WithTLSConfig sets the TLS configuration of wss:// connections.
func WithTLSConfig(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithHeader adds headers to the upgrade request (for example for a proxy).
func WithHeader(h http.Header) Option {
	return func(o *options) {
		for k, v := range h {
			o.header[k] = append(o.header[k], v...)
		}
	}
}

// WithBackoff sets the reconnect backoff: attempt n waits a random time
// in [0, min(max, base·2^n)] (full jitter). Defaults 100ms and 10s.
func WithBackoff(base, max time.Duration) Option {
	return func(o *options) {
		if base > 0 {
			o.minBackoff = base
		}
		if max >= base && max > 0 {
			o.maxBackoff = max
		}
	}
}

// WithPublishWindow bounds the publishes in flight (sent or queued, not
// yet answered); PublishAsync blocks while it is full. Default 1,024.
func WithPublishWindow(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.window = n
		}
	}
}

// WithLogger sets the logger for connection events (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithHandshakeTimeout bounds one connection attempt, welcome included
// (default 10s).
func WithHandshakeTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.handshakeTimeout = d
		}
	}
}

// ConnInfo describes an established connection: the broker's welcome.
type ConnInfo struct {
	Session   string        // the broker's id of this connection
	Node      string        // the broker node
	Version   string        // the broker version
	Heartbeat time.Duration // the broker's ping interval
	// Features are the protocol v1.1 features the broker has ("last",
	// "since", "pattern_replay", "ack_epoch", "presence"); nil from a v1.0
	// broker. See HasFeature.
	Features []string
}

// HasFeature reports whether the broker has the protocol feature f.
func (ci ConnInfo) HasFeature(f string) bool { return slices.Contains(ci.Features, f) }

// WithOnConnect calls fn after every successful connection, the first one
// included, once subscriptions and unanswered commands have been sent
// again. fn runs on the client's reconnect goroutine; it must not block.
func WithOnConnect(fn func(ConnInfo)) Option { return func(o *options) { o.onConnect = fn } }

// WithOnDisconnect calls fn with the reason each time the connection is
// lost (a *CloseError when the broker closed it). It must not block.
func WithOnDisconnect(fn func(error)) Option { return func(o *options) { o.onDisconnect = fn } }

// backoff returns the wait before reconnect attempt n (0-based): full
// jitter over an exponentially growing cap, and at least retryAfter.
func (o *options) backoff(n int, retryAfter time.Duration) time.Duration {
	ceil := o.maxBackoff
	if n < 30 {
		if c := o.minBackoff << n; c > 0 && c < ceil {
			ceil = c
		}
	}
	d := time.Duration(rand.Int64N(int64(ceil) + 1))
	if d < retryAfter {
		d = retryAfter
	}
	return d
}
