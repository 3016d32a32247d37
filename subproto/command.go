package subproto

// Subprotocol is the WebSocket subprotocol this package implements. The
// client offers it in Sec-WebSocket-Protocol and the server echoes it.
const Subprotocol = "brokerd.v1.json"

// Limits enforced by the decoder. They are part of the protocol: a client
// that stays within them is never refused by a server speaking [Subprotocol].
const (
	// MaxTopicLen is the longest topic name or pattern, in bytes.
	MaxTopicLen = 255
	// MaxKeyLen is the longest idempotency key of a pub, in bytes.
	MaxKeyLen = 255
	// MaxConsumerLen is the longest durable consumer name, in bytes.
	MaxConsumerLen = 255
	// MaxEpochLen is the longest epoch a sub may name, in bytes.
	MaxEpochLen = 255
	// MaxInflightLimit is the largest max_inflight a sub may ask for.
	MaxInflightLimit = 10000
	// MaxLast is the largest last a sub may ask for.
	MaxLast = 10000
	// MaxPositions is the most topics the positions of one pattern sub
	// may name (the frame size limit usually binds first; a broker bounds
	// them further with its max pattern topics).
	MaxPositions = 100000
	// MaxDepth is how deeply arrays and objects may nest inside one field
	// value (data): "data":[[1]] has depth 2. The command object itself is
	// not counted. Deeper values are still validated in full, in linear
	// time, and the command is refused with bad_request.
	MaxDepth = 128
	// MaxInteger is the largest integer the protocol carries (2^53-1, the
	// largest integer a JavaScript number holds exactly). It bounds id,
	// from, offset and max_inflight.
	MaxInteger = 1<<53 - 1
	// MaxPresenceInfo is the largest presence_info of a sub, in bytes of
	// JSON as sent.
	MaxPresenceInfo = 1024
)

// Features of protocol v1.1 a server lists in welcome. A client checks
// them instead of the version string.
const (
	FeatureLast          = "last"           // sub with last
	FeatureSince         = "since"          // sub with since, HTTP ?since
	FeaturePatternReplay = "pattern_replay" // pattern sub with since and positions, the topic event
	FeatureAckEpoch      = "ack_epoch"      // ack with epoch
	FeaturePresence      = "presence"       // sub with presence, the presence command, join, leave and presence_muted
)

// Op names a command (client to server) or an event (server to client).
type Op string

// Commands, sent by clients.
const (
	OpAuth  Op = "auth"  // authenticate, or replace the token of a live connection
	OpSub   Op = "sub"   // subscribe to a topic or pattern
	OpUnsub Op = "unsub" // end a subscription
	OpPub   Op = "pub"   // append to a topic
	OpAck   Op = "ack"   // acknowledge a durable consumer's progress
	OpPing  Op = "ping"  // ask for a pong
	// OpPresence lists a topic's presence (v1.1).
	OpPresence Op = "presence"
)

// Events, sent by the server.
const (
	OpWelcome  Op = "welcome"  // first event of every connection
	OpMsg      Op = "msg"      // a message of a subscribed topic
	OpOK       Op = "ok"       // success reply to a command with an id
	OpErr      Op = "err"      // failure reply to a command
	OpPong     Op = "pong"     // reply to ping
	OpUnsubbed Op = "unsubbed" // the server ended a subscription
	OpTopic    Op = "topic"    // a pattern subscription's first delivery of a topic, or why it stopped (v1.1)
	// Presence events (v1.1): a member joined or left a topic's presence,
	// or the topic stopped sending them.
	OpJoin          Op = "join"
	OpLeave         Op = "leave"
	OpPresenceMuted Op = "presence_muted"
)

// IsCommand reports whether o is a command a client may send.
func (o Op) IsCommand() bool {
	switch o {
	case OpAuth, OpSub, OpUnsub, OpPub, OpAck, OpPing, OpPresence:
		return true
	}
	return false
}

// IsEvent reports whether o is an event the server sends.
func (o Op) IsEvent() bool {
	switch o {
	case OpWelcome, OpMsg, OpOK, OpErr, OpPong, OpUnsubbed, OpTopic, OpJoin, OpLeave, OpPresenceMuted:
		return true
	}
	return false
}

// FromKind says where a subscription starts.
type FromKind uint8

// The kinds of [From].
const (
	// FromDefault: the sub had no from. The broker treats it as
	// FromLatest, except that a durable consumer with an acked offset
	// resumes after it.
	FromDefault FromKind = iota
	// FromLatest: "from":"latest", only messages appended after the ok.
	FromLatest
	// FromEarliest: "from":"earliest", the earliest retained message.
	FromEarliest
	// FromOffset: "from":N, from offset N inclusive.
	FromOffset
)

// String returns the wire form of k ("" for FromDefault, "offset" for
// FromOffset).
func (k FromKind) String() string {
	switch k {
	case FromLatest:
		return "latest"
	case FromEarliest:
		return "earliest"
	case FromOffset:
		return "offset"
	}
	return ""
}

// From is the starting point of a subscription.
type From struct {
	Kind   FromKind
	Offset uint64 // FromOffset only: 1 ≤ Offset ≤ MaxInteger
}

// Command is one decoded client command. Data aliases the frame buffer
// (it is valid until the caller reuses the frame); every other field is
// owned by the Command. Fields a command does not carry are zero.
type Command struct {
	Op Op
	// ID is the client's id for the reply, 0 when the command has none.
	// Ids are integers from 1 to MaxInteger.
	ID uint64
	// Topic is the topic (pub, ack) or the topic or pattern (sub, unsub).
	Topic string
	// Pattern reports that Topic holds '*' or '>' (sub and unsub only;
	// pub and ack refuse patterns).
	Pattern bool
	// Data is the pub's data: the raw JSON value, byte for byte as it
	// appeared in the frame, without surrounding whitespace. JSON null is
	// the 4 bytes "null", never nil.
	Data []byte
	// Key is the pub's idempotency key: 1 to MaxKeyLen bytes of visible
	// ASCII (0x21 to 0x7E), "" when absent.
	Key string
	// From is where a sub starts.
	From From
	// Epoch is the epoch a sub expects, or the epoch of the offset an
	// ack acknowledges; "" when absent.
	Epoch string
	// IfGone is "earliest" or "" (sub).
	IfGone string
	// Consumer is the durable consumer name (sub, ack): 1 to
	// MaxConsumerLen bytes of [A-Za-z0-9_.-], "" when absent.
	Consumer string
	// MaxInflight bounds a durable consumer's unacked messages (sub with a
	// consumer), 0 for the broker's default.
	MaxInflight int
	// Last asks a sub to start this many messages before the next
	// offset (1 to MaxLast), 0 when absent.
	Last int
	// Since asks a sub to start at the first message stored at or after
	// this time (ms since the Unix epoch, 0 to MaxInteger); HasSince says
	// whether the sub carried it. At most one of From, Last and Since is
	// set.
	Since    int64
	HasSince bool
	// Positions are where a pattern sub resumes topics that match it, in
	// the order given, each topic once; nil when absent.
	Positions []Position
	// Offset is the acknowledged offset (ack), 1 to MaxInteger.
	Offset uint64
	// Token is the token of an auth (never empty).
	Token string
	// Presence makes a sub of a topic a member of the topic's presence;
	// PresenceInfo is its presence_info, the raw JSON value as sent (at
	// most MaxPresenceInfo bytes, aliasing the frame like Data), nil when
	// absent.
	Presence     bool
	PresenceInfo []byte
}
