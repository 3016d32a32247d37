package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// natsTarget is the baseline: a NATS server started in this process with
// its WebSocket listener, and JetStream (file store on a temporary
// directory) for durable publishes and replay, driven through nats.go
// over ws://.
type natsTarget struct {
	s   *natsserver.Server
	url string
	dir string
}

// startNATS starts the server. syncAlways makes JetStream fsync every
// write before acknowledging it, as brokerd does; without it JetStream
// acknowledges before fsync and syncs every two minutes.
func startNATS(syncAlways bool) (*natsTarget, error) {
	dir, err := os.MkdirTemp("", "brokerbench-nats-*")
	if err != nil {
		return nil, err
	}
	opts := &natsserver.Options{
		ServerName: "bench",
		Host:       "127.0.0.1",
		Port:       -1,
		NoLog:      true,
		NoSigs:     true,
		JetStream:  true,
		StoreDir:   dir,
		SyncAlways: syncAlways,
		Websocket:  natsserver.WebsocketOpts{Host: "127.0.0.1", Port: -1, NoTLS: true},
	}
	s, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, err
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("nats server not ready")
	}
	return &natsTarget{s: s, url: s.WebsocketURL(), dir: dir}, nil
}

func (t *natsTarget) Name() string { return "nats" }

func (t *natsTarget) connect() (*nats.Conn, error) {
	return nats.Connect(t.url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
}

func (t *natsTarget) Subscriber(ctx context.Context, topic string, fromStart bool, fn func([]byte)) (io.Closer, error) {
	nc, err := t.connect()
	if err != nil {
		return nil, err
	}
	cb := func(m *nats.Msg) { fn(m.Data) }
	var sub *nats.Subscription
	if fromStart {
		js, err := nc.JetStream()
		if err != nil {
			nc.Close()
			return nil, err
		}
		sub, err = js.Subscribe(topic, cb, nats.OrderedConsumer(), nats.DeliverAll())
		if err != nil {
			nc.Close()
			return nil, err
		}
	} else {
		if sub, err = nc.Subscribe(topic, cb); err != nil {
			nc.Close()
			return nil, err
		}
	}
	// Bound what a lagging subscriber buffers (nats.go drops past it and
	// counts a slow consumer); the default of 64 MiB per subscription
	// times a thousand subscribers would exhaust memory.
	_ = sub.SetPendingLimits(1<<16, 16<<20)
	if err := nc.Flush(); err != nil {
		nc.Close()
		return nil, err
	}
	return closerFunc(func() error { nc.Close(); return nil }), nil
}

type natsPublisher struct {
	nc      *nats.Conn
	js      nats.JetStreamContext
	window  int
	mu      sync.Mutex
	pending []func(error) // core: dones waiting for the next flush
	futs    chan jsPending
	wg      sync.WaitGroup
}

type jsPending struct {
	f    nats.PubAckFuture
	done func(error)
}

func (t *natsTarget) Publisher(ctx context.Context, window int, durable bool) (publisher, error) {
	nc, err := t.connect()
	if err != nil {
		return nil, err
	}
	p := &natsPublisher{nc: nc, window: window}
	if durable {
		if p.js, err = nc.JetStream(nats.PublishAsyncMaxPending(window)); err != nil {
			nc.Close()
			return nil, err
		}
		p.futs = make(chan jsPending, window)
		p.wg.Add(1)
		go p.acks()
	}
	return p, nil
}

// acks completes JetStream publishes in order.
func (p *natsPublisher) acks() {
	defer p.wg.Done()
	for jp := range p.futs {
		select {
		case <-jp.f.Ok():
			jp.done(nil)
		case err := <-jp.f.Err():
			jp.done(err)
		}
	}
}

func (p *natsPublisher) Publish(ctx context.Context, topic string, data []byte, done func(error)) error {
	if p.js != nil {
		f, err := p.js.PublishAsync(topic, data, nats.StallWait(time.Minute))
		if err != nil {
			return err
		}
		select {
		case p.futs <- jsPending{f, done}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Core NATS has no per-message ack: a flush (PING/PONG) every window
	// publishes bounds what is in flight, the closest equivalent.
	if err := p.nc.Publish(topic, data); err != nil {
		return err
	}
	p.mu.Lock()
	p.pending = append(p.pending, done)
	var flush []func(error)
	if len(p.pending) >= p.window {
		flush, p.pending = p.pending, nil
	}
	p.mu.Unlock()
	if flush != nil {
		err := p.nc.FlushTimeout(30 * time.Second)
		for _, d := range flush {
			d(err)
		}
	}
	return nil
}

func (p *natsPublisher) Close() error {
	p.mu.Lock()
	flush := p.pending
	p.pending = nil
	p.mu.Unlock()
	if flush != nil {
		err := p.nc.FlushTimeout(30 * time.Second)
		for _, d := range flush {
			d(err)
		}
	}
	if p.futs != nil {
		close(p.futs)
		p.wg.Wait()
	}
	p.nc.Close()
	return nil
}

// flusher is implemented by publishers that hold completions back.
type flusher interface{ Flush() error }

func (p *natsPublisher) Flush() error {
	p.mu.Lock()
	flush := p.pending
	p.pending = nil
	p.mu.Unlock()
	if flush == nil {
		return nil
	}
	err := p.nc.FlushTimeout(30 * time.Second)
	for _, d := range flush {
		d(err)
	}
	return err
}

func (t *natsTarget) Idle(ctx context.Context, topic string) (io.Closer, error) {
	c, br, err := rawDial(t.url, "")
	if err != nil {
		return nil, err
	}
	if err := rawReadUntil(br, []byte("INFO")); err != nil {
		c.Close()
		return nil, err
	}
	cmd := `CONNECT {"verbose":false,"pedantic":false,"protocol":1}` + "\r\nSUB " + topic + " 1\r\nPING\r\n"
	if err := rawWrite(c, []byte(cmd)); err != nil {
		c.Close()
		return nil, err
	}
	if err := rawReadUntil(br, []byte("PONG")); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func (t *natsTarget) RSS() (int64, bool, error) {
	rss, err := rssOf(0)
	return rss, true, err
}

// Prepare creates a file-backed stream holding topic.
func (t *natsTarget) Prepare(ctx context.Context, topic string) error {
	nc, err := t.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return err
	}
	name := strings.NewReplacer(".", "_", "*", "any", ">", "all").Replace(topic)
	_, err = js.AddStream(&nats.StreamConfig{Name: name, Subjects: []string{topic}, Storage: nats.FileStorage})
	if err != nil {
		return fmt.Errorf("creating stream %s: %w", name, err)
	}
	return nil
}

func (t *natsTarget) Close() error {
	t.s.Shutdown()
	t.s.WaitForShutdown()
	return os.RemoveAll(t.dir)
}
