// Command brokerbench is a load generator for brokerd, built on its Go
// client (clients/go), with NATS over WebSocket as an optional baseline.
//
// It runs each scenario for a bounded time against a running brokerd
// (--url) or one it starts in-process on a temporary directory
// (--embedded); with --sub-urls the subscribers connect to other nodes of
// the same cluster in turn while publishers use --url, to measure
// delivery across nodes. It prints one JSON line per scenario result and a table at
// the end. With --baseline nats it runs the same scenarios against a NATS
// server started in-process with its WebSocket listener (JetStream file
// store for publish and replay), driven through nats.go over ws://, and
// prints the ratio brokerd/NATS of every figure.
//
// Scenarios:
//
//	fanout   1 topic, --subscribers connections, 1 publisher as fast as a
//	         window of --window acknowledgements allows: deliveries/s, loss
//	latency  the same at --rate messages/s: publish→delivery p50/p90/p99/max
//	topics   --topics subscribers each on its own topic, --topic-publishers
//	         publishers round-robin: deliveries/s
//	publish  --publishers pipelined publishers, durable acks: acked
//	         publishes/s, ack latency p50/p99
//	replay   one subscriber reading --replay-messages from offset 1
//	idle     --idle idle subscribed connections: broker RSS per connection
//	mixed    the latency scenario's live stream alone, then beside
//	         --publishers durable publishers on topics under
//	         --durable-prefix: live p50/p99 alone and beside, durable acks/s
//
// --topic-prefix puts the scenarios' topics under a policy of the broker;
// with --embedded, --ephemeral makes a pattern's topics ephemeral, e.g.
// --ephemeral 'cursor.>' --topic-prefix cursor to measure ephemeral topics
// (NATS core stands for them in the baseline, JetStream for the durable
// load).
//
// Subscribers and publishers are clients/go clients (nats.go for NATS).
// The idle connections are raw WebSocket sockets written by hand, for both
// brokers: they hold no goroutine and no buffer, so that measuring the
// embedded broker's memory in this process is not distorted by client
// state. The load generator shares the machine's cores with the broker.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

type config struct {
	URL             string
	SubURLs         []string
	Embedded        bool
	PID             int
	Scenarios       []string
	Duration        time.Duration
	Drain           time.Duration
	Subscribers     int
	Rate            int
	Topics          int
	TopicPublishers int
	Publishers      int
	Window          int
	Payload         int
	ReplayMessages  int
	FillPublishers  int
	Idle            int
	Baseline        string
	NATSSyncAlways  bool
	CPUProfile      string
	NoDedup         bool
	TopicPrefix     string
	Ephemeral       string
	DurablePrefix   string
	Out             io.Writer

	runID string // one run's topics' own segment
}

func parseFlags(args []string) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("brokerbench", flag.ContinueOnError)
	fs.StringVar(&cfg.URL, "url", "", "WebSocket URL of a running brokerd, e.g. ws://localhost:8080/ws; publishers connect there")
	subURLs := fs.String("sub-urls", "", "comma-separated WebSocket URLs subscribers connect to in turn (other nodes of the --url's cluster); default: --url")
	fs.BoolVar(&cfg.Embedded, "embedded", false, "start brokerd in this process on a temporary directory")
	fs.IntVar(&cfg.PID, "pid", 0, "process id of the external brokerd, for the idle scenario's RSS")
	scen := fs.String("scenarios", strings.Join(scenarioOrder, ","), "comma-separated scenarios to run")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long each scenario publishes")
	fs.DurationVar(&cfg.Drain, "drain", 30*time.Second, "how long to wait for deliveries after publishing stops")
	fs.IntVar(&cfg.Subscribers, "subscribers", 1000, "subscriber connections in fanout and latency")
	fs.IntVar(&cfg.Rate, "rate", 200, "messages/s of the latency scenario")
	fs.IntVar(&cfg.Topics, "topics", 1000, "subscribers (each on its own topic) in the topics scenario")
	fs.IntVar(&cfg.TopicPublishers, "topic-publishers", 8, "publishers of the topics scenario")
	fs.IntVar(&cfg.Publishers, "publishers", 64, "concurrent publishers of the publish scenario")
	fs.IntVar(&cfg.Window, "window", 256, "publishes in flight per publisher")
	fs.IntVar(&cfg.Payload, "payload", 128, "message size in bytes (at least 48)")
	fs.IntVar(&cfg.ReplayMessages, "replay-messages", 1_000_000, "messages the replay scenario stores and reads back")
	fs.IntVar(&cfg.FillPublishers, "fill-publishers", 16, "publishers filling the replay topic")
	fs.IntVar(&cfg.Idle, "idle", 10_000, "idle connections of the idle scenario")
	fs.StringVar(&cfg.Baseline, "baseline", "", `run the scenarios against a baseline too: "nats"`)
	fs.BoolVar(&cfg.NATSSyncAlways, "nats-sync-always", true, "make NATS JetStream fsync before acknowledging, as brokerd does")
	fs.BoolVar(&cfg.NoDedup, "embedded-no-dedup", false, "diagnostic: turn the embedded store's idempotency keys off, to measure what they cost")
	fs.StringVar(&cfg.TopicPrefix, "topic-prefix", "bench", "first segments of the scenarios' topics (PREFIX.RUN.SCENARIO...): put them under a policy of the broker, e.g. an ephemeral one")
	fs.StringVar(&cfg.Ephemeral, "ephemeral", "", `with --embedded: a topic pattern whose topics the embedded broker keeps ephemeral (a policy with storage: ephemeral), e.g. "cursor.>" with --topic-prefix cursor`)
	fs.StringVar(&cfg.DurablePrefix, "durable-prefix", "bench.durable", "first segments of the durable topics of the mixed scenario's background load: they must stay durable")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write a CPU profile of the brokerd scenarios to this file (with --embedded it covers the broker)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if (cfg.URL == "") == !cfg.Embedded {
		return nil, errors.New("give either --url or --embedded")
	}
	for _, u := range strings.Split(*subURLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.SubURLs = append(cfg.SubURLs, u)
		}
	}
	if len(cfg.SubURLs) > 0 && cfg.Embedded {
		return nil, errors.New("--sub-urls needs --url: a cluster's nodes")
	}
	if cfg.Baseline != "" && cfg.Baseline != "nats" {
		return nil, fmt.Errorf("--baseline %q: only nats is supported", cfg.Baseline)
	}
	for _, s := range strings.Split(*scen, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if scenarios[s] == nil {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", s, strings.Join(scenarioOrder, ", "))
		}
		cfg.Scenarios = append(cfg.Scenarios, s)
	}
	if cfg.Ephemeral != "" && !cfg.Embedded {
		return nil, errors.New("--ephemeral needs --embedded: a running brokerd's own policies decide which topics are ephemeral")
	}
	if cfg.Ephemeral != "" && !subproto.ValidPattern(cfg.Ephemeral) {
		return nil, fmt.Errorf("--ephemeral %q is not a topic pattern", cfg.Ephemeral)
	}
	for _, p := range []string{cfg.TopicPrefix, cfg.DurablePrefix} {
		if !subproto.ValidTopic(p + ".x") {
			return nil, fmt.Errorf("prefix %q does not make valid topic names", p)
		}
	}
	if cfg.Payload < 48 {
		return nil, errors.New("--payload must be at least 48 bytes")
	}
	if cfg.Subscribers < 1 || cfg.Topics < 1 || cfg.Publishers < 1 || cfg.Window < 1 || cfg.Rate < 1 || cfg.ReplayMessages < 1 || cfg.Idle < 1 || cfg.TopicPublishers < 1 || cfg.FillPublishers < 1 {
		return nil, errors.New("sizes must be positive")
	}
	return cfg, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "brokerbench:", err)
		os.Exit(2)
	}
	cfg.Out = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "brokerbench:", err)
		os.Exit(1)
	}
}

// raiseFileLimit lifts RLIMIT_NOFILE so that thousands of connections,
// both of their ends in this process when the broker is embedded, fit.
func raiseFileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	want := syscall.Rlimit{Cur: 1 << 18, Max: max(lim.Max, 1<<18)}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
		return want.Cur
	}
	lim.Cur = lim.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur
}

// run runs every scenario against brokerd and the baseline.
func run(ctx context.Context, cfg *config) ([]*result, error) {
	fdLimit := raiseFileLimit()
	var need uint64
	for _, s := range cfg.Scenarios {
		switch s {
		case "fanout", "latency":
			need = max(need, uint64(cfg.Subscribers))
		case "topics":
			need = max(need, uint64(cfg.Topics))
		case "idle":
			need = max(need, uint64(cfg.Idle))
		}
	}
	if cfg.Embedded || cfg.Baseline != "" {
		need *= 2 // both ends in this process
	}
	if fdLimit != 0 && need+256 > fdLimit {
		fmt.Fprintf(os.Stderr, "brokerbench: warning: the file descriptor limit %d is below the %d connections' needs\n", fdLimit, need+256)
	}
	runID := strconv.FormatInt(time.Now().UnixNano()%(1<<40), 36)
	cfg.runID = runID
	var results []*result
	targets := []string{"brokerd"}
	if cfg.Baseline == "nats" {
		targets = append(targets, "nats")
	}
	for _, name := range targets {
		var t target
		var err error
		switch {
		case name == "nats":
			t, err = startNATS(cfg.NATSSyncAlways)
		case cfg.Embedded:
			t, err = startEmbedded(cfg.NoDedup, cfg.Ephemeral)
		default:
			t = &brokerdTarget{url: cfg.URL, subURLs: cfg.SubURLs, pid: cfg.PID}
		}
		if err != nil {
			return results, fmt.Errorf("starting %s: %w", name, err)
		}
		var prof *os.File
		if name == "brokerd" && cfg.CPUProfile != "" {
			if prof, err = os.Create(cfg.CPUProfile); err != nil {
				return results, err
			}
			if err := pprof.StartCPUProfile(prof); err != nil {
				return results, err
			}
		}
		for _, s := range cfg.Scenarios {
			topic := cfg.TopicPrefix + "." + runID + "." + s
			r, err := scenarios[s](ctx, cfg, t, topic)
			if err != nil {
				if prof != nil {
					pprof.StopCPUProfile()
					prof.Close()
				}
				_ = t.Close()
				return results, fmt.Errorf("%s against %s: %w", s, name, err)
			}
			r.Target, r.Scenario = name, s
			results = append(results, r)
			printJSON(cfg.Out, r)
		}
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
		}
		if err := t.Close(); err != nil {
			return results, err
		}
	}
	printTable(cfg.Out, results)
	return results, nil
}

func printJSON(w io.Writer, r *result) {
	m := map[string]any{"target": r.Target, "scenario": r.Scenario}
	for k, v := range r.Params {
		m[k] = v
	}
	for _, f := range r.Figures {
		m[jsonName(f)] = round(f.Value)
	}
	b, _ := json.Marshal(m)
	fmt.Fprintln(w, string(b))
}

func jsonName(f figure) string {
	n := strings.NewReplacer(" ", "_", "/s", "_per_s", "/", "_per_").Replace(f.Name)
	switch f.Unit {
	case "us":
		n += "_us"
	case "B":
		n += "_bytes"
	}
	return n
}

func round(v float64) float64 {
	if math.Abs(v) >= 100 {
		return math.Round(v)
	}
	return math.Round(v*1000) / 1000
}

func format(f figure) string {
	switch f.Unit {
	case "/s":
		return strconv.FormatFloat(f.Value, 'f', 0, 64) + "/s"
	case "us":
		return strconv.FormatFloat(f.Value/1000, 'f', 2, 64) + " ms"
	case "ratio":
		return strconv.FormatFloat(f.Value*100, 'f', 3, 64) + "%"
	case "B":
		return strconv.FormatFloat(f.Value/1024, 'f', 2, 64) + " KiB"
	}
	return strconv.FormatFloat(f.Value, 'g', 4, 64)
}

// printTable prints every figure of brokerd beside the baseline's and the
// ratio brokerd/baseline.
func printTable(w io.Writer, results []*result) {
	type key struct{ scenario, figure string }
	base := map[key]figure{}
	for _, r := range results {
		if r.Target != "brokerd" {
			for _, f := range r.Figures {
				base[key{r.Scenario, f.Name}] = f
			}
		}
	}
	order := map[string]int{}
	for i, s := range scenarioOrder {
		order[s] = i
	}
	var rows []*result
	for _, r := range results {
		if r.Target == "brokerd" {
			rows = append(rows, r)
		}
	}
	sort.SliceStable(rows, func(i, j int) bool { return order[rows[i].Scenario] < order[rows[j].Scenario] })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nscenario\tfigure\tbrokerd\tnats\tbrokerd/nats\t")
	for _, r := range rows {
		for _, f := range r.Figures {
			b, ok := base[key{r.Scenario, f.Name}]
			nats, ratio := "-", "-"
			if ok {
				nats = format(b)
				if b.Value != 0 {
					ratio = strconv.FormatFloat(f.Value/b.Value, 'f', 2, 64) + "x"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", r.Scenario, f.Name, format(f), nats, ratio)
		}
	}
	tw.Flush()
}
