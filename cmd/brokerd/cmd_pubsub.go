package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	client "github.com/brokerd/brokerd/clients/go"
	"github.com/brokerd/brokerd/subproto"
)

const defaultURL = "ws://127.0.0.1:8080/ws"

// connFlags are the connection flags pub and sub share.
type connFlags struct {
	url, token, tokenFile string
	timeout               time.Duration
}

func (c *connFlags) add(fs *cmdFlags) {
	fs.StringVar(&c.url, "url", defaultURL, "the broker's WebSocket URL (env BROKERD_URL)")
	fs.StringVar(&c.token, "token", "", "bearer token, e.g. from brokerd token (env BROKERD_TOKEN; prefer --token-file: flags show in process lists)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the bearer token")
	fs.DurationVar(&c.timeout, "connect-timeout", 10*time.Second, "how long the first connection may take")
}

// dial connects; later disconnections are repaired by the client, and
// reported on stderr.
func (c *connFlags) dial(ctx context.Context, fs *cmdFlags, stderr io.Writer) (*client.Client, error) {
	envOr(fs, "url", "BROKERD_URL", &c.url)
	envOr(fs, "token", "BROKERD_TOKEN", &c.token)
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		c.token = strings.TrimSpace(string(b))
	}
	var mu sync.Mutex
	down := false
	opts := []client.Option{
		client.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))),
		client.WithOnDisconnect(func(err error) {
			mu.Lock()
			defer mu.Unlock()
			down = true
			fmt.Fprintf(stderr, "%s: connection lost (%v); reconnecting\n", fs.Name(), err)
		}),
		client.WithOnConnect(func(ci client.ConnInfo) {
			mu.Lock()
			defer mu.Unlock()
			if down {
				down = false
				fmt.Fprintf(stderr, "%s: reconnected to node %s\n", fs.Name(), ci.Node)
			}
		}),
	}
	if c.token != "" {
		opts = append(opts, client.WithToken(c.token))
	}
	dctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cl, err := client.Dial(dctx, c.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", c.url, err)
	}
	return cl, nil
}

// signalContext ends on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

const subAbout = `Subscribes to each TOPIC (a topic or a pattern: '*' one segment, '>' the
rest) and prints every message on stdout as one JSON line:
  {"topic":"chat.room1","offset":7,"time":"2026-01-02T15:04:05.123Z","data":{"text":"hi"}}
("pattern" is added for messages of a pattern subscription). A topic
starts at --from, --last or --since (at most one; the default: what is
published from now on); a pattern starts at --since, or with what is
published from now on. When the connection drops, each topic (of a pattern
too) resumes after the last printed offset, in the same epoch: nothing is
skipped or printed twice. Connection changes and errors go to stderr. It
runs until interrupted, or until --count messages were printed.

Examples:
  brokerd sub --from earliest chat.room1
  brokerd sub --last 20 chat.room1
  brokerd sub --since 15m 'chat.>'
  brokerd sub --since 2026-01-02T15:04:05Z 'chat.*'`

// parseSince reads --since: an RFC 3339 time, or a duration meaning that
// long before now.
func parseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("a duration must be positive")
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("want a time such as 2026-01-02T15:04:05Z or a duration such as 15m")
	}
	return t, nil
}

func runSub(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("sub", "TOPIC...", subAbout)
	var cf connFlags
	cf.add(fs)
	var from, consumer, since string
	var count, last int
	fs.StringVar(&from, "from", "", "where a topic subscription starts: latest (the default), earliest, or an offset; not for patterns")
	fs.IntVar(&last, "last", 0, "start a topic subscription with its last N messages (1 to 10000); not for patterns")
	fs.StringVar(&since, "since", "", "start at the first message stored at or after this time: RFC 3339 (2026-01-02T15:04:05Z) or a duration before now (15m); topics and patterns")
	fs.StringVar(&consumer, "consumer", "", "durable consumer name: resume from the position stored for it (messages are acknowledged once printed)")
	fs.IntVar(&count, "count", 0, "exit 0 after this many messages; 0: run until interrupted")
	if code, done := parseFlags(fs, args, 1, broker512, stdout, stderr); done {
		return code
	}
	var opts client.SubOptions
	switch from {
	case "", "latest":
		if from != "" {
			opts.From = client.Latest
		}
	case "earliest":
		opts.From = client.Earliest
	default:
		n, err := strconv.ParseUint(from, 10, 64)
		if err != nil || n == 0 {
			fmt.Fprintf(stderr, "brokerd sub: --from %q: want latest, earliest or an offset (1 or more)\n", from)
			return 2
		}
		opts.From = client.Offset(n)
	}
	if last != 0 {
		if last < 1 || last > subproto.MaxLast {
			fmt.Fprintf(stderr, "brokerd sub: --last %d: want 1 to %d\n", last, subproto.MaxLast)
			return 2
		}
		opts.Last = last
	}
	if since != "" {
		t, err := parseSince(since, time.Now())
		if err != nil {
			fmt.Fprintf(stderr, "brokerd sub: --since %q: %v\n", since, err)
			return 2
		}
		opts.Since = t
	}
	if n := btoi(from != "") + btoi(last != 0) + btoi(since != ""); n > 1 {
		fmt.Fprintln(stderr, "brokerd sub: --from, --last and --since exclude each other")
		return 2
	}
	opts.Consumer = consumer
	if count < 0 {
		fmt.Fprintln(stderr, "brokerd sub: --count must not be negative")
		return 2
	}
	ctx, stop := signalContext()
	defer stop()
	cl, err := cf.dial(ctx, fs, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "brokerd sub:", err)
		return 1
	}
	defer cl.Close()

	var mu sync.Mutex
	printed := 0
	enough := make(chan struct{})
	type line struct {
		Topic   string          `json:"topic"`
		Pattern string          `json:"pattern,omitempty"`
		Offset  uint64          `json:"offset"`
		Time    string          `json:"time"`
		Data    json.RawMessage `json:"data"`
	}
	var subs []*client.Subscription
	for _, topic := range fs.Args() {
		var sub *client.Subscription
		o := opts
		if subproto.IsPattern(topic) {
			o = client.SubOptions{Since: opts.Since}
			if from != "" || last != 0 || consumer != "" {
				fmt.Fprintf(stderr, "brokerd sub: %s is a pattern: a pattern starts at --since or now (--from, --last and --consumer are for topics)\n", topic)
				return 2
			}
		}
		h := func(m *client.Message) {
			data := m.Data
			if len(data) == 0 {
				data = []byte("null")
			}
			b, err := json.Marshal(line{Topic: m.Topic, Pattern: m.Pattern, Offset: m.Offset, Time: m.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"), Data: data})
			if err != nil {
				b, _ = json.Marshal(line{Topic: m.Topic, Pattern: m.Pattern, Offset: m.Offset, Time: m.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"), Data: json.RawMessage(strconv.Quote(string(data)))})
			}
			mu.Lock()
			if count > 0 && printed >= count {
				mu.Unlock()
				return
			}
			_, _ = stdout.Write(append(b, '\n'))
			printed++
			if count > 0 && printed == count {
				close(enough)
			}
			mu.Unlock()
			if consumer != "" && sub != nil {
				// Acknowledged off the handler: it must not wait for a
				// reply of the same client.
				go func(off uint64) {
					actx, cancel := context.WithTimeout(ctx, 10*time.Second)
					defer cancel()
					_ = sub.Ack(actx, off)
				}(m.Offset)
			}
		}
		s, err := cl.Subscribe(ctx, topic, h, o)
		if err != nil {
			fmt.Fprintf(stderr, "brokerd sub: %s: %v\n", topic, err)
			return 1
		}
		sub = s
		subs = append(subs, s)
		if !subproto.IsPattern(topic) {
			in := s.Info()
			fmt.Fprintf(stderr, "brokerd sub: subscribed to %s from offset %d (head %d, epoch %s)\n", topic, in.From, in.Head, in.Epoch)
		} else {
			start := "what is published from now on"
			if since != "" {
				start = "each topic's messages since " + opts.Since.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(stderr, "brokerd sub: subscribed to pattern %s: %s, each topic resumed across reconnects\n", topic, start)
		}
	}
	ended := make(chan *client.Subscription, len(subs))
	for _, s := range subs {
		go func() {
			select {
			case <-s.Done():
				ended <- s
			case <-ctx.Done():
			}
		}()
	}
	select {
	case <-enough:
		return 0
	case <-ctx.Done():
		return 0
	case <-cl.Done():
		fmt.Fprintln(stderr, "brokerd sub: the connection ended:", cl.Err())
		return 1
	case s := <-ended:
		fmt.Fprintf(stderr, "brokerd sub: the subscription to %s ended: %v\n", s.Topic(), s.Err())
		return 1
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// broker512 bounds the topics of one sub command (the broker's default
// --max-subscriptions).
const broker512 = 512

const pubAbout = `Publishes VALUE to TOPIC, or, without VALUE, every non-empty line of stdin
as one message, in order. A value that is valid JSON is sent as it is;
anything else is sent as a JSON string. Each stored message prints one
JSON line on stdout: {"topic":"chat.room1","offset":8} ("dup":true when
the broker had the idempotency key already). Publishes are retried across
reconnects with their idempotency key, so each is stored once.

Examples:
  brokerd pub chat.room1 '{"text":"hi"}'
  printf 'one\ntwo\n' | brokerd pub chat.room1`

func runPub(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("pub", "TOPIC [VALUE]", pubAbout)
	var cf connFlags
	cf.add(fs)
	var key string
	var maxLine int
	fs.StringVar(&key, "key", "", "idempotency key of the one VALUE (default: a random one)")
	fs.IntVar(&maxLine, "max-line-bytes", 4<<20, "longest line of stdin, in bytes; a longer one stops pub with an error")
	if code, done := parseFlags(fs, args, 1, 2, stdout, stderr); done {
		return code
	}
	topic := fs.Arg(0)
	if !subproto.ValidTopic(topic) {
		why := fmt.Sprintf("a topic is 1 to %d bytes of segments of letters, digits, '_' and '-' joined by '.'", subproto.MaxTopicLen)
		if subproto.ValidPattern(topic) {
			why = "it is a pattern: publish to one topic"
		}
		fmt.Fprintf(stderr, "brokerd pub: %q is not a topic one can publish to: %s\n", topic, why)
		return 2
	}
	if key != "" && fs.NArg() != 2 {
		fmt.Fprintln(stderr, "brokerd pub: --key goes with a VALUE argument")
		return 2
	}
	if maxLine <= 0 {
		fmt.Fprintln(stderr, "brokerd pub: --max-line-bytes must be positive")
		return 2
	}
	ctx, stop := signalContext()
	defer stop()
	cl, err := cf.dial(ctx, fs, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "brokerd pub:", err)
		return 1
	}
	defer cl.Close()

	var mu sync.Mutex
	failed := 0
	report := func(r client.Result, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed++
			fmt.Fprintln(stderr, "brokerd pub:", err)
			return
		}
		b, _ := json.Marshal(struct {
			Topic  string `json:"topic"`
			Offset uint64 `json:"offset"`
			Dup    bool   `json:"dup,omitempty"`
		}{r.Topic, r.Offset, r.Dup})
		_, _ = stdout.Write(append(b, '\n'))
	}
	if fs.NArg() == 2 {
		var opts []client.PubOption
		if key != "" {
			opts = append(opts, client.WithKey(key))
		}
		r, err := cl.Publish(ctx, topic, jsonValue([]byte(fs.Arg(1))), opts...)
		report(r, err)
		if err != nil {
			return 1
		}
		return 0
	}
	// Lines are pipelined (the client's publish window bounds those in
	// flight) and answered in order.
	var wg sync.WaitGroup
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for sc.Scan() {
		b := []byte(strings.TrimRight(sc.Text(), "\r"))
		if len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		wg.Add(1)
		if err := cl.PublishAsync(ctx, topic, jsonValue(b), func(r client.Result, err error) {
			report(r, err)
			wg.Done()
		}); err != nil {
			wg.Done()
			report(client.Result{}, err)
			break
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("a line of stdin is longer than --max-line-bytes (%d)", maxLine)
		}
		report(client.Result{}, err)
	}
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
		// Interrupted: what is still in flight is answered ErrClosed.
		_ = cl.Close()
		<-waited
	}
	mu.Lock()
	defer mu.Unlock()
	if failed > 0 {
		return 1
	}
	return 0
}

// jsonValue returns b when it is one JSON value, else b as a JSON string.
func jsonValue(b []byte) []byte {
	if json.Valid(b) {
		return b
	}
	q, _ := json.Marshal(string(b))
	return q
}
