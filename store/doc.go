// Package store is the broker's durable log: a broker.Store on one bbolt
// file, dir/brokerd.db, with a write-ahead log in front of it, dir/wal,
// opened with Open.
//
// # Layout
//
// Top-level buckets of the bbolt file (format 4):
//
//	brokerd/format     "brokerd-store/4", written at creation; Open refuses
//	                   a file without it (ErrNotStore) or with another value
//	                   (ErrFormat), except "brokerd-store/3" (the same
//	                   layout without the write-ahead log), whose marker it
//	                   rewrites, and "brokerd-store/2" and
//	                   "brokerd-store/1", which it migrates (below)
//	brokerd/migrating  only while a migration is under way: the format it
//	                   started from
//	brokerd/walpos     the write-ahead log position the file holds
//	                   everything before (8 bytes, big-endian)
//	meta/<topic>       the topic's metadata: its id (from the bucket's
//	                   sequence, never reused), epoch (a random UUID chosen
//	                   when the log is created), earliest, the total of the
//	                   record before earliest, the head record's time and
//	                   the topic's own Retention (see encoding.go)
//	records/<id><off>  every topic's log in one bucket: the topic's 8-byte
//	                   big-endian id, then the 8-byte big-endian offset →
//	                   record (8-byte time in ms, uvarint total, uvarint key
//	                   length, key, data), so that a topic's records are one
//	                   run in offset order
//	consumers/<c><topic>  durable consumers: (2-byte length of the consumer
//	                   name, name, topic) → epoch, offset, updated time
//
// A record's total is the sum of the data bytes of it and of every earlier
// record of the topic. A topic's head, count and bytes are therefore not
// stored: they are read from its last record (head is its offset, count is
// head-earliest+1, bytes is its total minus the stored total before
// earliest; with no record, head is earliest-1). An append writes its record
// and nothing else, so a group commit dirties about one leaf page per topic
// it touches (fewer when topics share a leaf) plus the branch pages above
// them; the metadata is written only when a topic is created, trimmed,
// truncated, reset or given a retention. The records bucket fills its pages
// completely (appends land at the end of a topic's run).
//
// A topic's retained offsets are exactly earliest..head; count is
// head-earliest+1, and earliest is head+1 when nothing is retained. Record
// times never decrease within a topic (an append is stamped with the later of
// now and the head record's time, or the stored time when the log is empty),
// so the oldest records are also the first.
//
// Finding a topic's last record steps a cursor back from the start of the
// next topic's run. bbolt leaves a leaf page that deletions emptied in place
// until the transaction commits, and such a step stops there; so nothing is
// deleted from records before the last lookup of a transaction: retention
// collects what it removes and deletes it just before the commit, and the
// operations that delete otherwise (TruncateAfter, ResetTopic, DeleteTopic)
// run alone, looking their topic up first.
//
// # Write-ahead log
//
// Appends, AppendAt and Ensure do not write bbolt: each group commit of them is one
// entry appended to the current segment of the log, dir/wal/<position in
// 16 hex digits>.wal, and one fdatasync; only then are the appenders told
// ok. An entry is a 4-byte length, a CRC-32C of the length and payload, and
// the payload: the bbolt puts the batch makes (its records, the metadata of
// the topics it creates, the meta bucket's sequence for their ids). A
// position counts the bytes of all segments ever written; a segment is
// named by the position of its first byte and closed at 64 MiB, the next
// one beginning where it ends. The cost of a commit is one sequential write
// and one sync, however many topics it touches.
//
// The applier goroutine brings bbolt up to date: it takes the entries not
// yet applied (at most a quarter of Options.MaxTailBytes of them) into one
// synced bbolt transaction, which also stores the
// position after the last one in brokerd/walpos, when the oldest has waited
// 500 ms, when they hold a quarter of Options.MaxTailBytes, or at once when
// an operation waits for it. Then it removes the segments that end at or
// before that position. bbolt's transactions stay synced (large and rare,
// so cheap per record): a bbolt commit without fsync can be torn by a power
// cut, and the log cannot repair a torn B+tree.
//
// Until then, the tail (in memory) holds, for each topic with records not
// yet in bbolt, its state (id, epoch, head, total, last time) and those
// records. The committer takes a topic's state from the tail when it is
// there, else from a bbolt read transaction begun after the last topic
// left the tail; Read, Topic, Topics and OffsetAt read the tail first, then
// bbolt for what comes before the tail's records (a topic leaves the tail
// only once bbolt holds its records). The tail is bounded by
// Options.MaxTailBytes (default 64 MiB, counting each record's encoded key
// and value plus 128 bytes): when it is full the committer waits for the
// applier, its queue fills and appenders block (backpressure). When the
// applier fails (a full disk), it retries every second, and commits that
// would need room or a caught-up bbolt fail with its error meanwhile.
//
// Every other write works on bbolt directly, after waiting until the
// applier has caught up (the committer runs them, so nothing is logged
// meanwhile): consumer commits, retention, TruncateAfter, ResetTopic,
// DeleteTopic and SetRetention, and Check reads bbolt then. (AppendAt
// compares the records it is given with those of the batch, the tail or
// bbolt, whichever holds them.)
// They keep their exact meaning; each batch of them costs a bbolt commit
// of its own, as before the log. While such a write runs it holds
// DB.direct, which reads that combine the tail with bbolt hold shared, so
// that no read sees the tail from before it and bbolt from after it.
// RunRetention first waits until bbolt holds what was logged when it was
// called.
//
// Recovery: Open replays every intact entry after brokerd/walpos into
// bbolt, in synced transactions of about 32 MiB each storing the position
// it reached (a crash during the replay is replayed again from there); the
// first short entry, bad length or bad checksum ends the log (a write the
// crash cut: it was never acknowledged, since an append is acknowledged
// after its entry and every earlier one is synced). Then it removes every
// old segment and begins a new one at that position, so that a damaged
// entry never hides later ones. A missing segment in the middle is
// ErrCorrupt. Close lets the applier apply everything, so a cleanly closed
// store has nothing to replay.
//
// When an entry cannot be written (a full disk), the segment is cut back
// to where the entry began and the batch fails; later batches try again.
// When the cut fails, or fdatasync fails (the kernel may then have dropped
// the written pages), every later write fails until brokerd restarts and
// replays the log.
//
// # Migration
//
// Formats 1 and 2 kept each topic in a bucket of its own, topics/<topic>,
// holding m (metadata), l (offset → record without a total) and, in format
// 1, the idempotency key buckets k and x. Open migrates such a store before
// anything else, in transactions of at most 50,000 records and 32 MiB: each
// copies topics' records into records with their totals and their metadata
// into meta, then deletes the topics' old buckets (a long log takes several
// transactions). The first transaction writes the current format with
// brokerd/migrating, so that a brokerd of an earlier version refuses the
// store by its format name rather than read it half migrated; a crash
// midway leaves that marker, and the next Open resumes: a topic already in
// meta goes on after its last copied record. The last transaction deletes
// topics and brokerd/migrating. A migration reads and rewrites every
// record once; it logs its progress every 10 seconds. A brokerd that reads
// only formats 1 and 2 refuses a store of format 3 with ErrFormat: go back
// by restoring a copy of the data file taken before the upgrade.
//
// # Idempotency keys
//
// Idempotency keys are kept in memory, not on disk: each record stores its
// key, and the index is rebuilt from the logs when the store opens. One map
// holds (topic, key) → the key's entry in its topic's ring buffer, which
// holds the topic's keys in offset order, which is time order, with the
// first record's offset and time; a heap orders the topics by their oldest
// key. Every transaction first forgets the keys older than DedupWindow
// (RunRetention does too, for a store without appends); remembering a key
// first forgets the topic's oldest beyond DedupMaxKeys, then the oldest of
// all topics beyond DedupMaxKeysTotal. All of it is O(1) per key
// (O(log topics) when a topic's oldest key goes), and no key touches the
// bbolt file.
//
// Memory, measured by BenchmarkDedupKeyMemory with 36-byte UUID keys: about
// 140 bytes per key (the key's copy, 48 bytes; its slot in the map with the
// map's spare room; its 32-byte ring entry), up to about 170 just after the
// map or a ring grows; plus about 115 bytes per topic holding keys (its
// name, ring header, one slot in the topic map and in the heap; a topic's
// ring starts with room for one key and doubles). So about 140 bytes a key
// when topics hold many keys each, and about 260 when every key is alone in
// its topic, the worst case. The default DedupMaxKeysTotal of 1,000,000
// keys thus bounds the index at roughly 140–260 MB whatever the number of
// topics; it only grows that far with a million distinct keys within
// DedupWindow. (Before, a topic's own map and a ring of at least 16 entries
// made a key alone in its topic cost about 940 bytes.) Go's maps keep their
// room when entries go: the index builds its maps and heap again once they
// hold less than a quarter of their peak, so the memory of a burst of keys
// is given back as they expire (TestDedupKeyMemoryReleased).
//
// The index belongs to the committer goroutine: lookups and changes happen
// only in operations the committer runs (and in Open before it starts), so
// it takes no lock. Keys remembered by a transaction that then fails are
// forgotten again; keys forgotten to make room for them stay forgotten.
// TruncateAfter forgets the keys of the records it removes, ResetTopic and
// DeleteTopic all of the topic's keys; retention trimming forgets none, so a
// duplicate of a trimmed record still gets the first record's offset and
// time while the store stays open.
//
// When it opens, the store reads each topic's log backwards from the head
// until the records are older than DedupWindow, DedupMaxKeys keys are found
// or 8×DedupMaxKeys records are read, and remembers the newest record of
// each key, keeping the newest keys of all topics within DedupMaxKeysTotal.
// So after a restart, keys within the window are duplicates again, except
// those whose records retention already removed, and those beyond the scan
// bound in a topic with many more key-less records than keyed ones; those
// are forgotten.
//
// # Group commit
//
// Every write goes through one committer goroutine. AppendAsync, CommitAsync
// and Ensure queue an operation in a bounded queue (2×MaxBatchRecords) and
// return; when the queue is full they block until there is room, which is the
// store's backpressure. The committer takes whatever is queued, up to
// MaxBatchRecords records and MaxBatchBytes bytes, and applies it in one log
// entry (appends, AppendAt and Ensure) or one bbolt write transaction (the other
// writes, see above; a batch is one or the other); before committing it
// takes what queued in the meantime (callers acknowledged by the previous
// batch come back while this one is applied), and commits when nothing
// more is waiting, with one fdatasync of the log or fsync of bbolt. It
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
// the hook, and because topic state is read from the transaction (or from
// the tail, which takes a batch's state only once its log entry is synced)
// rather than cached, offsets stay gap-free.
//
// Retention (RunRetention, every RetentionInterval) queues small operations
// of at most 1,024 deletions per topic, grouped into bbolt transactions (at
// most MaxBatchRecords deletions and other direct writes in all); they
// never remove a record stored by the same transaction, so every record
// reported to the hook was readable when it was committed. TruncateAfter,
// ResetTopic, DeleteTopic, DeleteIdle and SetRetention run alone in a
// transaction of their own, in queue order with the appends around them.
// Check runs between transactions, once the applier has caught up, while
// no writer is active.
//
// A retention pass first finds the topics with work in read transactions
// of 256 topics: per topic it decodes the metadata (not the epoch) and seeks
// the oldest retained record, and the last one only when the oldest is not
// also the last. BenchmarkRetentionPass measures it: about 260 ns of CPU a
// topic of one record (300,000 topics: about 80 ms a pass, 0.16 s a minute
// at the default RetentionInterval of 30 s), against about 530 ns when
// every topic took two seeks and an allocated epoch.
//
// # Topics as a resource
//
// TopicCount is kept in memory: counted from meta when the store opens
// (after the log is replayed), raised once a batch that created topics is
// committed (logged or written to bbolt), lowered when DeleteTopic or
// DeleteIdle commits. With Options.MaxTopics, an append or Ensure that
// would create a topic beyond it fails with broker.ErrTooManyTopics and
// leaves the batch as it was (AppendAt is not bounded: it stores what
// another node created). A new topic's stored last time is its creation's.
// IdleTopics lists the topics that hold no record and whose last record, or
// creation, is older than a time (one seek a topic in bbolt; topics in the
// log's tail are skipped); DeleteIdle deletes those of a list that are
// still so, in one transaction of the committer once the applier has
// caught up, so that an append committed before it keeps its topic and one
// committed after creates a new log with a new epoch. The broker decides
// which idle topics may go (none with a subscriber).
//
// Reads (Read, Topic, Topics, Consumer, Consumers) are short bbolt read
// transactions on their own goroutines; Read copies at most one page of
// records. Check keeps every topic's id in memory while it runs (about 50
// bytes per topic); nothing else holds per-topic state for idle topics
// beyond the idempotency key index (the tail holds only topics with records
// not yet in bbolt, within MaxTailBytes). A large initial memory map (1 GiB
// of address space) keeps commits from remapping, which would wait for open
// read transactions.
//
// # Durability
//
// Append and CommitAsync report success only after the log entry or the
// bbolt transaction holding them is synced; after a crash, everything
// acknowledged is there (Open replays the log) and offsets are gap-free.
// bbolt runs without a synced freelist (NoFreelistSync) and rebuilds it
// when it opens, which costs a scan at start and saves writes on
// every commit. Options.NoSync gives up durability for tests and benchmarks
// (neither the log nor bbolt is synced).
//
// # Locks
//
// DB.mu (an RWMutex) guards the closed flag: queue senders and read
// transactions hold it shared, Close takes it exclusively once, so that
// nothing starts after Close. It is taken before any of bbolt's locks. A
// sender blocked on a full queue holds it shared; Close first closes the
// quitting channel, which releases such senders, then takes it. The
// committer is the only writer of the log, and it and the applier the only
// writers of bbolt (bbolt serializes them). The tail's mutex guards the
// tail and the list of segments; the committer and the applier wait on it
// for each other (the committer for room or for the applier to catch up,
// the applier for entries), never holding it during I/O. DB.direct is
// taken after DB.mu and before the tail's mutex and bbolt's locks. The hook
// and done callbacks run on the notifier and must not block or queue more
// work (they would wait for themselves when the queue is full).
package store
