package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config configures a Server. The zero value works: withDefaults fills
// every unset field.
type Config struct {
	// Node is this node's name, reported in welcome.
	Node string
	// Version is the broker version reported in welcome.
	Version string
	// Heartbeat is the interval between WebSocket pings (default 25s).
	Heartbeat time.Duration
	// MaxSubscriptions bounds subscriptions per connection (default 512).
	MaxSubscriptions int
	// MaxCommandsPerFrame bounds the objects one frame may carry (default 1,000).
	MaxCommandsPerFrame int
	// MaxMessageBytes bounds the data of one published message (default 1 MiB).
	MaxMessageBytes int
	// QueueMessages bounds the messages queued for one connection (default 1,024).
	QueueMessages int
	// QueueBytes bounds the bytes queued for one connection (default 4 MiB).
	QueueBytes int
	// MinShare is the fewest queued messages a subscription may always have
	// before it falls back to reading the log (default 32).
	MinShare int
	// MaxFrameBytes is the target size of one coalesced outbound frame (default 64 KiB).
	MaxFrameBytes int
	// MaxPatternTopics bounds the topics one pattern subscription may
	// replay: topics it has a position for or that hold records at or
	// after its since (default 10,000). Live-only patterns are not bound
	// by it.
	MaxPatternTopics int
	// MaxTopicsPerUser bounds the topics one user (a token's subject)
	// creates through this server (see topicQuota); a token's MaxTopics
	// overrides it. 0: no bound but the store's. Without auth, or for a
	// token without a subject, it does not apply.
	MaxTopicsPerUser int
	// ReplayPage bounds the records one log read fetches (default 256).
	ReplayPage int
	// PresenceMuteAbove is the number of members above which a topic's
	// presence stops sending join and leave (default PresenceMuteAbove,
	// the protocol's 1,000; tests lower it).
	PresenceMuteAbove int
	// MaxPendingPublishes bounds publishes of one connection waiting to be
	// durable; past it the connection's reader waits (default 1,024).
	MaxPendingPublishes int
	// MaxPendingBytes bounds the data of one connection's publishes waiting
	// to be durable; past it the connection's reader waits (default 8 MiB).
	MaxPendingBytes int
	// PendingBytes bounds the data of publishes waiting to be durable on
	// the whole server, HTTP publishes included; past it the readers of
	// the connections that publish wait (default 256 MiB).
	PendingBytes int64
	// DefaultMaxInflight is a durable consumer's max_inflight when the
	// subscription names none (default 1,000); MaxInflight caps it (default 10,000).
	DefaultMaxInflight int
	MaxInflight        int
	// ShutdownRetryAfter is the range of retry_after_ms handed out in 1001
	// and 1013 close reasons; each client gets a random value in
	// [ShutdownRetryAfter/10, ShutdownRetryAfter] (default 5s).
	ShutdownRetryAfter time.Duration
	// TopicIdle is how long a topic that holds no record and has no
	// subscriber on this node is kept, counted from its last record or
	// its creation, before it is deleted (when the Store is a
	// Reclaimer, and ephemeral topics always; default 10 minutes;
	// negative: never). A later publish or
	// sub creates it again, with a new epoch.
	TopicIdle time.Duration
	// Auth verifies tokens; nil turns auth off: every client may publish
	// and subscribe to everything.
	Auth Authenticator
	// AuthTimeout is how long a connection may stay unauthenticated before
	// it is closed with 4001 (default 5s).
	AuthTimeout time.Duration
	// CommandRate bounds the commands per second one connection may send,
	// with bursts up to CommandBurst; past it the connection is closed
	// with 4029. Defaults 50,000/s and 100,000; a negative rate turns the
	// limit off.
	CommandRate  float64
	CommandBurst int
	// Policies set retention (applied by the store), limits and pattern
	// replay per topic pattern (default: one default policy, no limits of
	// its own). SetPolicies replaces them while the server runs.
	Policies *Policies
	// OnPublish, when set, observes the time from receiving each publish
	// to its durable ok (for metrics). It must not block.
	OnPublish func(time.Duration)
	// DrainGrace is how long Shutdown waits for publishes already received
	// to be answered before it closes the connections (default 2s, at
	// most half the time Shutdown is given).
	DrainGrace time.Duration
	// Logger receives the broker's structured logs (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxSubscriptions, 512)
	def(&c.MaxCommandsPerFrame, 1000)
	def(&c.MaxMessageBytes, 1<<20)
	def(&c.QueueMessages, 1024)
	def(&c.QueueBytes, 4<<20)
	def(&c.MinShare, 32)
	def(&c.MaxFrameBytes, 64<<10)
	def(&c.ReplayPage, 256)
	def(&c.PresenceMuteAbove, PresenceMuteAbove)
	def(&c.MaxPatternTopics, 10000)
	def(&c.MaxPendingPublishes, 1024)
	def(&c.MaxPendingBytes, 8<<20)
	if c.PendingBytes == 0 {
		c.PendingBytes = 256 << 20
	}
	def(&c.DefaultMaxInflight, 1000)
	def(&c.MaxInflight, 10000)
	if c.Heartbeat == 0 {
		c.Heartbeat = 25 * time.Second
	}
	if c.CommandRate == 0 {
		c.CommandRate = 50000
	}
	if c.CommandBurst == 0 {
		c.CommandBurst = max(1, 2*int(c.CommandRate))
	}
	if c.DrainGrace == 0 {
		c.DrainGrace = 2 * time.Second
	}
	if c.AuthTimeout == 0 {
		c.AuthTimeout = 5 * time.Second
	}
	if c.TopicIdle == 0 {
		c.TopicIdle = 10 * time.Minute
	}
	if c.ShutdownRetryAfter == 0 {
		c.ShutdownRetryAfter = 5 * time.Second
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	pos := func(name string, v int) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("broker: %s must be positive, got %d", name, v))
		}
	}
	pos("MaxSubscriptions", c.MaxSubscriptions)
	pos("MaxCommandsPerFrame", c.MaxCommandsPerFrame)
	pos("MaxMessageBytes", c.MaxMessageBytes)
	pos("QueueMessages", c.QueueMessages)
	pos("QueueBytes", c.QueueBytes)
	pos("MinShare", c.MinShare)
	pos("MaxFrameBytes", c.MaxFrameBytes)
	pos("ReplayPage", c.ReplayPage)
	pos("PresenceMuteAbove", c.PresenceMuteAbove)
	pos("MaxPatternTopics", c.MaxPatternTopics)
	pos("MaxPendingPublishes", c.MaxPendingPublishes)
	pos("MaxPendingBytes", c.MaxPendingBytes)
	if c.PendingBytes < 0 {
		errs = append(errs, fmt.Errorf("broker: PendingBytes must be positive, got %d", c.PendingBytes))
	}
	pos("DefaultMaxInflight", c.DefaultMaxInflight)
	pos("MaxInflight", c.MaxInflight)
	if c.Heartbeat < time.Second {
		errs = append(errs, fmt.Errorf("broker: Heartbeat must be at least 1s, got %v", c.Heartbeat))
	}
	if c.DefaultMaxInflight > c.MaxInflight {
		errs = append(errs, fmt.Errorf("broker: DefaultMaxInflight %d exceeds MaxInflight %d", c.DefaultMaxInflight, c.MaxInflight))
	}
	if c.QueueMessages < 2 {
		errs = append(errs, fmt.Errorf("broker: QueueMessages must be at least 2, got %d", c.QueueMessages))
	}
	if c.CommandRate > 0 && c.CommandBurst < 1 {
		errs = append(errs, fmt.Errorf("broker: CommandBurst must be at least 1, got %d", c.CommandBurst))
	}
	if c.MinShare > c.QueueMessages {
		errs = append(errs, fmt.Errorf("broker: MinShare %d exceeds QueueMessages %d", c.MinShare, c.QueueMessages))
	}
	return errors.Join(errs...)
}
