// Package store is the broker's durable log: a broker.Store on one bbolt
// file, dir/brokerd.db, opened with Open.
//
// # Layout
//
// Top-level buckets of the bbolt file:
//
//	brokerd/format             "brokerd-store/1", written at creation; Open
//	                           refuses a file without it (ErrNotStore) or
//	                           with another value (ErrFormat)
//	topics/<topic>/m           the topic's metadata: epoch (a random UUID
//	                           chosen when the log is created), earliest,
//	                           head, count, bytes, idempotency key count, the
//	                           head record's time and the topic's own
//	                           Retention (see encoding.go)
//	topics/<topic>/l/<offset>  the log: 8-byte big-endian offset → record
//	                           (8-byte time in ms, uvarint key length, key,
//	                           data)
//	topics/<topic>/k/<key>     idempotency keys: key → first record's offset
//	                           and time
//	topics/<topic>/x/<offset>  the keys' expiry index: offset → key, oldest
//	                           first
//	consumers/<c><topic>       durable consumers: (2-byte length of the
//	                           consumer name, name, topic) → epoch, offset,
//	                           updated time
//
// A topic's retained offsets are exactly earliest..head; count is
// head-earliest+1, and earliest is head+1 when nothing is retained. Record
// times never decrease within a topic (an append is stamped with the later of
// now and the head record's time), so the oldest records are also the first.
//
// # Group commit
//
// Every write goes through one committer goroutine. AppendAsync, CommitAsync
// and Ensure queue an operation in a bounded queue (2×MaxBatchRecords) and
// return; when the queue is full they block until there is room, which is the
// store's backpressure. The committer takes whatever is queued, up to
// MaxBatchRecords records and MaxBatchBytes bytes, and applies it in one bbolt
// write transaction; before committing it takes what queued in the meantime
// (callers acknowledged by the previous batch come back while this one is
// applied), and commits when nothing more is waiting, with one fsync. It
// never waits for work to arrive: a lone append is committed at once, and
// what queues during a commit forms the next batch. A committed batch goes to
// the notifier goroutine through a bounded channel, in order; the notifier
// calls the commit hook with the batch's records, grouped per topic in
// ascending offset order, then each operation's done callback. While it does,
// the committer already builds and commits the next batch.
//
// An operation that fails validation (a gap, a conflict, a wrong epoch) gets
// its own error and leaves the transaction as it was. When the transaction
// itself fails, every operation in it gets the error, nothing is reported to
// the hook, and because topic state is read from the transaction rather than
// cached, offsets stay gap-free.
//
// Retention (RunRetention, every RetentionInterval) queues small operations
// of at most 1,024 deletions per topic that share the appends' transactions
// (at most MaxBatchRecords deletions and appends in all); they never remove a
// record stored by the same transaction, so every record reported to the
// hook was readable when it was committed. TruncateAfter, ResetTopic, DeleteTopic and
// SetRetention run alone in a transaction of their own, in queue order with
// the appends around them. Check runs between transactions, while no writer
// is active.
//
// Reads (Read, Topic, Topics, Consumer, Consumers) are short bbolt read
// transactions on their own goroutines; Read copies at most one page of
// records. A large initial memory map (1 GiB of address space) keeps commits
// from remapping, which would wait for open read transactions.
//
// # Durability
//
// Append and CommitAsync report success only after the transaction is
// fsync'd; after a crash, everything acknowledged is there and offsets are
// gap-free. bbolt runs without a synced freelist (NoFreelistSync) and
// rebuilds it when it opens, which costs a scan at start and saves writes on
// every commit. Options.NoSync gives up durability for tests and benchmarks.
//
// # Locks
//
// DB.mu (an RWMutex) guards the closed flag: queue senders and read
// transactions hold it shared, Close takes it exclusively once, so that
// nothing starts after Close. It is taken before any of bbolt's locks. A
// sender blocked on a full queue holds it shared; Close first closes the
// quitting channel, which releases such senders, then takes it. The committer is the only
// writer; the hook and done callbacks run on the notifier and must not block
// or queue more work (they would wait for themselves when the queue is full).
package store
