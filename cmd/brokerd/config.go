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
	"github.com/brokerd/brokerd/internal/auth"
	"github.com/brokerd/brokerd/internal/metrics"
	"github.com/brokerd/brokerd/internal/server"
	"github.com/brokerd/brokerd/store"
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
	MaxPatternTopics int
	MaxTopics        int
	MaxTopicsPerUser int
	TopicIdle        time.Duration
	MaxCommands      int
	QueueMessages    int
	QueueBytes       int
	MaxPending       int
	MaxPendingBytes  int
	PendingBytes     int64

	MaxPageBytes       int
	HTTPMaxHeaderBytes int
	HTTPHeaderTimeout  time.Duration
	HTTPReadTimeout    time.Duration
	HTTPWriteTimeout   time.Duration
	HTTPIdleTimeout    time.Duration
	MaxHTTPConnections int
	MaxHTTPRequests    int

	ConfigFile     string
	TLSCert        string
	TLSKey         string
	JWTSecret      string
	JWTSecretFile  string
	JWTPublicKey   string
	AdminToken     string
	AdminTokenFile string
	AuthTimeout    time.Duration
	MaxConnections int
	MaxUnauth      int
	ConnRatePerIP  float64
	ConnBurstPerIP int
	TrustedProxies string
	CommandRate    float64
	CommandBurst   int
	Compression    bool
	RetentionAge   time.Duration
	RetentionBytes int64
	RetentionMsgs  int64
	DedupWindow    time.Duration

	NATS       string
	Cluster    string
	Partitions int
	LeaseTTL   time.Duration
	Replicas   int
	Unclean    time.Duration

	// policyList comes from the config file's policies key only.
	policyList []broker.Policy

	// values holds every flag's value as parsed, by flag name (a reload
	// compares them).
	values map[string]string
	// args and getenv are what the configuration was parsed from; a
	// reload parses them again.
	args   []string
	getenv func(string) string

	// fromEnv maps the name of each flag whose value came from the
	// environment to its variable, so that errors name what the user set.
	fromEnv map[string]string
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
	fs.IntVar(&c.MaxPatternTopics, "max-pattern-topics", 10000, "topics one pattern subscription may replay (with since or positions; more: err too_many_topics)")
	fs.IntVar(&c.MaxTopicsPerUser, "max-topics-per-user", 0, "with auth on: the most topics one user (a token's sub) may create through this node, counted since its start and freed as idle topics are deleted; past it a pub or sub that would create one gets err too_many_topics (HTTP 507). A token's max_topics claim overrides it. 0: no bound but --max-topics")
	fs.IntVar(&c.MaxTopics, "max-topics", 1_000_000, "topics the store may hold: a pub or sub that would create one more gets err too_many_topics (HTTP 507); 0 turns the limit off. In a cluster each node's store is bounded")
	fs.DurationVar(&c.TopicIdle, "topic-idle", 10*time.Minute, "a topic holding no message and no subscriber on this node is deleted after this long since its creation or last message (a later pub or sub creates it again, with a new epoch); 0 keeps them. In a cluster, ephemeral topics only, once no node has a subscription to them")
	fs.IntVar(&c.MaxCommands, "max-commands-per-frame", 1000, "commands one frame may carry")
	fs.IntVar(&c.QueueMessages, "queue-messages", 1024, "outbound queue length per connection, in messages")
	fs.IntVar(&c.QueueBytes, "queue-bytes", 4<<20, "outbound queue size per connection, in bytes")
	fs.IntVar(&c.MaxPending, "max-pending-publishes", 1024, "publishes per connection waiting to be durable before the connection's reads pause")
	fs.IntVar(&c.MaxPendingBytes, "max-pending-bytes", 8<<20, "data of one connection's publishes awaiting durability, in bytes, before the connection's reads pause")
	fs.Int64Var(&c.PendingBytes, "pending-bytes", 256<<20, "data of all publishes awaiting durability (WebSocket and HTTP), in bytes, before the publishers' reads pause")
	fs.IntVar(&c.MaxPageBytes, "max-page-bytes", 4<<20, "message data of one history page of the HTTP API, in bytes")
	fs.IntVar(&c.HTTPMaxHeaderBytes, "http-max-header-bytes", 16<<10, "request line and headers of an HTTP request, in bytes (larger: HTTP 431)")
	fs.DurationVar(&c.HTTPHeaderTimeout, "http-header-timeout", 5*time.Second, "time to send an HTTP request's headers, the WebSocket upgrade's included")
	fs.DurationVar(&c.HTTPReadTimeout, "http-read-timeout", 30*time.Second, "time to send a whole HTTP request, body included (a stalled body is cut off)")
	fs.DurationVar(&c.HTTPWriteTimeout, "http-write-timeout", 10*time.Second, "an HTTP answer (a history page) whose writes make no progress this long is cut off")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", 2*time.Minute, "an idle keep-alive HTTP connection is closed after this long")
	fs.IntVar(&c.MaxHTTPConnections, "max-http-connections", 2048, "open HTTP connections not upgraded to WebSocket; past it a new one is closed at once")
	fs.IntVar(&c.MaxHTTPRequests, "max-http-requests", 64, "HTTP requests served at once (API, metrics, health; WebSocket excluded); past it: HTTP 503. Each may hold a request body of up to --max-message-bytes for up to --http-read-timeout")
	fs.StringVar(&c.ConfigFile, "config", "", "YAML config file whose keys are these flag names (e.g. `addr: \":8080\"`); flags win over the environment, which wins over the file")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate chain; with --tls-key serves wss:// and https://")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	fs.StringVar(&c.JWTSecret, "jwt-secret", "", "HMAC secret (at least 32 bytes) verifying HS256/384/512 tokens; turns auth on. Prefer --jwt-secret-file or the environment: flags show in process lists")
	fs.StringVar(&c.JWTSecretFile, "jwt-secret-file", "", "file holding the HMAC secret (surrounding whitespace trimmed); turns auth on")
	fs.StringVar(&c.JWTPublicKey, "jwt-public-key", "", "PEM public key file verifying tokens (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA); turns auth on")
	fs.StringVar(&c.AdminToken, "admin-token", "", "bearer token (at least 16 bytes) of the admin endpoints (GET /v1/admin/backup, for brokerd backup); without one they are off. Prefer --admin-token-file or the environment: flags show in process lists")
	fs.StringVar(&c.AdminTokenFile, "admin-token-file", "", "file holding the admin token (surrounding whitespace trimmed)")
	fs.DurationVar(&c.AuthTimeout, "auth-timeout", 5*time.Second, "with auth on, how long a connection may stay unauthenticated before it is closed (4001)")
	fs.IntVar(&c.MaxConnections, "max-connections", 10000, "open WebSocket connections; past it new ones are closed with 1013")
	fs.IntVar(&c.MaxUnauth, "max-unauth-connections", 1000, "with auth on, connections that have yet to authenticate (no token in the handshake); they do not count in --max-connections until they do. Past it new ones are closed with 1013")
	fs.Float64Var(&c.ConnRatePerIP, "conn-rate-per-ip", 1000, "new connections per second from one IP address (IPv6: one /64) (HTTP 429 past it); 0 turns the limit off. Behind a proxy set --trusted-proxies")
	fs.IntVar(&c.ConnBurstPerIP, "conn-burst-per-ip", 2000, "burst of new connections from one IP address (IPv6: one /64)")
	fs.StringVar(&c.TrustedProxies, "trusted-proxies", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For names the client's IP (for the per-IP limit and logs)")
	fs.Float64Var(&c.CommandRate, "command-rate", 50000, "commands per second one connection may send (past it: close 4029); 0 turns the limit off")
	fs.IntVar(&c.CommandBurst, "command-burst", 100000, "burst of commands one connection may send")
	fs.BoolVar(&c.Compression, "compression", false, "offer permessage-deflate; decompressed messages stay bounded by --max-frame-bytes")
	fs.DurationVar(&c.RetentionAge, "retention-max-age", 7*24*time.Hour, "default per-topic retention: records older than this are removed")
	fs.Int64Var(&c.RetentionBytes, "retention-max-bytes", 1<<30, "default per-topic retention: retained data bytes")
	fs.Int64Var(&c.RetentionMsgs, "retention-max-messages", 10_000_000, "default per-topic retention: retained messages")
	fs.DurationVar(&c.DedupWindow, "dedup-window", 2*time.Minute, "how long a publish's idempotency key is remembered")
	fs.StringVar(&c.NATS, "nats", "", "comma-separated NATS server URLs (JetStream enabled); set, this node joins the cluster --cluster; unset, it runs alone")
	fs.StringVar(&c.Cluster, "cluster", "brokerd", "cluster name: namespaces the NATS subjects and KV buckets, so that clusters can share one NATS")
	fs.IntVar(&c.Partitions, "partitions", 64, "with --nats: partitions topics are hashed into, each with one owner node; the same on every node")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", 5*time.Second, "with --nats: a dead node's partitions move to others after about this long")
	fs.DurationVar(&c.Unclean, "unclean-takeover-after", 0, "with --nats: let a node that does not hold a partition's history take it over, its topics starting a new epoch, once no node holding that history has renewed or taken its lease for this long; 0 (the default) never does: the partition stays unavailable until a holder comes back")
	fs.IntVar(&c.Replicas, "replicas", 0, "with --nats: nodes holding each record and consumer position before ok; 0 (automatic): 2 while two or more nodes are alive, 1 alone; N ≥ 2 needs N live nodes; the same on every node")

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
	// The config file's own name may come from the environment.
	if !set["config"] {
		if v := getenv(envName("config")); v != "" {
			c.ConfigFile = v
			set["config"] = true
			c.fromEnv = map[string]string{"config": envName("config")}
		}
	}
	var file map[string]string
	if c.ConfigFile != "" {
		var err error
		var policies any
		if file, policies, err = readConfigFile(c.ConfigFile, fs); err != nil {
			return nil, err
		}
		if c.policyList, err = parsePolicies(policies); err != nil {
			return nil, fmt.Errorf("config file %s: %w", c.ConfigFile, err)
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		defer func() {
			if _, fromEnv := c.fromEnv[f.Name]; fromEnv {
				return
			}
			if v, ok := file[f.Name]; ok {
				if err := f.Value.Set(v); err != nil {
					errs = append(errs, fmt.Errorf("config file %s: %s: %q: %v", c.ConfigFile, f.Name, v, err))
				}
			}
		}()
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("environment %s=%q: %v", name, v, err))
				return
			}
			if c.fromEnv == nil {
				c.fromEnv = make(map[string]string)
			}
			c.fromEnv[f.Name] = name
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c.args, c.getenv = args, getenv
	c.values = make(map[string]string)
	fs.VisitAll(func(f *flag.Flag) { c.values[f.Name] = f.Value.String() })
	return c, c.validate()
}

func envName(flagName string) string {
	return "BROKERD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// optName names an option in an error: the environment variable when its
// value came from there, else the flag.
func (c *config) optName(flagName string) string {
	if v, ok := c.fromEnv[flagName]; ok {
		return v
	}
	return "--" + flagName
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
		errs = append(errs, fmt.Errorf("%s must be text or json, got %q", c.optName("log-format"), c.LogFormat))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("%s must be debug, info, warn or error, got %q", c.optName("log-level"), c.LogLevel))
	}
	for _, p := range []struct {
		name string
		v    int
	}{
		{"max-frame-bytes", c.MaxFrameBytes}, {"max-message-bytes", c.MaxMessageBytes},
		{"max-subscriptions", c.MaxSubscriptions}, {"max-pattern-topics", c.MaxPatternTopics}, {"max-commands-per-frame", c.MaxCommands},
		{"queue-messages", c.QueueMessages}, {"queue-bytes", c.QueueBytes}, {"max-pending-publishes", c.MaxPending},
		{"max-pending-bytes", c.MaxPendingBytes}, {"max-page-bytes", c.MaxPageBytes}, {"http-max-header-bytes", c.HTTPMaxHeaderBytes},
		{"max-http-connections", c.MaxHTTPConnections}, {"max-http-requests", c.MaxHTTPRequests},
	} {
		if p.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", c.optName(p.name), p.v))
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"heartbeat", c.Heartbeat}, {"pong-timeout", c.PongTimeout}, {"write-timeout", c.WriteTimeout}, {"shutdown-timeout", c.ShutdownTimeout},
		{"http-header-timeout", c.HTTPHeaderTimeout}, {"http-read-timeout", c.HTTPReadTimeout},
		{"http-write-timeout", c.HTTPWriteTimeout}, {"http-idle-timeout", c.HTTPIdleTimeout},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %v", c.optName(d.name), d.v))
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together: give both or neither"))
	}
	n := 0
	for _, v := range []string{c.JWTSecret, c.JWTSecretFile, c.JWTPublicKey} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		errs = append(errs, errors.New("give one of --jwt-secret, --jwt-secret-file and --jwt-public-key"))
	}
	if c.AdminToken != "" && c.AdminTokenFile != "" {
		errs = append(errs, errors.New("give one of --admin-token and --admin-token-file"))
	}
	if c.ConnRatePerIP < 0 || c.CommandRate < 0 {
		errs = append(errs, errors.New("rates must not be negative (0 turns a limit off)"))
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"max-connections", c.MaxConnections}, {"max-unauth-connections", c.MaxUnauth}, {"conn-burst-per-ip", c.ConnBurstPerIP}, {"command-burst", c.CommandBurst}} {
		if p.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", c.optName(p.name), p.v))
		}
	}
	if c.AuthTimeout <= 0 || c.DedupWindow <= 0 || c.RetentionAge <= 0 {
		errs = append(errs, errors.New("--auth-timeout, --dedup-window and --retention-max-age must be positive"))
	}
	if c.PendingBytes <= 0 {
		errs = append(errs, fmt.Errorf("%s must be positive, got %d", c.optName("pending-bytes"), c.PendingBytes))
	}
	if c.MaxTopics < 0 || c.TopicIdle < 0 || c.MaxTopicsPerUser < 0 {
		errs = append(errs, fmt.Errorf("%s, %s and %s must not be negative (0 turns them off)", c.optName("max-topics"), c.optName("max-topics-per-user"), c.optName("topic-idle")))
	}
	if c.RetentionBytes <= 0 || c.RetentionMsgs <= 0 {
		errs = append(errs, errors.New("--retention-max-bytes and --retention-max-messages must be positive"))
	}
	if c.NATS != "" {
		errs = append(errs, c.validateCluster()...)
	}
	if len(errs) == 0 {
		if _, err := c.policies(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Heartbeat > 0 && c.Heartbeat < time.Second {
		errs = append(errs, fmt.Errorf("%s must be at least 1s, got %v", c.optName("heartbeat"), c.Heartbeat))
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

func (c *config) brokerConfig(log *slog.Logger, a broker.Authenticator, m *metrics.Metrics) broker.Config {
	return broker.Config{
		Node:                c.Node,
		Version:             version,
		Heartbeat:           c.Heartbeat,
		MaxSubscriptions:    c.MaxSubscriptions,
		MaxPatternTopics:    c.MaxPatternTopics,
		MaxTopicsPerUser:    c.MaxTopicsPerUser,
		TopicIdle:           idleOrOff(c.TopicIdle),
		MaxCommandsPerFrame: c.MaxCommands,
		MaxMessageBytes:     c.MaxMessageBytes,
		QueueMessages:       c.QueueMessages,
		QueueBytes:          c.QueueBytes,
		MaxPendingPublishes: c.MaxPending,
		MaxPendingBytes:     c.MaxPendingBytes,
		PendingBytes:        c.PendingBytes,
		AuthTimeout:         c.AuthTimeout,
		CommandRate:         rateOrOff(c.CommandRate),
		CommandBurst:        c.CommandBurst,
		Auth:                a,
		OnPublish:           m.ObservePublish,
		Logger:              log,
	}
}

// authenticator builds the token verifier; nil when auth is off.
func (c *config) authenticator() (broker.Authenticator, error) {
	switch {
	case c.JWTSecret != "":
		return auth.NewHMAC([]byte(c.JWTSecret))
	case c.JWTSecretFile != "":
		b, err := os.ReadFile(c.JWTSecretFile)
		if err != nil {
			return nil, fmt.Errorf("--jwt-secret-file: %w", err)
		}
		return auth.NewHMAC([]byte(strings.TrimSpace(string(b))))
	case c.JWTPublicKey != "":
		b, err := os.ReadFile(c.JWTPublicKey)
		if err != nil {
			return nil, fmt.Errorf("--jwt-public-key: %w", err)
		}
		return auth.NewPublicKey(b)
	}
	return nil, nil
}

// adminToken returns the admin endpoints' token; "" when they are off.
func (c *config) adminToken() (string, error) {
	tok, name := c.AdminToken, c.optName("admin-token")
	if c.AdminTokenFile != "" {
		b, err := os.ReadFile(c.AdminTokenFile)
		if err != nil {
			return "", fmt.Errorf("--admin-token-file: %w", err)
		}
		tok, name = strings.TrimSpace(string(b)), "--admin-token-file"
	}
	if tok != "" && len(tok) < 16 {
		return "", fmt.Errorf("%s: the admin token must be at least 16 bytes, got %d", name, len(tok))
	}
	return tok, nil
}

func (c *config) storeOptions(log *slog.Logger, m *metrics.Metrics) *store.Options {
	return &store.Options{
		Logger:         log,
		MaxRecordBytes: c.MaxMessageBytes,
		MaxTopics:      c.MaxTopics,
		DedupWindow:    c.DedupWindow,
		Retention: store.Retention{
			MaxAge:      c.RetentionAge,
			MaxBytes:    c.RetentionBytes,
			MaxMessages: c.RetentionMsgs,
		},
		OnCommit: m.ObserveCommit,
	}
}

func (c *config) serverConfig(log *slog.Logger) server.Config {
	return server.Config{
		AllowedOrigins:       splitList(c.AllowedOrigins),
		MaxFrameBytes:        c.MaxFrameBytes,
		WriteTimeout:         c.WriteTimeout,
		PongTimeout:          c.PongTimeout,
		MaxConnections:       c.MaxConnections,
		MaxUnauthConnections: c.MaxUnauth,
		ConnRatePerIP:        rateOrOff(c.ConnRatePerIP),
		ConnBurstPerIP:       c.ConnBurstPerIP,
		TrustedProxies:       splitList(c.TrustedProxies),
		Compression:          c.Compression,
		Logger:               log,

		MaxPageBytes:       c.MaxPageBytes,
		MaxHeaderBytes:     c.HTTPMaxHeaderBytes,
		ReadHeaderTimeout:  c.HTTPHeaderTimeout,
		ReadTimeout:        c.HTTPReadTimeout,
		HTTPWriteTimeout:   c.HTTPWriteTimeout,
		IdleTimeout:        c.HTTPIdleTimeout,
		MaxHTTPConnections: c.MaxHTTPConnections,
		MaxHTTPRequests:    c.MaxHTTPRequests,
	}
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// rateOrOff maps the flag's 0 (off) onto the broker's negative (off).
func rateOrOff(r float64) float64 {
	if r == 0 {
		return -1
	}
	return r
}

func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "brokerd %s: a WebSocket pub/sub broker with durable topic logs.\n\n", version)
	fmt.Fprintf(w, "Usage: brokerd [flags]\n\nEvery flag can also be set in the environment as BROKERD_<FLAG>\n(upper case, dashes as underscores, e.g. BROKERD_ADDR); flags win.\n\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(w, "  --%s (env %s, default %q)\n      %s\n", f.Name, envName(f.Name), f.DefValue, f.Usage)
	})
}

// idleOrOff maps --topic-idle's 0 (keep topics) onto the broker's negative.
func idleOrOff(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
