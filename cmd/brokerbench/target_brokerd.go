package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/broker"
	client "github.com/brokerd/brokerd/clients/go"
	"github.com/brokerd/brokerd/internal/server"
	"github.com/brokerd/brokerd/store"
	"github.com/brokerd/brokerd/subproto"
)

var quiet = slog.New(slog.DiscardHandler)

// brokerdTarget drives a brokerd through clients/go: an external one at
// url, or one started in this process on a temporary directory.
type brokerdTarget struct {
	url     string
	subURLs []string // where subscribers connect, in turn (--sub-urls); empty: url
	next    atomic.Uint64
	pid     int // external broker's pid for RSS, 0 when unknown

	// embedded only
	dir string
	st  *store.DB
	b   *broker.Server
	hs  *http.Server
}

// startEmbedded starts brokerd in-process on a temporary data directory
// with fsync on, as in production. The admission limits are off: the
// per-connection command rate (the single fan-out publisher sends more
// than its default of 10,000 commands/s), the per-IP rate of new
// connections (every connection comes from 127.0.0.1) and the cap on
// open connections. With ephemeral set, the topics matching that pattern
// are ephemeral (a policy with the ephemeral defaults).
func startEmbedded(noDedup bool, ephemeral string) (*brokerdTarget, error) {
	var policies *broker.Policies
	if ephemeral != "" {
		ps, err := broker.NewPolicies(broker.Policy{}, []broker.Policy{{Match: ephemeral, Name: "ephemeral", Ephemeral: true}})
		if err != nil {
			return nil, err
		}
		policies = ps
	}
	dir, err := os.MkdirTemp("", "brokerbench-*")
	if err != nil {
		return nil, err
	}
	opts := &store.Options{Logger: quiet}
	if noDedup {
		opts.DedupWindow = -1
	}
	st, err := store.Open(dir, opts)
	if err != nil {
		return nil, err
	}
	b, err := broker.New(broker.Config{Node: "bench", Logger: quiet, CommandRate: -1, Policies: policies}, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	edge, err := server.New(server.Config{Logger: quiet, MaxConnections: -1, ConnRatePerIP: -1}, b)
	if err != nil {
		st.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		st.Close()
		return nil, err
	}
	hs := &http.Server{Handler: edge.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return &brokerdTarget{url: "ws://" + ln.Addr().String() + "/ws", dir: dir, st: st, b: b, hs: hs}, nil
}

func (t *brokerdTarget) Name() string { return "brokerd" }

// dial connects a client. An external brokerd limits the rate of new
// connections per IP: a refusal (HTTP 429, or a 1013 close) is retried
// for up to a minute.
func (t *brokerdTarget) dial(ctx context.Context, url string, opts ...client.Option) (*client.Client, error) {
	opts = append([]client.Option{client.WithLogger(quiet), client.WithBackoff(50*time.Millisecond, 2*time.Second)}, opts...)
	return retryRefused(ctx, func() (*client.Client, error) { return client.Dial(ctx, url, opts...) })
}

// subURL returns where the next subscriber connects: the --sub-urls in
// turn, or the broker's URL.
func (t *brokerdTarget) subURL() string {
	if len(t.subURLs) == 0 {
		return t.url
	}
	return t.subURLs[(t.next.Add(1)-1)%uint64(len(t.subURLs))]
}

func retryRefused[T any](ctx context.Context, f func() (T, error)) (T, error) {
	end := time.Now().Add(time.Minute)
	wait := 20 * time.Millisecond
	for {
		v, err := f()
		var he *client.HandshakeError
		var ce *client.CloseError
		refused := (errors.As(err, &he) && (he.StatusCode == http.StatusTooManyRequests || he.StatusCode == http.StatusServiceUnavailable)) ||
			(errors.As(err, &ce) && ce.Code == int(subproto.CloseTryAgainLater)) ||
			(err != nil && strings.Contains(err.Error(), "429"))
		if !refused || time.Now().After(end) || ctx.Err() != nil {
			return v, err
		}
		time.Sleep(time.Duration(rand.Int64N(int64(wait))))
		wait = min(2*wait, time.Second)
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func (t *brokerdTarget) Subscriber(ctx context.Context, topic string, fromStart bool, fn func([]byte)) (io.Closer, error) {
	c, err := t.dial(ctx, t.subURL())
	if err != nil {
		return nil, err
	}
	opts := client.SubOptions{}
	if fromStart {
		opts.From = client.Offset(1)
	}
	if _, err := c.Subscribe(ctx, topic, func(m *client.Message) { fn(m.Data) }, opts); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

type brokerdPublisher struct{ c *client.Client }

func (t *brokerdTarget) Publisher(ctx context.Context, window int, _ bool) (publisher, error) {
	c, err := t.dial(ctx, t.url, client.WithPublishWindow(window))
	if err != nil {
		return nil, err
	}
	return brokerdPublisher{c}, nil
}

func (p brokerdPublisher) Publish(ctx context.Context, topic string, data []byte, done func(error)) error {
	return p.c.PublishAsync(ctx, topic, data, func(_ client.Result, err error) { done(err) })
}

func (p brokerdPublisher) Close() error { return p.c.Close() }

func (t *brokerdTarget) Idle(ctx context.Context, topic string) (io.Closer, error) {
	type raw struct {
		c  net.Conn
		br *bufio.Reader
	}
	r, err := retryRefused(ctx, func() (raw, error) {
		c, br, err := rawDial(t.subURL(), subproto.Subprotocol)
		return raw{c, br}, err
	})
	if err != nil {
		return nil, err
	}
	c, br := r.c, r.br
	if err := rawReadUntil(br, []byte(`"welcome"`)); err != nil {
		c.Close()
		return nil, err
	}
	if err := rawWrite(c, []byte(`{"op":"sub","id":1,"topic":"`+topic+`"}`)); err != nil {
		c.Close()
		return nil, err
	}
	if err := rawReadUntil(br, []byte(`"ok"`)); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func (t *brokerdTarget) RSS() (int64, bool, error) {
	if t.b != nil {
		rss, err := rssOf(0)
		return rss, true, err
	}
	if t.pid == 0 {
		return 0, false, errors.New("the RSS of an external brokerd needs --pid")
	}
	rss, err := rssOf(t.pid)
	return rss, false, err
}

func (t *brokerdTarget) Prepare(context.Context, string) error { return nil }

func (t *brokerdTarget) Close() error {
	if t.b == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = t.b.Shutdown(ctx)
	_ = t.hs.Close()
	err := t.st.Close()
	if rerr := os.RemoveAll(t.dir); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("closing the embedded broker: %w", err)
	}
	return nil
}
