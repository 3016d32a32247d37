package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// Client is a connection to a brokerd that reconnects by itself. Its
// methods are safe for concurrent use.
type Client struct {
	url string
	o   options
	log *slog.Logger

	window  chan struct{} // one token per publish in flight
	nextID  atomic.Uint64
	quit    chan struct{} // closed when the client stops
	quitCtx context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	// Lock order: mu, then nothing else of this package.
	mu      sync.Mutex
	cur     *conn                    // nil while disconnected
	calls   map[uint64]*call         // commands awaiting their reply
	subs    map[string]*Subscription // by topic or pattern
	stopped bool
	err     error // why the client stopped
	info    ConnInfo
}

// Dial connects to the broker at url (ws:// or wss://, usually ending in
// /ws) and returns once the broker's welcome has arrived. When ctx ends or
// the first attempt fails, Dial returns the error; later disconnections
// are repaired in the background.
func Dial(ctx context.Context, rawURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, fmt.Errorf("client: url %q: the scheme must be ws or wss", rawURL)
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{
		url:    rawURL,
		o:      o,
		log:    o.log,
		window: make(chan struct{}, o.window),
		quit:   make(chan struct{}),
		calls:  make(map[uint64]*call),
		subs:   make(map[string]*Subscription),
	}
	c.quitCtx, c.cancel = context.WithCancel(context.Background())
	hctx, cancel := context.WithTimeout(ctx, o.handshakeTimeout)
	defer cancel()
	cn, err := c.connect(hctx)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.attach(cn)
	c.wg.Add(1)
	go c.run(cn)
	return c, nil
}

// Info returns the welcome of the current (or last) connection.
func (c *Client) Info() ConnInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}

// Connected reports whether the client has a live connection now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur != nil
}

// Done is closed when the client has stopped: after Close, or when the
// broker refused it for good (a bad token); Err then says why.
func (c *Client) Done() <-chan struct{} { return c.quit }

// Err returns why the client stopped (ErrClosed after Close), or nil while
// it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection with 1000 and stops reconnecting. Calls
// waiting for a reply return ErrClosed and subscriptions end. It waits
// for the client's goroutines, not for subscription handlers to return.
func (c *Client) Close() error {
	c.stop(ErrClosed)
	c.wg.Wait()
	return nil
}

// stop ends the client with err.
func (c *Client) stop(err error) {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped = true
	c.err = err
	cur := c.cur
	c.cur = nil
	calls := c.calls
	c.calls = make(map[uint64]*call)
	for _, s := range c.subs {
		c.endSubLocked(s, err)
	}
	c.mu.Unlock()
	close(c.quit)
	c.cancel()
	if cur != nil {
		cur.close()
	}
	for _, cl := range calls {
		cl.finish(nil, err)
	}
}

// run is the reconnect loop: it waits for the connection to end, then
// connects again with backoff, until the client stops.
func (c *Client) run(cn *conn) {
	defer c.wg.Done()
	for {
		select {
		case <-cn.closed:
		case <-c.quit:
			return
		}
		cause := cn.closeErr
		c.detach(cn, cause)
		if c.permanent(cause) {
			c.log.Error("brokerd connection refused for good", "err", cause)
			c.stop(cause)
			return
		}
		var retryAfter time.Duration
		var ce *CloseError
		if errors.As(cause, &ce) {
			retryAfter = ce.RetryAfter
		}
		c.log.Info("brokerd connection lost; reconnecting", "err", cause, "retry_after", retryAfter)
		attempt := 0
		if time.Since(cn.since) < 5*time.Second {
			attempt = 1 // it did not last: do not come back at once
		}
		for {
			t := time.NewTimer(c.o.backoff(attempt, retryAfter))
			select {
			case <-t.C:
			case <-c.quit:
				t.Stop()
				return
			}
			retryAfter = 0
			ctx, cancel := context.WithTimeout(c.quitCtx, c.o.handshakeTimeout)
			next, err := c.connect(ctx)
			cancel()
			if err == nil {
				cn = next
				break
			}
			if c.permanent(err) {
				c.log.Error("brokerd connection refused for good", "err", err)
				c.stop(err)
				return
			}
			var ce *CloseError
			if errors.As(err, &ce) {
				retryAfter = ce.RetryAfter
			}
			c.log.Debug("brokerd reconnect failed", "attempt", attempt, "err", err)
			attempt++
		}
		c.attach(cn)
	}
}

// permanent reports whether err means reconnecting is pointless: the
// token was refused and no token function can produce a new one.
func (c *Client) permanent(err error) bool {
	var ce *CloseError
	if errors.As(err, &ce) && (ce.Code == int(subproto.CloseUnauthorized) || ce.Code == int(subproto.CloseTokenExpired)) {
		return c.o.token == nil || c.o.staticToken
	}
	return false
}

// attach makes cn the current connection and sends it every subscription
// and every command that has no reply yet, in their original order.
func (c *Client) attach(cn *conn) {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		cn.close()
		return
	}
	c.cur = cn
	c.info = cn.info
	if cn.token != "" {
		// The token went in the upgrade request too; an auth command first
		// also covers servers that take it only that way. Commands run in
		// order, so everything after it is authenticated.
		cl := &call{kind: kAuth, key: cn.token}
		cl.done = func(_ *event, err error) {
			if err != nil && !errors.Is(err, errLost) {
				c.log.Warn("brokerd refused the token", "err", err)
			}
		}
		cl.id = c.nextID.Add(1)
		c.calls[cl.id] = cl
		cn.appendLocked(cl)
	}
	subs := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	slices.SortFunc(subs, func(a, b *Subscription) int { return cmp.Compare(a.seq, b.seq) })
	for _, s := range subs {
		c.sendSubLocked(s)
	}
	resend := make([]*call, 0, len(c.calls))
	var refused []*call
	for id, cl := range c.calls {
		if cl.kind == kPresence && !cn.info.HasFeature(subproto.FeaturePresence) {
			delete(c.calls, id)
			refused = append(refused, cl)
			continue
		}
		if cl.retry && !cl.parked {
			resend = append(resend, cl)
		}
	}
	slices.SortFunc(resend, func(a, b *call) int { return cmp.Compare(a.id, b.id) })
	for _, cl := range resend {
		cn.appendLocked(cl)
	}
	info := cn.info
	c.mu.Unlock()
	for _, cl := range refused {
		cl.finish(nil, unsupported(subproto.FeaturePresence, "presence of "+cl.topic))
	}
	cn.kickWriter()
	if f := c.o.onConnect; f != nil {
		f(info)
	}
}

// detach forgets cn; commands that are not sent again (subs, unsubs) are
// told the connection is gone.
func (c *Client) detach(cn *conn, cause error) {
	var lost []*call
	c.mu.Lock()
	if c.cur == cn {
		c.cur = nil
	}
	for id, cl := range c.calls {
		if !cl.retry {
			delete(c.calls, id)
			lost = append(lost, cl)
		}
	}
	c.mu.Unlock()
	for _, cl := range lost {
		cl.finish(nil, errLost)
	}
	if f := c.o.onDisconnect; f != nil {
		f(cause)
	}
}

// errLost tells a call that its connection ended before the reply.
var errLost = errors.New("client: connection lost")

type callKind uint8

const (
	kPub callKind = iota
	kAck
	kPing
	kSub
	kUnsub
	kAuth
	kPresence
)

// call is a command waiting for its reply. Calls with retry set are sent
// again on every new connection until their reply arrives.
type call struct {
	id       uint64
	kind     callKind
	retry    bool
	parked   bool          // waiting to be retried after an unavailable
	win      chan struct{} // the publish window it holds a token of, or nil
	topic    string
	data     []byte
	key      string
	consumer string
	offset   uint64
	epoch    string // kAck: the epoch of offset
	sub      *Subscription
	cmd      subproto.Command // kSub: the command as sent
	done     func(ev *event, err error)
}

// encode appends the command of cl to dst.
func (cl *call) encode(dst []byte) []byte {
	var cmd subproto.Command
	switch cl.kind {
	case kPub:
		cmd = subproto.Command{Op: subproto.OpPub, ID: cl.id, Topic: cl.topic, Data: cl.data, Key: cl.key}
	case kAck:
		cmd = subproto.Command{Op: subproto.OpAck, ID: cl.id, Topic: cl.topic, Consumer: cl.consumer, Offset: cl.offset, Epoch: cl.epoch}
	case kPing:
		cmd = subproto.Command{Op: subproto.OpPing, ID: cl.id}
	case kUnsub:
		cmd = subproto.Command{Op: subproto.OpUnsub, ID: cl.id, Topic: cl.topic}
	case kSub:
		cmd = cl.cmd
		cmd.ID = cl.id
	case kAuth:
		cmd = subproto.Command{Op: subproto.OpAuth, ID: cl.id, Token: cl.key}
	case kPresence:
		cmd = subproto.Command{Op: subproto.OpPresence, ID: cl.id, Topic: cl.topic}
	}
	return subproto.AppendCommand(dst, &cmd)
}

// finish completes cl; the caller has removed it from c.calls, so it runs
// once.
func (cl *call) finish(ev *event, err error) {
	if cl.win != nil {
		<-cl.win
		cl.win = nil
	}
	if cl.done != nil {
		cl.done(ev, err)
	}
}

// start registers cl and sends it when connected.
func (c *Client) start(cl *call) error {
	c.mu.Lock()
	if c.stopped {
		err := c.err
		c.mu.Unlock()
		if cl.win != nil {
			<-cl.win
			cl.win = nil
		}
		return err
	}
	cl.id = c.nextID.Add(1)
	c.calls[cl.id] = cl
	cur := c.cur
	if cur != nil {
		cur.appendLocked(cl)
	}
	c.mu.Unlock()
	if cur != nil {
		cur.kickWriter()
	}
	return nil
}

// abandon removes cl when its caller gave up waiting.
func (c *Client) abandon(cl *call, err error) {
	c.mu.Lock()
	mine := c.calls[cl.id] == cl
	if mine {
		delete(c.calls, cl.id)
	}
	c.mu.Unlock()
	if mine {
		cl.finish(nil, err)
	}
}

// wait runs cl and waits for its reply.
func (c *Client) wait(ctx context.Context, cl *call) (*event, error) {
	type result struct {
		ev  event
		err error
	}
	ch := make(chan result, 1)
	cl.done = func(ev *event, err error) {
		var r result
		if ev != nil {
			r.ev = *ev
		}
		r.err = err
		ch <- r
	}
	if err := c.start(cl); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		return &r.ev, nil
	case <-ctx.Done():
		c.abandon(cl, ctx.Err())
		r := <-ch
		if r.err != nil {
			return nil, r.err
		}
		return &r.ev, nil
	}
}

// reply completes the call an ok, err or pong answers.
func (c *Client) reply(ev *event, isErr bool) {
	c.mu.Lock()
	cl := c.calls[ev.ID]
	if cl == nil {
		c.mu.Unlock()
		return
	}
	if isErr && cl.kind == kPub && string(ev.Code) == string(CodeUnavailable) {
		// The broker could not take it now (draining, storage busy): the
		// protocol says retry with the same key.
		cl.parked = true
		c.mu.Unlock()
		c.retryLater(cl)
		return
	}
	delete(c.calls, ev.ID)
	c.mu.Unlock()
	if isErr {
		cl.finish(nil, errorOf(ev))
		return
	}
	cl.finish(ev, nil)
}

// retryLater sends a parked call again after a backoff.
func (c *Client) retryLater(cl *call) {
	time.AfterFunc(c.o.backoff(2, 0), func() {
		c.mu.Lock()
		if c.calls[cl.id] != cl || !cl.parked {
			c.mu.Unlock()
			return
		}
		cl.parked = false
		cur := c.cur
		if cur != nil {
			cur.appendLocked(cl)
		}
		c.mu.Unlock()
		if cur != nil {
			cur.kickWriter()
		}
	})
}

// Ping sends a ping and waits for the broker's pong.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.wait(ctx, &call{kind: kPing, retry: true})
	return err
}
