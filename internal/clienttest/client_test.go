package clienttest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	client "github.com/brokerd/brokerd/clients/go"
)

func dial(t testing.TB, tb *testBroker, opts ...client.Option) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	opts = append([]client.Option{client.WithLogger(discard), client.WithBackoff(10*time.Millisecond, 200*time.Millisecond)}, opts...)
	c, err := client.Dial(ctx, tb.URL, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// collector records the messages a handler receives.
type collector struct {
	mu   sync.Mutex
	msgs []client.Message
}

func (c *collector) handle(m *client.Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, *m)
	c.mu.Unlock()
}

func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *collector) wait(t testing.TB, n int) []client.Message {
	t.Helper()
	eventually(t, fmt.Sprintf("%d messages", n), func() bool { return c.len() >= n })
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]client.Message(nil), c.msgs...)
}

// checkSeq checks that msgs are offsets from..to exactly once, in order,
// each carrying {"i":offset}.
func checkSeq(t testing.TB, msgs []client.Message, from, to uint64) {
	t.Helper()
	if want := int(to - from + 1); len(msgs) != want {
		t.Fatalf("got %d messages, want %d (offsets %d..%d)", len(msgs), want, from, to)
	}
	for i, m := range msgs {
		off := from + uint64(i)
		if m.Offset != off {
			t.Fatalf("message %d has offset %d, want %d", i, m.Offset, off)
		}
		if want := fmt.Sprintf(`{"i":%d}`, off); string(m.Data) != want {
			t.Fatalf("message at offset %d has data %s, want %s", off, m.Data, want)
		}
	}
}

func data(i uint64) []byte { return []byte(fmt.Sprintf(`{"i":%d}`, i)) }

func TestPublishSubscribe(t *testing.T) {
	tb := startBroker(t)
	c := dial(t, tb)
	ctx := ctxT(t)
	if info := c.Info(); info.Session == "" || info.Node != "test" || info.Heartbeat <= 0 {
		t.Fatalf("welcome info %+v", info)
	}
	var col collector
	sub, err := c.Subscribe(ctx, "orders.eu", col.handle, client.SubOptions{From: client.Earliest})
	if err != nil {
		t.Fatal(err)
	}
	if info := sub.Info(); info.Epoch == "" || info.From != 1 || info.Head != 0 {
		t.Fatalf("sub info %+v", info)
	}
	for i := uint64(1); i <= 10; i++ {
		r, err := c.Publish(ctx, "orders.eu", data(i))
		if err != nil {
			t.Fatal(err)
		}
		if r.Offset != i || r.Dup || r.Topic != "orders.eu" {
			t.Fatalf("publish %d: %+v", i, r)
		}
	}
	// Pipelined, through a small window.
	p := dial(t, tb, client.WithPublishWindow(4))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var offsets []uint64
	for i := uint64(11); i <= 500; i++ {
		wg.Add(1)
		err := p.PublishAsync(ctx, "orders.eu", data(i), func(r client.Result, err error) {
			defer wg.Done()
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			offsets = append(offsets, r.Offset)
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	for i, off := range offsets {
		if off != uint64(11+i) {
			t.Fatalf("async publish %d stored at %d: publishes must keep their order", 11+i, off)
		}
	}
	msgs := col.wait(t, 500)
	checkSeq(t, msgs, 1, 500)
	if msgs[0].Topic != "orders.eu" || msgs[0].Time.IsZero() {
		t.Fatalf("message %+v", msgs[0])
	}
}

func TestDataIsKeptByteForByte(t *testing.T) {
	tb := startBroker(t)
	c := dial(t, tb)
	ctx := ctxT(t)
	var col collector
	if _, err := c.Subscribe(ctx, "raw", col.handle, client.SubOptions{}); err != nil {
		t.Fatal(err)
	}
	values := []string{`"h\u00e9llo \"x\"\\n"`, `null`, `[1, 2 ,3]`, `{"a":{"b":[true,false,null]}}`, `-1.5e3`, "{\n  \"pretty\": 1\n}"}
	for _, v := range values {
		if _, err := c.Publish(ctx, "raw", []byte(v)); err != nil {
			t.Fatalf("publish %s: %v", v, err)
		}
	}
	msgs := col.wait(t, len(values))
	for i, v := range values {
		want := v
		if strings.Contains(v, "\n") {
			want = `{"pretty":1}` // compacted: a command is one line
		}
		if string(msgs[i].Data) != want {
			t.Errorf("data %d = %s, want %s", i, msgs[i].Data, want)
		}
	}
	if _, err := c.Publish(ctx, "raw", []byte(`{bad`)); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("invalid JSON: %v, want ErrBadRequest", err)
	}
}

func TestPatternSubscription(t *testing.T) {
	tb := startBroker(t)
	c := dial(t, tb)
	ctx := ctxT(t)
	var col collector
	if _, err := c.Subscribe(ctx, "metrics.*.cpu", col.handle, client.SubOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"metrics.a.cpu", "metrics.b.mem", "metrics.c.cpu"} {
		if _, err := c.Publish(ctx, topic, []byte(`1`)); err != nil {
			t.Fatal(err)
		}
	}
	msgs := col.wait(t, 2)
	if len(msgs) != 2 || msgs[0].Topic != "metrics.a.cpu" || msgs[1].Topic != "metrics.c.cpu" || msgs[0].Pattern != "metrics.*.cpu" {
		t.Fatalf("pattern messages %+v", msgs)
	}
	if _, err := c.Subscribe(ctx, "metrics.>", col.handle, client.SubOptions{From: client.Earliest}); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("pattern with From: %v, want ErrBadRequest", err)
	}
}

func TestErrors(t *testing.T) {
	tb := startBroker(t)
	c := dial(t, tb)
	ctx := ctxT(t)
	nop := func(*client.Message) {}

	if _, err := c.Publish(ctx, "bad topic", nil); !errors.Is(err, client.ErrInvalidTopic) {
		t.Errorf("invalid topic: %v", err)
	}
	if _, err := c.Publish(ctx, "t", nil, client.WithKey("has space")); !errors.Is(err, client.ErrBadRequest) {
		t.Errorf("bad key: %v", err)
	}
	if _, err := c.Publish(ctx, "t", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	epoch := tb.topic("t").Epoch

	_, err := c.Subscribe(ctx, "t", nop, client.SubOptions{Epoch: "not-" + epoch})
	var e *client.Error
	if !errors.Is(err, client.ErrEpochMismatch) || !errors.As(err, &e) || e.Epoch != epoch || !e.HasRange || e.Latest != 1 {
		t.Errorf("wrong epoch: %v (%+v)", err, e)
	}
	if _, err := c.Subscribe(ctx, "t", nop, client.SubOptions{From: client.Offset(5)}); !errors.Is(err, client.ErrOffsetOutOfRange) {
		t.Errorf("from beyond the head: %v", err)
	}
	sub, err := c.Subscribe(ctx, "t", nop, client.SubOptions{Epoch: epoch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, "t", nop, client.SubOptions{}); !errors.Is(err, client.ErrAlreadySubscribed) {
		t.Errorf("second subscribe: %v", err)
	}
	if err := sub.Ack(ctx, 1); !errors.Is(err, client.ErrBadRequest) {
		t.Errorf("ack without consumer: %v", err)
	}
	if err := sub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.Done():
	default:
		t.Error("Done not closed after Unsubscribe")
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "t", nil); !errors.Is(err, client.ErrClosed) {
		t.Errorf("publish after close: %v", err)
	}
	if _, err := c.Subscribe(ctx, "t", nop, client.SubOptions{}); !errors.Is(err, client.ErrClosed) {
		t.Errorf("subscribe after close: %v", err)
	}
}

// staticAuth grants "good" everything on "pub.>" and nothing else, and
// refuses other tokens.
type staticAuth struct{}

func (staticAuth) Verify(tok string) (*broker.Grant, error) {
	if tok != "good" {
		return nil, broker.ErrTokenInvalid
	}
	return &broker.Grant{Subject: "u", Expires: time.Now().Add(time.Hour), Publish: []string{"pub.>"}, Subscribe: []string{"pub.>"}}, nil
}

func TestAuth(t *testing.T) {
	tb := startBroker(t, func(c *broker.Config) { c.Auth = staticAuth{} })
	ctx := ctxT(t)
	c := dial(t, tb, client.WithToken("good"))
	if _, err := c.Publish(ctx, "pub.x", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "other", []byte(`1`)); !errors.Is(err, client.ErrForbidden) {
		t.Errorf("publish outside the grant: %v", err)
	}
	if _, err := c.Subscribe(ctx, "other", func(*client.Message) {}, client.SubOptions{}); !errors.Is(err, client.ErrForbidden) {
		t.Errorf("subscribe outside the grant: %v", err)
	}

	// A refused static token fails Dial, or, when the close comes after
	// Dial returned, stops the client: reconnecting cannot help.
	var ce *client.CloseError
	bad, err := client.Dial(ctx, tb.URL, client.WithLogger(discard), client.WithToken("bad"))
	if err == nil {
		defer bad.Close()
		select {
		case <-bad.Done():
		case <-time.After(waitTimeout):
			t.Fatal("a client with a refused token kept running")
		}
		err = bad.Err()
		if _, perr := bad.Publish(ctx, "pub.x", nil); !errors.As(perr, &ce) {
			t.Fatalf("publish on a stopped client: %v", perr)
		}
	}
	if !errors.As(err, &ce) || ce.Code != 4001 {
		t.Fatalf("refused token: %v, want a 4001 CloseError", err)
	}

	// A token function is asked again on every attempt.
	var mu sync.Mutex
	calls := 0
	tf := dial(t, tb, client.WithTokenFunc(func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			return "good", nil
		}
		return "good", nil
	}))
	tb.dropConns()
	if _, err := tf.Publish(ctx, "pub.y", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls < 2 {
		t.Fatalf("token function called %d times across a reconnect", calls)
	}
}

func TestResumeAfterDroppedConnection(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	connects := make(chan client.ConnInfo, 16)
	s := dial(t, tb, client.WithOnConnect(func(i client.ConnInfo) { connects <- i }))
	<-connects
	p := dial(t, tb)
	var col collector
	sub, err := s.Subscribe(ctx, "feed", col.handle, client.SubOptions{From: client.Earliest})
	if err != nil {
		t.Fatal(err)
	}
	epoch := sub.Info().Epoch
	publish := func(from, to uint64) {
		t.Helper()
		for i := from; i <= to; i++ {
			if _, err := p.Publish(ctx, "feed", data(i)); err != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
		}
	}
	publish(1, 30)
	col.wait(t, 30)
	for round := 0; round < 3; round++ {
		tb.dropConns()
		base := uint64(30 + round*40)
		// Publishing goes on while the subscriber is away and resumes.
		publish(base+1, base+40)
		<-connects
	}
	msgs := col.wait(t, 150)
	time.Sleep(50 * time.Millisecond) // a duplicate would show now
	checkSeq(t, col.wait(t, 150), 1, 150)
	_ = msgs
	if info := sub.Info(); info.Epoch != epoch {
		t.Fatalf("epoch changed from %s to %s", epoch, info.Epoch)
	}
	if sub.Next() != 151 {
		t.Fatalf("Next = %d, want 151", sub.Next())
	}
}

func TestResumeAfterBrokerRestart(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	var mu sync.Mutex
	var closes []error
	var reconnectedAt time.Time
	s := dial(t, tb, client.WithOnDisconnect(func(err error) {
		mu.Lock()
		closes = append(closes, err)
		mu.Unlock()
	}), client.WithOnConnect(func(client.ConnInfo) {
		mu.Lock()
		reconnectedAt = time.Now()
		mu.Unlock()
	}))
	p := dial(t, tb)
	var col collector
	if _, err := s.Subscribe(ctx, "feed", col.handle, client.SubOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 20; i++ {
		if _, err := p.Publish(ctx, "feed", data(i)); err != nil {
			t.Fatal(err)
		}
	}
	col.wait(t, 20)
	epoch := tb.topic("feed").Epoch
	stoppedAt := time.Now()
	tb.restart()

	// Publishes made while the broker restarts wait and go through.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := uint64(21); i <= 40; i++ {
		wg.Add(1)
		err := p.PublishAsync(ctx, "feed", data(i), func(r client.Result, err error) {
			defer wg.Done()
			if err == nil && r.Offset > 40 {
				err = fmt.Errorf("offset %d", r.Offset)
			}
			if err != nil {
				errs <- err
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkSeq(t, col.wait(t, 40), 1, 40)
	if got := tb.topic("feed"); got.Epoch != epoch || got.Head != 40 {
		t.Fatalf("after restart: %+v, want epoch %s head 40", got, epoch)
	}
	mu.Lock()
	defer mu.Unlock()
	var ce *client.CloseError
	if len(closes) == 0 || !errors.As(closes[0], &ce) || ce.Code != 1001 || ce.RetryAfter <= 0 {
		t.Fatalf("disconnects %v: want a 1001 with retry_after_ms first", closes)
	}
	if reconnectedAt.Sub(stoppedAt) < ce.RetryAfter {
		t.Fatalf("reconnected %v after the 1001 asking for %v", reconnectedAt.Sub(stoppedAt), ce.RetryAfter)
	}
}

func TestRetriedPublishIsStoredOnce(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	c := dial(t, tb)
	// The broker stores the publishes but its answers are lost.
	tb.blackhole.Store(true)
	type res struct {
		r   client.Result
		err error
	}
	results := make(chan res, 3)
	for i := uint64(1); i <= 3; i++ {
		go func() {
			r, err := c.Publish(ctx, "pay", data(i), client.WithKey(fmt.Sprintf("key-%d", i)))
			results <- res{r, err}
		}()
	}
	eventually(t, "the publishes to be stored", func() bool { return tb.topic("pay").Head == 3 })
	tb.dropConns()
	tb.blackhole.Store(false)
	dups := 0
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if !r.r.Dup {
			t.Errorf("retried publish %+v not reported as a duplicate", r.r)
		}
		dups++
	}
	recs := tb.records("pay")
	if len(recs) != 3 {
		t.Fatalf("%d records stored, want 3: a retried publish was stored twice", len(recs))
	}
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[string(r.Data)] {
			t.Fatalf("data %s stored twice", r.Data)
		}
		seen[string(r.Data)] = true
	}
}

func TestGeneratedKeysDeduplicateRetries(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	c := dial(t, tb)
	tb.blackhole.Store(true)
	done := make(chan client.Result, 1)
	if err := c.PublishAsync(ctx, "gen", []byte(`{"once":true}`), func(r client.Result, err error) {
		if err != nil {
			t.Error(err)
		}
		done <- r
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the publish to be stored", func() bool { return tb.topic("gen").Head == 1 })
	tb.dropConns()
	tb.blackhole.Store(false)
	if r := <-done; r.Offset != 1 || !r.Dup {
		t.Fatalf("retried publish %+v, want offset 1 dup", r)
	}
	if n := len(tb.records("gen")); n != 1 {
		t.Fatalf("%d records stored, want 1", n)
	}
}

func TestDurableConsumer(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	p := dial(t, tb)
	for i := uint64(1); i <= 20; i++ {
		if _, err := p.Publish(ctx, "jobs", data(i)); err != nil {
			t.Fatal(err)
		}
	}
	c1 := dial(t, tb)
	var col collector
	sub, err := c1.Subscribe(ctx, "jobs", col.handle, client.SubOptions{From: client.Earliest, Consumer: "worker", MaxInflight: 100})
	if err != nil {
		t.Fatal(err)
	}
	checkSeq(t, col.wait(t, 20), 1, 20)
	if err := sub.Ack(ctx, 12); err != nil {
		t.Fatal(err)
	}
	// A reconnect redelivers what was not acknowledged.
	tb.dropConns()
	msgs := col.wait(t, 28)
	checkSeq(t, msgs[20:], 13, 20)
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(sub.Err(), client.ErrClosed) {
		t.Fatalf("sub.Err after Close: %v", sub.Err())
	}

	// Another client resumes after the acknowledged offset.
	c2 := dial(t, tb)
	var col2 collector
	sub2, err := c2.Subscribe(ctx, "jobs", col2.handle, client.SubOptions{Consumer: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	checkSeq(t, col2.wait(t, 8), 13, 20)

	// A third takes the consumer over.
	c3 := dial(t, tb)
	if _, err := c3.Subscribe(ctx, "jobs", func(*client.Message) {}, client.SubOptions{Consumer: "worker"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub2.Done():
	case <-time.After(waitTimeout):
		t.Fatal("the older consumer subscription was not ended")
	}
	if !errors.Is(sub2.Err(), client.ErrTakenOver) {
		t.Fatalf("taken over: %v", sub2.Err())
	}
}

func TestEpochChangeEndsSubscription(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	c := dial(t, tb)
	var col collector
	sub, err := c.Subscribe(ctx, "gone", col.handle, client.SubOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The topic's history is lost: a new data directory.
	tb.stop()
	tb.dir = t.TempDir()
	tb.restart()
	if _, err := c.Publish(ctx, "other", []byte(`1`)); err != nil { // reconnected
		t.Fatal(err)
	}
	select {
	case <-sub.Done():
	case <-time.After(waitTimeout):
		t.Fatal("subscription survived an epoch change")
	}
	if !errors.Is(sub.Err(), client.ErrEpochMismatch) {
		t.Fatalf("sub.Err = %v, want ErrEpochMismatch", sub.Err())
	}
}

func TestCloseFailsPending(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	c := dial(t, tb)
	tb.blackhole.Store(true)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Publish(ctx, "x", []byte(`1`))
		errc <- err
	}()
	eventually(t, "the publish to be stored", func() bool { return tb.topic("x").Head == 1 })
	_ = c.Close()
	if err := <-errc; !errors.Is(err, client.ErrClosed) {
		t.Fatalf("pending publish after Close: %v", err)
	}
	tb.blackhole.Store(false)
	// A cancelled context returns at once.
	c2 := dial(t, tb)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c2.Publish(cctx, "x", []byte(`1`)); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish with a cancelled context: %v", err)
	}
}

func TestHandshakeRefused(t *testing.T) {
	tb := startBroker(t)
	_, err := client.Dial(ctxT(t), strings.Replace(tb.URL, "/ws", "/nope", 1), client.WithLogger(discard))
	var he *client.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 404 {
		t.Fatalf("dial to a wrong path: %v", err)
	}
	if _, err := client.Dial(ctxT(t), "http://example.invalid/ws"); err == nil {
		t.Fatal("an http:// url was accepted")
	}
}

func TestJSONOfErrorsIsReadable(t *testing.T) {
	e := &client.Error{Code: client.CodeOffsetOutOfRange, Message: "m", HasRange: true, Earliest: 3, Latest: 9}
	if !strings.Contains(e.Error(), "offset_out_of_range") || !errors.Is(e, client.ErrOffsetOutOfRange) || errors.Is(e, client.ErrForbidden) {
		t.Fatal(e)
	}
	b, _ := json.Marshal(e)
	if !strings.Contains(string(b), `"Earliest":3`) {
		t.Fatal(string(b))
	}
}
