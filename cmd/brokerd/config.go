package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/server"
)

var errHelp = errors.New("help requested")

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type config struct {
	Addr            string
	Data            string
	AllowedOrigins  string
	Node            string
	LogFormat       string
	LogLevel        string
	ShutdownTimeout time.Duration

	Heartbeat        time.Duration
	PongTimeout      time.Duration
	WriteTimeout     time.Duration
	MaxFrameBytes    int
	MaxMessageBytes  int
	MaxSubscriptions int
	MaxCommands      int
	QueueMessages    int
	QueueBytes       int
	MaxPending       int
}

func defaultNode() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "brokerd"
	}
	return h
}

// parseConfig reads flags, then fills every flag not given on the command
// line from BROKERD_<FLAG> in the environment.
func parseConfig(args []string, getenv func(string) string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("brokerd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.Addr, "addr", ":8080", "listen address (host:port)")
	fs.StringVar(&c.Data, "data", "./data", "data directory; holds the store file brokerd.db")
	fs.StringVar(&c.AllowedOrigins, "allowed-origins", "", "comma-separated browser origins (scheme://host[:port]) allowed to connect; empty: the server's own host only; * for any. Clients that send no Origin are always allowed")
	fs.StringVar(&c.Node, "node", defaultNode(), "node name, reported to clients in welcome")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long draining may take on SIGTERM before the process exits")
	fs.DurationVar(&c.Heartbeat, "heartbeat", 25*time.Second, "interval between WebSocket pings to each client")
	fs.DurationVar(&c.PongTimeout, "pong-timeout", 10*time.Second, "how long past a heartbeat a silent connection is kept")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", 10*time.Second, "a connection whose writes make no progress for this long is closed as a slow consumer (4008)")
	fs.IntVar(&c.MaxFrameBytes, "max-frame-bytes", 1<<20, "largest incoming WebSocket message in bytes (larger: close 1009)")
	fs.IntVar(&c.MaxMessageBytes, "max-message-bytes", 1<<20, "largest published data in bytes (larger: err message_too_large)")
	fs.IntVar(&c.MaxSubscriptions, "max-subscriptions", 512, "subscriptions per connection")
	fs.IntVar(&c.MaxCommands, "max-commands-per-frame", 1000, "commands one frame may carry")
	fs.IntVar(&c.QueueMessages, "queue-messages", 1024, "outbound queue length per connection, in messages")
	fs.IntVar(&c.QueueBytes, "queue-bytes", 4<<20, "outbound queue size per connection, in bytes")
	fs.IntVar(&c.MaxPending, "max-pending-publishes", 1024, "publishes per connection waiting to be durable before the connection's reads pause")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(os.Stdout, fs)
			return nil, errHelp
		}
		return nil, fmt.Errorf("%v (see brokerd --help)", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (see brokerd --help)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("environment %s=%q: %v", name, v, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, c.validate()
}

func envName(flagName string) string {
	return "BROKERD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (c *config) validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("--addr must not be empty"))
	}
	if c.Data == "" {
		errs = append(errs, errors.New("--data must not be empty"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format must be text or json, got %q", c.LogFormat))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level must be debug, info, warn or error, got %q", c.LogLevel))
	}
	for _, p := range []struct {
		name string
		v    int
	}{
		{"--max-frame-bytes", c.MaxFrameBytes}, {"--max-message-bytes", c.MaxMessageBytes},
		{"--max-subscriptions", c.MaxSubscriptions}, {"--max-commands-per-frame", c.MaxCommands},
		{"--queue-messages", c.QueueMessages}, {"--queue-bytes", c.QueueBytes}, {"--max-pending-publishes", c.MaxPending},
	} {
		if p.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", p.name, p.v))
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"--heartbeat", c.Heartbeat}, {"--pong-timeout", c.PongTimeout}, {"--write-timeout", c.WriteTimeout}, {"--shutdown-timeout", c.ShutdownTimeout},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %v", d.name, d.v))
		}
	}
	if c.Heartbeat > 0 && c.Heartbeat < time.Second {
		errs = append(errs, fmt.Errorf("--heartbeat must be at least 1s, got %v", c.Heartbeat))
	}
	return errors.Join(errs...)
}

func (c *config) logger() *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	if c.LogFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	} else {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	return slog.New(h).With("node", c.Node)
}

func (c *config) brokerConfig(log *slog.Logger) broker.Config {
	return broker.Config{
		Node:                c.Node,
		Version:             version,
		Heartbeat:           c.Heartbeat,
		MaxSubscriptions:    c.MaxSubscriptions,
		MaxCommandsPerFrame: c.MaxCommands,
		MaxMessageBytes:     c.MaxMessageBytes,
		QueueMessages:       c.QueueMessages,
		QueueBytes:          c.QueueBytes,
		MaxPendingPublishes: c.MaxPending,
		Logger:              log,
	}
}

func (c *config) serverConfig(log *slog.Logger) server.Config {
	var origins []string
	for _, o := range strings.Split(c.AllowedOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			origins = append(origins, o)
		}
	}
	return server.Config{
		AllowedOrigins: origins,
		MaxFrameBytes:  c.MaxFrameBytes,
		WriteTimeout:   c.WriteTimeout,
		PongTimeout:    c.PongTimeout,
		Logger:         log,
	}
}

func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "brokerd %s: a WebSocket pub/sub broker with durable topic logs.\n\n", version)
	fmt.Fprintf(w, "Usage: brokerd [flags]\n\nEvery flag can also be set in the environment as BROKERD_<FLAG>\n(upper case, dashes as underscores, e.g. BROKERD_ADDR); flags win.\n\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(w, "  --%s (env %s, default %q)\n      %s\n", f.Name, envName(f.Name), f.DefValue, f.Usage)
	})
}
