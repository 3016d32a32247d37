package broker

import (
	"context"
	"errors"
	"time"
)

// Record is one message of a topic log.
type Record struct {
	Offset uint64 // position in the topic log, starting at 1, no gaps
	Time   int64  // milliseconds since the Unix epoch, set by the store at append, never decreasing within a topic
	Key    string // idempotency key, "" when the publisher gave none
	Data   []byte // the published JSON value, byte for byte
}

// TopicInfo describes one topic log.
type TopicInfo struct {
	Topic    string
	Epoch    string // changes whenever the log's history is reset
	Earliest uint64 // first retained offset; Head+1 when nothing is retained
	Head     uint64 // last stored offset; 0 when nothing was ever appended
	Count    int64  // retained records
	Bytes    int64  // retained data bytes (keys not counted)
}

// Appended is the outcome of a durable append.
type Appended struct {
	Topic  string
	Epoch  string
	Offset uint64 // the record's offset; for a duplicate, the first record's offset
	Time   int64  // the record's timestamp (ms)
	Dup    bool   // the key was seen within the dedup window: nothing was stored
	// Created: this append created the topic's log (a new epoch). Stores
	// that cannot tell leave it false.
	Created bool
}

// Committed is a run of records of one topic that has just become durable,
// in ascending offset order with no gaps.
type Committed struct {
	Topic   string
	Epoch   string
	Records []Record
}

// ConsumerOffset is a durable consumer's acknowledged position in one topic.
type ConsumerOffset struct {
	Consumer string
	Topic    string
	Epoch    string // the topic epoch the offset belongs to
	Offset   uint64 // everything up to and including Offset is acknowledged
	Updated  time.Time
}

// Errors a Store returns; implementations wrap them with %w.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("store: closed")
	// ErrTopicNotFound is returned for a topic that has no log.
	ErrTopicNotFound = errors.New("store: topic not found")
	// ErrTooLarge is returned for a record over the store's size limit.
	ErrTooLarge = errors.New("store: record too large")
	// ErrTooManyTopics is returned for an append or Ensure that would
	// create a topic beyond the store's bound on topics.
	ErrTooManyTopics = errors.New("store: too many topics")
)

// Store is the durable log the broker stands on.
//
// Contract:
//   - Offsets of a topic are assigned at append, start at 1 and have no gaps.
//   - Every method is safe for concurrent use.
//   - AppendAsync and CommitAsync never block for I/O: they queue the work and
//     return (they may wait briefly while the store's queue is full). done is
//     called exactly once, from a store goroutine and never from the caller's,
//     after the work is durable (fsync'd) or has failed. The store keeps a
//     reference to data until done: the caller must not change it.
//   - done and the commit hook must not block, and must not call AppendAsync,
//     CommitAsync, Append or Close (they may wait for the very goroutine
//     that runs them).
//   - The commit hook set with SetCommitHook sees every record that becomes
//     durable, whatever appended it, exactly once, in offset order per topic,
//     from the notifier goroutine, after the transaction is on disk and before
//     the done callbacks of that transaction. A record reported to the hook is
//     visible to Read. The hook may keep the records it is given.
//   - Read returns copies; the caller may keep them.
type Store interface {
	// AppendAsync appends data to topic's log, creating the log with a new
	// epoch when it does not exist. A non-empty key that was already stored
	// for the topic within the dedup window stores nothing: done gets the
	// first record's offset and Dup set.
	AppendAsync(topic string, data []byte, key string, done func(Appended, error))
	// Append is AppendAsync waiting for done or ctx.
	Append(ctx context.Context, topic string, data []byte, key string) (Appended, error)

	// Ensure creates topic's log with a new epoch when it does not exist
	// (durably, like an append) and returns its metadata.
	Ensure(ctx context.Context, topic string) (TopicInfo, error)

	// Read returns records of topic with offsets >= from in ascending order,
	// at most max records and about maxBytes of data (always at least one
	// record when one exists). It reads in one short read transaction.
	Read(topic string, from uint64, max, maxBytes int) ([]Record, error)
	// Topic returns a topic's metadata; ok is false when it has no log.
	Topic(topic string) (info TopicInfo, ok bool, err error)
	// OffsetAt returns the first retained offset of topic whose record
	// time is at or after ms (Head+1 when there is none), and the time of
	// the earliest retained record (0 when nothing is retained). A topic
	// without a log gives ErrTopicNotFound.
	OffsetAt(topic string, ms int64) (offset uint64, earliestTime int64, err error)
	// Topics lists topics in name order, starting after the name after
	// ("" for the first page), at most max of them.
	Topics(after string, max int) ([]TopicInfo, error)

	// CommitAsync stores consumer's acknowledged offset in topic for the
	// given epoch. A commit never moves an offset backwards within an epoch:
	// a lower offset is accepted and ignored. done gets the stored offset.
	// The store does not check the topic or the epoch: the caller does.
	CommitAsync(consumer, topic, epoch string, offset uint64, done func(ConsumerOffset, error))
	// Consumer returns consumer's stored position in topic; ok is false
	// when it has none.
	Consumer(consumer, topic string) (co ConsumerOffset, ok bool, err error)
	// Consumers lists consumer's stored positions, in topic order.
	Consumers(consumer string) ([]ConsumerOffset, error)

	// SetCommitHook installs fn as the commit hook (see the contract above).
	// It must be called before the first append.
	SetCommitHook(fn func(batch []Committed))
}

// Interested is implemented by a Store that must know which topics and
// patterns this node's subscribers want: a cluster subscribes to their
// live records committed on other nodes and hands them to the commit hook
// like local ones. Interest(x, true) returns once records of x committed
// elsewhere from then on will reach the hook. Calls come in pairs, one
// true and later one false for each, possibly interleaved for the same x:
// the implementation counts them.
type Interested interface {
	Interest(topicOrPattern string, on bool) error
}
