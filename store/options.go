package store

import (
	"fmt"
	"log/slog"
	"time"
)

// Defaults applied by Open to zero fields of Options.
const (
	DefaultLockTimeout       = time.Second
	DefaultMaxBatchRecords   = 4096
	DefaultMaxBatchBytes     = 8 << 20
	DefaultMaxRecordBytes    = 1 << 20
	DefaultDedupWindow       = 2 * time.Minute
	DefaultDedupMaxKeys      = 100_000
	DefaultDedupMaxKeysTotal = 1_000_000
	DefaultRetentionInterval = 30 * time.Second

	// DefaultMaxAge, DefaultMaxBytes and DefaultMaxMessages are the
	// per-topic retention limits used when neither Options.Retention nor a
	// topic's own setting gives one: a week of history, at most 1 GiB of
	// record data and at most ten million records per topic, whichever
	// limit is reached first.
	DefaultMaxAge      = 7 * 24 * time.Hour
	DefaultMaxBytes    = 1 << 30
	DefaultMaxMessages = 10_000_000

	// DefaultReadMax and DefaultReadBytes bound a Read whose max or maxBytes
	// is zero or negative; DefaultReadMax also bounds such a Topics.
	DefaultReadMax   = 1000
	DefaultReadBytes = 1 << 20
)

// Limits on names.
const (
	// MaxTopicBytes bounds topic and consumer names.
	MaxTopicBytes = 1024
	// MaxKeyBytes bounds idempotency keys; a longer key is
	// broker.ErrTooLarge.
	MaxKeyBytes = 1024
)

// Retention bounds a topic's retained history. The oldest records are removed
// first until every limit holds. In each field, zero means "inherit" (the
// topic inherits Options.Retention, which inherits the package defaults) and a
// negative value means "no limit".
type Retention struct {
	MaxAge      time.Duration // records older than this are removed
	MaxBytes    int64         // retained record data bytes per topic
	MaxMessages int64         // retained records per topic
}

// over returns r with each zero field taken from base.
func (r Retention) over(base Retention) Retention {
	if r.MaxAge == 0 {
		r.MaxAge = base.MaxAge
	}
	if r.MaxBytes == 0 {
		r.MaxBytes = base.MaxBytes
	}
	if r.MaxMessages == 0 {
		r.MaxMessages = base.MaxMessages
	}
	return r
}

// Options configures a DB. The zero value is ready to use; Open fills zero
// fields with the Default constants.
type Options struct {
	// LockTimeout is how long Open waits for the data file's lock before it
	// fails with ErrLocked (another brokerd using the directory).
	LockTimeout time.Duration

	// MaxBatchRecords and MaxBatchBytes bound one group commit: the
	// committer takes at most this many records (appends, consumer commits
	// and retention deletions each count) and about this many bytes of
	// record data into one transaction. The append queue holds
	// 2×MaxBatchRecords operations; when it is full, AppendAsync and
	// CommitAsync block until the committer takes a batch (backpressure).
	MaxBatchRecords int
	MaxBatchBytes   int

	// MaxRecordBytes bounds one record's data; larger appends fail with
	// broker.ErrTooLarge.
	MaxRecordBytes int

	// DedupWindow is how long an idempotency key is remembered; negative
	// turns idempotency off. DedupMaxKeys bounds the remembered keys per
	// topic and DedupMaxKeysTotal those of all topics together; beyond
	// either, the oldest key (of the topic, or of all topics) is forgotten
	// first. Keys are held in memory: ≈ 140 bytes each for a UUID, plus
	// ≈ 115 bytes per topic holding keys, so ≈ 260 bytes a key when each
	// is alone in its topic (see the package documentation), and
	// DedupMaxKeysTotal bounds that memory whatever the number of topics.
	DedupWindow       time.Duration
	DedupMaxKeys      int
	DedupMaxKeysTotal int

	// MaxTopics bounds the topics with a log: an append or Ensure that
	// would create one more fails with broker.ErrTooManyTopics (AppendAt,
	// which stores what another node created, is not bounded). Zero or
	// negative: no limit.
	MaxTopics int

	// Retention is the default retention of every topic (see Retention);
	// SetRetention overrides it per topic.
	Retention Retention

	// RetentionOf, when set, gives a topic's retention by its name (a
	// policy chosen by topic pattern); its zero fields inherit Retention,
	// and a topic's own SetRetention overrides it field by field. It is
	// called by the retention pass for every topic and must be fast, safe
	// for concurrent use, and must not call the DB.
	RetentionOf func(topic string) Retention

	// RetentionInterval is how often the background loop applies retention
	// and expires idempotency keys (which every commit expires as well). Negative turns the loop off; call
	// RunRetention yourself then.
	RetentionInterval time.Duration

	// NoSync skips fsync at commit. UNSAFE: a crash of the machine (not only
	// of the process) may lose acknowledged records or corrupt the file.
	// For tests and benchmarks only.
	NoSync bool

	// MaxTailBytes bounds the memory of records that the write-ahead log
	// holds and the data file does not have yet (served to readers from
	// memory). When the data file falls this far behind, commits wait for
	// it, and appenders block (backpressure). Default DefaultMaxTailBytes.
	MaxTailBytes int64

	// Now returns the current time; records are stamped with it and
	// retention and idempotency measure age with it. Default time.Now.
	Now func() time.Time

	// Logger receives the store's operational logs. Default slog.Default().
	Logger *slog.Logger

	// OnCommit, when set, observes every group commit: a log entry or a
	// bbolt write transaction of the committer, with the number of appends
	// and consumer commits it carried and how long it took, its sync
	// included (for metrics). It runs on the committer goroutine and must
	// not block.
	OnCommit func(ops int, took time.Duration)

	// OnApply, when set, observes every transaction that brings the data
	// file up to date from the write-ahead log: the puts it carried and
	// how long it took, fsync included. It runs on the applier goroutine
	// and must not block.
	OnApply func(puts int, took time.Duration)
}

// withDefaults returns a copy of o (nil is the zero Options) with every zero
// field set to its default, or an error naming an invalid field.
func (o *Options) withDefaults() (Options, error) {
	var r Options
	if o != nil {
		r = *o
	}
	if r.LockTimeout == 0 {
		r.LockTimeout = DefaultLockTimeout
	}
	if r.MaxBatchRecords == 0 {
		r.MaxBatchRecords = DefaultMaxBatchRecords
	}
	if r.MaxBatchBytes == 0 {
		r.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if r.MaxRecordBytes == 0 {
		r.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if r.DedupWindow == 0 {
		r.DedupWindow = DefaultDedupWindow
	}
	if r.DedupMaxKeys == 0 {
		r.DedupMaxKeys = DefaultDedupMaxKeys
	}
	if r.DedupMaxKeysTotal == 0 {
		r.DedupMaxKeysTotal = DefaultDedupMaxKeysTotal
	}
	r.Retention = r.Retention.over(Retention{
		MaxAge:      DefaultMaxAge,
		MaxBytes:    DefaultMaxBytes,
		MaxMessages: DefaultMaxMessages,
	})
	if r.RetentionInterval == 0 {
		r.RetentionInterval = DefaultRetentionInterval
	}
	if r.MaxTailBytes == 0 {
		r.MaxTailBytes = DefaultMaxTailBytes
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	switch {
	case r.LockTimeout < 0:
		return r, fmt.Errorf("store: options: LockTimeout %v is negative", r.LockTimeout)
	case r.MaxBatchRecords < 0:
		return r, fmt.Errorf("store: options: MaxBatchRecords %d is negative", r.MaxBatchRecords)
	case r.MaxBatchBytes < 0:
		return r, fmt.Errorf("store: options: MaxBatchBytes %d is negative", r.MaxBatchBytes)
	case r.MaxRecordBytes < 0 || r.MaxRecordBytes > maxRecordLimit:
		return r, fmt.Errorf("store: options: MaxRecordBytes %d is outside 1..%d", r.MaxRecordBytes, maxRecordLimit)
	case r.MaxTailBytes < 0:
		return r, fmt.Errorf("store: options: MaxTailBytes %d is negative", r.MaxTailBytes)
	case r.DedupMaxKeys < 0:
		return r, fmt.Errorf("store: options: DedupMaxKeys %d is negative", r.DedupMaxKeys)
	case r.DedupMaxKeysTotal < 0:
		return r, fmt.Errorf("store: options: DedupMaxKeysTotal %d is negative", r.DedupMaxKeysTotal)
	}
	return r, nil
}

// maxRecordLimit keeps an encoded record well inside bbolt's value limit.
const maxRecordLimit = 256 << 20
