package cluster

import (
	"time"

	"github.com/brokerd/brokerd/broker"
)

// Replication, with Config.Replicas = R ≥ 2, or ReplicasAuto (R = 2 while
// another node is alive).
//
// Followers. The followers of a partition are the R-1 live nodes after
// the owner in the sorted list of live nodes rotated by the partition
// number (followersFor), recomputed at every lease pass, plus part.extra,
// a node the partition is being handed to for balance. A new follower is
// sent every record at once and brought up to date in the background
// (syncFollower: every topic, then every consumer position). A copy holds
// a contiguous run of the owner's log: a record past what it holds is
// answered "gap", and a copy that holds nothing yet starts only at the
// owner's first (or earliest retained) record, so catch-up streams the
// log from there in pages while live records wait for it. It is in
// sync once it holds every record acknowledged meanwhile, decided under
// rmu so that no acknowledgement slips past. Make before break: a
// follower no longer wanted stays until every new one is in sync.
//
// Acknowledgement. A topic's acknowledged offset (acked) is the highest
// offset that every follower in sync holds and at least R-1 followers
// hold: so a dead follower holds publishes up (they fail with
// ErrUnavailable) until its heartbeat expires and the next live node
// replaces it, and a new follower catching up holds up only the topics it
// is needed for. With ReplicasAuto only followers in sync count (wantOf):
// a new follower is sent the history up to the head it had when its copy
// began, then counts (part.counted) while it catches up with what came
// meanwhile, and is named once it holds every acknowledged record.
//
// Owner path. The local store's commit hook hands each batch of the
// partitions this node owns to replicate: the records go, one request per
// follower per batch (split to fit a NATS message), to
// brokerd.<cluster>.repl.<follower>, with the topic's epoch and the
// partition's term. A follower answers per topic with the offset it now
// holds durably, "gap at N" (the owner then sends from N, read from its
// local log in pages: catchUp), or "verify": its copy is not known to
// agree with this term's owner. When a topic's acknowledgements stall (a
// request or its answer lost, a batch dropped from a full queue), its
// followers in sync are sent what they have not confirmed again, from the
// log (resendLocked).
//
// Agreement. Logs of one epoch can differ only past some offset: records
// an owner committed and never had acknowledged, which a later owner
// replaced. Before a follower takes records of a term into a copy it
// already holds, the owner compares the copy's last record with its own
// and, when they differ, finds by binary search where the logs part; the
// follower drops what follows (agree). A copy verified in a term holds
// only that term's owner's records and is never cut by one of its probes
// (records sent after a probe can overtake it).
//
// Ordering. The records of a batch are on the owner's disk before they are
// sent, but they are neither handed to the broker's hook, nor published
// live to the other nodes, nor answered ok, before they are acknowledged:
// a subscriber never sees a record that a failover could lose. Deliveries
// (records, then the publishers' answers, as the store's contract wants)
// go through one queue read by replDeliverLoop, in the order the topics'
// acked offsets move, so each topic's records reach the hook in offset
// order. Read and Topic on the owner do not show records above acked
// either, so that a replay cannot get ahead of the live stream: from the
// commit on, not from the commit hook on (replCap, markBeforeAppend).
//
// A publish not acknowledged within RequestTimeout fails with
// ErrUnavailable, but its record stays in the owner's log and is
// replicated and delivered later: a publisher that retries with the same
// key gets the first offset back (dup).
//
// Failover. The lease names the followers in sync (part.listed): a
// follower is named only once in sync, and removed from the lease before
// acknowledgements stop waiting for it. A node named in a stale (or
// handed back) lease that last followed that very term takes it over
// keeping its data and epochs; the others leave it to such a node while
// one is alive (takeCase.decide). Fencing: a follower refuses records of
// a term lower than the highest it has seen (from the lease or from
// records), and a node refuses records of a partition it holds; since the
// new owner was one of the old owner's followers, an old owner can never
// have a record acknowledged again.
//
// Lost partitions. An owner that sees a later owner's term in the lease
// (it was cut off from NATS, or paused past its lease) cuts each topic it
// was replicating back to what it had acknowledged (dropUnacked): the
// rest was never answered ok nor delivered. A node whose copies of a
// partition are of an earlier term than the lease's, and which the lease
// does not name, asks the owner to check them (checkCopies, opAgree): the
// owner runs the agreement with it, so a node killed while it owned a
// partition drops the records it stored and never had acknowledged even
// when it does not follow the partition again.
//
// A new owner's lease names no follower until one is in sync with it
// (syncFollower sends a follower everything the owner's log holds, its
// records beyond what the old owner acknowledged included). Records past
// the old owner's acknowledged offset are served at once, and that is
// safe: if the new owner dies before naming a follower, nobody can keep
// the history and the partition starts a new epoch (visible to clients as
// epoch_mismatch, never a changed record at a seen offset). With R ≥ 3
// that makes a second failure inside that short window cost the history
// although another copy holds every acknowledged record.
//
// Not done: catch-up reads pages of at most 1000 records; followers apply
// one request at a time.

// Per-topic answers of a follower.
const (
	rsOK    byte = iota // off: the offset the follower holds durably up to
	rsGap               // off: the first offset the follower misses
	rsStale             // the term is older than one the follower has seen
	rsError
	rsVerify // the follower's copy is not known to agree with the owner's in this term: agree first
)

// replKind tells the entries of a replication request apart.
type replKind byte

const (
	kindRecords  replKind = iota // a run of records (base: it starts at the owner's earliest retained offset)
	kindProbe                    // no records: the owner's head, to compare with; with no topic, a probe of partition head
	kindAgree                    // no records: head is where the copies agree; the follower drops what follows and accepts records
	kindCheck                    // one record: does the follower hold the very same at its offset?
	kindConsumer                 // no records: consumer's position in topic is head
	kindCreate                   // no records: create the topic, empty, in epoch where the follower has no copy of that epoch; nothing else
)

// On the wire an entry's kind is a byte of flags (codec.go).
const (
	rfBase     byte = 1 << iota // kindRecords with base
	rfProbe                     // kindProbe; with rfAgree, kindAgree
	rfAgree                     //
	rfCheck                     // kindCheck
	rfConsumer                  // kindConsumer
	rfCreate                    // kindCreate
)

// replEntry is one topic's run of records in a replication request. An
// entry without topic is a probe of the partition head.
type replEntry struct {
	topic string
	term  uint64
	epoch string
	kind  replKind
	base  bool   // kindRecords: the run starts at the owner's earliest retained offset
	head  uint64 // kindProbe, kindAgree: the owner's head (or the partition); kindConsumer: the offset
	recs  []broker.Record

	consumer string // kindConsumer
}

type replResult struct {
	st  byte
	off uint64
	msg string
}

type replSend struct {
	node    string
	entries []replEntry
}

// replWait is a publisher's answer waiting for its record's copies.
type replWait struct {
	a        broker.Appended
	done     func(broker.Appended, error)
	deadline time.Time
}

// replDelivery is a topic's records acknowledged from..to (recs, or nil
// to read them from the log) and the answers to give after them.
type replDelivery struct {
	topic, epoch string
	from, to     uint64
	recs         []broker.Record
	waits        []replWait
}

// replTopic is the replication state of a topic this node owns. p, term
// and epoch do not change; the rest is guarded by Node.rmu.
type replTopic struct {
	p      int
	term   uint64
	epoch  string
	acked  uint64               // every follower holds the records up to here; delivered
	head   uint64               // the last offset committed locally
	recs   []broker.Record      // when held: the records acked+1..head
	held   bool                 // recs holds every record above acked
	conf   map[string]uint64    // follower → offset it confirmed
	confAt map[string]time.Time // follower → when its confirmed offset last moved
	waits  []replWait
	fetch  map[string]*bool // follower → catch-up running; true: a gap was reported meanwhile
	idle   time.Time        // when the last record was committed
	moved  time.Time        // when acked last moved (or the state was made)
	resent time.Time        // when the tick last sent unconfirmed records again
	bytes  int              // the size of recs
}

// replMark is the acknowledged offset of an owned topic without
// replication state: forgotten while idle, or not written to since the
// partition was taken. Reads of the owner stop there too.
type replMark struct {
	epoch string // "" when the topic had no log yet
	acked uint64
}

// of tells whether the mark is of history epoch.
func (m replMark) of(epoch string) bool { return m.epoch == epoch || m.epoch == "" }

// setConf records that follower f holds the records up to off.
func (rt *replTopic) setConf(f string, off uint64) {
	if off > rt.conf[f] {
		rt.conf[f] = off
		if rt.confAt == nil {
			rt.confAt = map[string]time.Time{}
		}
		rt.confAt[f] = time.Now()
	}
}

// maxHeldRecords and maxHeldBytes bound the records of a topic kept in
// memory while they wait for their copies; past them they are read back
// from the log.
const (
	maxHeldRecords = 1 << 14
	maxHeldBytes   = 8 << 20
)

func (n *Node) replSubject(node string) string { return n.prefix + "repl." + node }
