package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// figure is one measured number of a scenario.
type figure struct {
	Name   string
	Value  float64
	Unit   string // "/s", "us", "ratio", "B"
	Higher bool   // a higher value is better
}

// result is the outcome of one scenario against one target.
type result struct {
	Target   string
	Scenario string
	Params   map[string]any
	Figures  []figure
}

func (r *result) add(name string, v float64, unit string, higher bool) {
	r.Figures = append(r.Figures, figure{name, v, unit, higher})
}

type scenario func(ctx context.Context, cfg *config, t target, topic string) (*result, error)

var scenarios = map[string]scenario{
	"fanout":  runFanout,
	"latency": runLatency,
	"topics":  runTopics,
	"publish": runPublish,
	"replay":  runReplay,
	"idle":    runIdle,
	"mixed":   runMixed,
}

var scenarioOrder = []string{"fanout", "latency", "topics", "publish", "replay", "idle", "mixed"}

// openMany opens n connections with a bounded number of dials at once.
func openMany(ctx context.Context, n int, open func(i int) (io.Closer, error)) ([]io.Closer, error) {
	cs := make([]io.Closer, n)
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		first atomic.Pointer[error]
	)
	for range min(n, 64) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || first.Load() != nil || ctx.Err() != nil {
					return
				}
				c, err := open(i)
				if err != nil {
					err = fmt.Errorf("connection %d: %w", i, err)
					first.CompareAndSwap(nil, &err)
					return
				}
				cs[i] = c
			}
		}()
	}
	wg.Wait()
	if p := first.Load(); p != nil {
		closeAll(cs)
		return nil, *p
	}
	if ctx.Err() != nil {
		closeAll(cs)
		return nil, ctx.Err()
	}
	return cs, nil
}

func closeAll(cs []io.Closer) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range cs {
		if c == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			_ = c.Close()
		}()
	}
	wg.Wait()
}

// drain waits until the counters reach want, or stop making progress for
// quiet, or limit passes. It returns the total and when it last grew.
func drain(cs []counter, want int64, quiet, limit time.Duration) (int64, time.Time) {
	total, last := sum(cs), time.Now()
	end := time.Now().Add(limit)
	for total < want && time.Since(last) < quiet && time.Now().Before(end) {
		time.Sleep(10 * time.Millisecond)
		if t := sum(cs); t != total {
			total, last = t, time.Now()
		}
	}
	return total, last
}

// pubStats counts completed publishes.
type pubStats struct {
	sent, acked, failed atomic.Int64
	firstErr            atomic.Pointer[error]
}

func (s *pubStats) done(err error) {
	if err != nil {
		s.failed.Add(1)
		s.firstErr.CompareAndSwap(nil, &err)
		return
	}
	s.acked.Add(1)
}

// settled waits until every sent publish has completed.
func (s *pubStats) settled(limit time.Duration) error {
	end := time.Now().Add(limit)
	for s.acked.Load()+s.failed.Load() < s.sent.Load() {
		if time.Now().After(end) {
			return fmt.Errorf("%d publishes unanswered after %v", s.sent.Load()-s.acked.Load()-s.failed.Load(), limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p := s.firstErr.Load(); p != nil {
		return fmt.Errorf("%d publishes failed, the first with: %w", s.failed.Load(), *p)
	}
	return nil
}

func flushPub(p publisher) {
	if f, ok := p.(flusher); ok {
		_ = f.Flush()
	}
}

// runFanout: one topic, N subscriber connections, one publisher as fast as
// its window of acknowledgements allows.
func runFanout(ctx context.Context, cfg *config, t target, topic string) (*result, error) {
	n := cfg.Subscribers
	counts := make([]counter, n)
	subs, err := openMany(ctx, n, func(i int) (io.Closer, error) {
		return t.Subscriber(ctx, topic, false, func([]byte) { counts[i].n.Add(1) })
	})
	if err != nil {
		return nil, err
	}
	defer closeAll(subs)
	pub, err := t.Publisher(ctx, cfg.Window, false)
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	data := payload(cfg.Payload, time.Now())
	var st pubStats
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	for time.Now().Before(deadline) {
		if err := pub.Publish(ctx, topic, data, st.done); err != nil {
			return nil, err
		}
		st.sent.Add(1)
	}
	flushPub(pub)
	if err := st.settled(60 * time.Second); err != nil {
		return nil, err
	}
	pubElapsed := time.Since(start)
	want := st.acked.Load() * int64(n)
	got, last := drain(counts, want, 3*time.Second, cfg.Drain)
	elapsed := last.Sub(start)
	r := &result{Params: map[string]any{"subscribers": n, "window": cfg.Window, "payload": cfg.Payload, "duration_s": cfg.Duration.Seconds()}}
	r.add("deliveries/s", float64(got)/elapsed.Seconds(), "/s", true)
	r.add("publishes/s", float64(st.acked.Load())/pubElapsed.Seconds(), "/s", true)
	r.add("loss", 1-float64(got)/float64(max(want, 1)), "ratio", false)
	return r, nil
}

// runLatency: N subscribers, one publisher at a fixed rate; the payload
// carries its send time.
func runLatency(ctx context.Context, cfg *config, t target, topic string) (*result, error) {
	m, err := measureLatency(ctx, cfg, t, topic)
	if err != nil {
		return nil, err
	}
	r := &result{Params: map[string]any{"subscribers": cfg.Subscribers, "rate": cfg.Rate, "payload": cfg.Payload, "duration_s": cfg.Duration.Seconds()}}
	r.add("deliveries/s", float64(m.got)/m.elapsed.Seconds(), "/s", true)
	r.add("p50", float64(m.h.quantile(0.50)), "us", false)
	r.add("p90", float64(m.h.quantile(0.90)), "us", false)
	r.add("p99", float64(m.h.quantile(0.99)), "us", false)
	r.add("max", float64(m.h.max), "us", false)
	r.add("loss", m.loss(), "ratio", false)
	return r, nil
}

// latency is what measureLatency measured.
type latency struct {
	h         hist // publish → delivery, every delivery
	got, want int64
	elapsed   time.Duration // from the first publish to the last delivery
}

func (l *latency) loss() float64 { return 1 - float64(l.got)/float64(max(l.want, 1)) }

// measureLatency opens --subscribers subscribers of topic and publishes
// to it at --rate for --duration, each payload carrying its send time,
// then waits for the deliveries.
func measureLatency(ctx context.Context, cfg *config, t target, topic string) (*latency, error) {
	n := cfg.Subscribers
	type subHist struct {
		mu sync.Mutex
		h  hist
	}
	hs := make([]subHist, n)
	subs, err := openMany(ctx, n, func(i int) (io.Closer, error) {
		h := &hs[i]
		return t.Subscriber(ctx, topic, false, func(data []byte) {
			now := time.Now()
			if at, ok := sentAt(data); ok {
				h.mu.Lock()
				h.h.add(now.Sub(at))
				h.mu.Unlock()
			}
		})
	})
	if err != nil {
		return nil, err
	}
	defer closeAll(subs)
	pub, err := t.Publisher(ctx, cfg.Window, false)
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	var st pubStats
	interval := time.Second / time.Duration(cfg.Rate)
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	next := start
	for {
		now := time.Now()
		if !now.Before(deadline) {
			break
		}
		if d := next.Sub(now); d > 0 {
			time.Sleep(d)
		}
		if err := pub.Publish(ctx, topic, payload(cfg.Payload, time.Now()), st.done); err != nil {
			return nil, err
		}
		st.sent.Add(1)
		next = next.Add(interval)
	}
	flushPub(pub)
	if err := st.settled(60 * time.Second); err != nil {
		return nil, err
	}
	want := st.acked.Load() * int64(n)
	total := func() int64 {
		var s int64
		for i := range hs {
			hs[i].mu.Lock()
			s += int64(hs[i].h.n)
			hs[i].mu.Unlock()
		}
		return s
	}
	got, last := total(), time.Now()
	for end := time.Now().Add(cfg.Drain); got < want && time.Since(last) < 3*time.Second && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
		if g := total(); g != got {
			got, last = g, time.Now()
		}
	}
	l := &latency{got: got, want: want, elapsed: last.Sub(start)}
	for i := range hs {
		hs[i].mu.Lock()
		l.h.merge(&hs[i].h)
		hs[i].mu.Unlock()
	}
	return l, nil
}

// runMixed: the latency scenario's live stream (on this scenario's
// topics: put them under an ephemeral policy) alone, then again while
// --publishers pipelined publishers load durable topics (under
// --durable-prefix) as fast as their windows allow. It reports the live
// latency alone and beside the durable load, and the durable acks/s: with
// ephemeral live topics the two latencies stay alike, because the live
// traffic does not wait behind the durable topics' fsyncs.
func runMixed(ctx context.Context, cfg *config, t target, topic string) (*result, error) {
	alone, err := measureLatency(ctx, cfg, t, topic+".alone")
	if err != nil {
		return nil, fmt.Errorf("live stream alone: %w", err)
	}
	load, err := startDurableLoad(ctx, cfg, t, cfg.DurablePrefix+"."+cfg.runID)
	if err != nil {
		return nil, err
	}
	beside, err := measureLatency(ctx, cfg, t, topic+".beside")
	res, lerr := load.stop()
	if err != nil {
		return nil, fmt.Errorf("live stream beside the durable load: %w", err)
	}
	if lerr != nil {
		return nil, fmt.Errorf("durable load: %w", lerr)
	}
	r := &result{Params: map[string]any{"subscribers": cfg.Subscribers, "rate": cfg.Rate, "durable_publishers": cfg.Publishers,
		"window": cfg.Window, "payload": cfg.Payload, "duration_s": cfg.Duration.Seconds()}}
	r.add("live p50 alone", float64(alone.h.quantile(0.50)), "us", false)
	r.add("live p99 alone", float64(alone.h.quantile(0.99)), "us", false)
	r.add("live p50 beside durable", float64(beside.h.quantile(0.50)), "us", false)
	r.add("live p99 beside durable", float64(beside.h.quantile(0.99)), "us", false)
	r.add("live loss", max(alone.loss(), beside.loss()), "ratio", false)
	r.add("durable acked publishes/s", res.rate, "/s", true)
	r.add("durable ack p99", float64(res.h.quantile(0.99)), "us", false)
	return r, nil
}

// runTopics: N subscribers each on its own topic; P publishers go round
// the topics.
func runTopics(ctx context.Context, cfg *config, t target, prefix string) (*result, error) {
	n := cfg.Topics
	topicOf := func(i int) string { return prefix + "." + strconv.Itoa(i) }
	counts := make([]counter, n)
	subs, err := openMany(ctx, n, func(i int) (io.Closer, error) {
		return t.Subscriber(ctx, topicOf(i), false, func([]byte) { counts[i].n.Add(1) })
	})
	if err != nil {
		return nil, err
	}
	defer closeAll(subs)
	p := cfg.TopicPublishers
	pubs := make([]publisher, p)
	for i := range pubs {
		if pubs[i], err = t.Publisher(ctx, cfg.Window, false); err != nil {
			return nil, err
		}
		defer pubs[i].Close()
	}
	data := payload(cfg.Payload, time.Now())
	var st pubStats
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var wg sync.WaitGroup
	errc := make(chan error, p)
	for w := range p {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; time.Now().Before(deadline); k += p {
				if err := pubs[w].Publish(ctx, topicOf(k%n), data, st.done); err != nil {
					errc <- err
					return
				}
				st.sent.Add(1)
			}
			flushPub(pubs[w])
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	if err := st.settled(60 * time.Second); err != nil {
		return nil, err
	}
	want := st.acked.Load()
	got, last := drain(counts, want, 3*time.Second, cfg.Drain)
	r := &result{Params: map[string]any{"topics": n, "publishers": p, "window": cfg.Window, "payload": cfg.Payload, "duration_s": cfg.Duration.Seconds()}}
	r.add("deliveries/s", float64(got)/last.Sub(start).Seconds(), "/s", true)
	r.add("loss", 1-float64(got)/float64(max(want, 1)), "ratio", false)
	return r, nil
}

// runPublish: M publishers, each pipelined on its own connection and
// topic, durable acknowledgements.
func runPublish(ctx context.Context, cfg *config, t target, prefix string) (*result, error) {
	load, err := startDurableLoad(ctx, cfg, t, prefix)
	if err != nil {
		return nil, err
	}
	select {
	case <-time.After(cfg.Duration):
	case <-ctx.Done():
	}
	res, err := load.stop()
	if err != nil {
		return nil, err
	}
	r := &result{Params: map[string]any{"publishers": cfg.Publishers, "window": cfg.Window, "payload": cfg.Payload, "duration_s": cfg.Duration.Seconds()}}
	r.add("acked publishes/s", res.rate, "/s", true)
	r.add("ack p50", float64(res.h.quantile(0.50)), "us", false)
	r.add("ack p99", float64(res.h.quantile(0.99)), "us", false)
	return r, nil
}

// durableLoad is --publishers publishers, each pipelined on its own
// connection and topic under a prefix, durable acknowledgements, until
// stop.
type durableLoad struct {
	pubs  []publisher
	hs    []pubHist
	st    pubStats
	start time.Time
	quit  chan struct{}
	wg    sync.WaitGroup
	errc  chan error
}

type pubHist struct {
	mu sync.Mutex
	h  hist
}

// loadResult is what a durable load measured.
type loadResult struct {
	rate float64 // acknowledged publishes/s
	h    hist    // publish → ack
}

func startDurableLoad(ctx context.Context, cfg *config, t target, prefix string) (*durableLoad, error) {
	if err := t.Prepare(ctx, prefix+".>"); err != nil {
		return nil, err
	}
	m := cfg.Publishers
	l := &durableLoad{pubs: make([]publisher, m), hs: make([]pubHist, m), quit: make(chan struct{}), errc: make(chan error, m)}
	_, err := openMany(ctx, m, func(i int) (io.Closer, error) {
		p, err := t.Publisher(ctx, cfg.Window, true)
		l.pubs[i] = p
		return p, err
	})
	if err != nil {
		return nil, err
	}
	data := payload(cfg.Payload, time.Now())
	l.start = time.Now()
	for w := range m {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			topic := prefix + "." + strconv.Itoa(w)
			h := &l.hs[w]
			for {
				select {
				case <-l.quit:
					return
				default:
				}
				sent := time.Now()
				err := l.pubs[w].Publish(ctx, topic, data, func(err error) {
					d := time.Since(sent)
					if err == nil {
						h.mu.Lock()
						h.h.add(d)
						h.mu.Unlock()
					}
					l.st.done(err)
				})
				if err != nil {
					l.errc <- err
					return
				}
				l.st.sent.Add(1)
			}
		}()
	}
	return l, nil
}

// stop stops publishing, waits for every answer and closes the
// publishers.
func (l *durableLoad) stop() (*loadResult, error) {
	close(l.quit)
	l.wg.Wait()
	close(l.errc)
	defer func() {
		for _, p := range l.pubs {
			_ = p.Close()
		}
	}()
	if err := <-l.errc; err != nil {
		return nil, err
	}
	if err := l.st.settled(60 * time.Second); err != nil {
		return nil, err
	}
	res := &loadResult{rate: float64(l.st.acked.Load()) / time.Since(l.start).Seconds()}
	for i := range l.hs {
		l.hs[i].mu.Lock()
		res.h.merge(&l.hs[i].h)
		l.hs[i].mu.Unlock()
	}
	return res, nil
}

// runReplay fills a topic (untimed, pipelined), then times one subscriber
// reading it from offset 1.
func runReplay(ctx context.Context, cfg *config, t target, topic string) (*result, error) {
	if err := t.Prepare(ctx, topic); err != nil {
		return nil, err
	}
	total := cfg.ReplayMessages
	f := min(cfg.FillPublishers, total)
	var st pubStats
	data := payload(cfg.Payload, time.Now())
	fillStart := time.Now()
	pubs := make([]publisher, f)
	if _, err := openMany(ctx, f, func(i int) (io.Closer, error) {
		p, err := t.Publisher(ctx, 512, true)
		pubs[i] = p
		return p, err
	}); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	errc := make(chan error, f)
	for w := range f {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < total; i += f {
				if err := pubs[w].Publish(ctx, topic, data, st.done); err != nil {
					errc <- err
					return
				}
				st.sent.Add(1)
			}
			flushPub(pubs[w])
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	err := st.settled(120 * time.Second)
	for _, p := range pubs {
		_ = p.Close()
	}
	if err != nil {
		return nil, err
	}
	fill := time.Since(fillStart)

	var got atomic.Int64
	doneCh := make(chan struct{})
	var once sync.Once
	start := time.Now()
	sub, err := t.Subscriber(ctx, topic, true, func([]byte) {
		if got.Add(1) == int64(total) {
			once.Do(func() { close(doneCh) })
		}
	})
	if err != nil {
		return nil, err
	}
	defer sub.Close()
	limit := cfg.Drain + time.Duration(total/20000)*time.Second
	select {
	case <-doneCh:
	case <-time.After(limit):
		return nil, fmt.Errorf("replay: %d of %d messages after %v", got.Load(), total, limit)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	elapsed := time.Since(start)
	r := &result{Params: map[string]any{"messages": total, "payload": cfg.Payload, "fill_s": fill.Seconds()}}
	r.add("replay msgs/s", float64(total)/elapsed.Seconds(), "/s", true)
	r.add("fill publishes/s", float64(total)/fill.Seconds(), "/s", true)
	return r, nil
}

// runIdle opens C idle subscribed connections and reports the broker's
// resident memory per connection.
func runIdle(ctx context.Context, cfg *config, t target, topic string) (*result, error) {
	c := cfg.Idle
	settle()
	before, self, err := t.RSS()
	if err != nil {
		return nil, err
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	start := time.Now()
	conns, err := openMany(ctx, c, func(int) (io.Closer, error) { return t.Idle(ctx, topic) })
	if err != nil {
		return nil, err
	}
	opened := time.Since(start)
	if self {
		settle()
	} else {
		time.Sleep(time.Second)
	}
	after, _, err := t.RSS()
	runtime.ReadMemStats(&m1)
	closeAll(conns)
	if err != nil {
		return nil, err
	}
	if opened > 30*time.Second {
		return nil, errors.New("idle: opening the connections took longer than the broker's heartbeat timeout; the figure would miss connections it already closed")
	}
	r := &result{Params: map[string]any{"connections": c, "rss_before_MiB": float64(before) / (1 << 20), "rss_after_MiB": float64(after) / (1 << 20), "open_s": opened.Seconds(), "measured_in_process": self}}
	r.add("RSS/connection", float64(after-before)/float64(c), "B", false)
	if self {
		// Where it goes, for the process (broker and the raw client ends).
		r.Params["heap_per_conn_B"] = (int64(m1.HeapInuse) - int64(m0.HeapInuse)) / int64(c)
		r.Params["stack_per_conn_B"] = (int64(m1.StackInuse) - int64(m0.StackInuse)) / int64(c)
	}
	return r, nil
}
