package store

import (
	"errors"

	"github.com/brokerd/brokerd/broker"
)

// Errors of this package. The broker's sentinels (broker.ErrClosed,
// broker.ErrTopicNotFound, broker.ErrTooLarge) are returned as well, wrapped
// with %w where there is context to add; test all of them with errors.Is.
var (
	// ErrLocked is returned by Open when another process (or another DB in
	// this process) holds the data file.
	ErrLocked = errors.New("store: data file is locked")
	// ErrNotStore is returned by Open when the data file exists but is not a
	// brokerd store.
	ErrNotStore = errors.New("store: not a brokerd store")
	// ErrCorrupt is returned by Open and Check when the data file fails a
	// consistency check.
	ErrCorrupt = errors.New("store: data file is corrupted")
	// ErrFormat is returned by Open when the store was written in a format
	// this version does not read.
	ErrFormat = errors.New("store: unsupported store format")
	// ErrInvalidTopic is returned for an empty or over-long topic name.
	ErrInvalidTopic = errors.New("store: invalid topic name")
	// ErrInvalidConsumer is returned for an empty or over-long consumer name.
	ErrInvalidConsumer = errors.New("store: invalid consumer name")
	// ErrGap is returned by AppendAt when the records do not continue the
	// log exactly at head+1, or are not consecutive.
	ErrGap = errors.New("store: offsets leave a gap")
	// ErrConflict is returned by AppendAt when an offset is already stored
	// with different content.
	ErrConflict = errors.New("store: offset already stored with different content")
	// ErrEpochMismatch is returned by AppendAt when the topic's log has
	// another epoch.
	ErrEpochMismatch = errors.New("store: epoch mismatch")
)

// errClosed is what every method returns after Close.
var errClosed = broker.ErrClosed
