// Package subproto is the brokerd.v1.json WebSocket subprotocol: command
// and event types, strict decoding of commands, encoding of events, error
// codes, close codes and topic rules. It does no I/O.
//
// # Framing
//
// A text frame carries one or more JSON objects separated by '\n'; every
// object has a string field "op". Clients send commands (auth, sub, unsub,
// pub, ack, ping); the server sends events (welcome, msg, ok, err, pong,
// unsubbed). A command with an "id" (an integer from 1 to 2^53-1) gets
// exactly one reply echoing it: ok or err (pong or err for ping).
//
// # Decoding
//
// [DecodeFrame] splits a frame into lines and decodes each with the rules
// of [Decode]: a single pass over the bytes, without reflection, maps or
// recursion, that validates the whole line as JSON (RFC 8259 grammar and
// UTF-8 of strings) and records where each known member is. The rules:
//
//   - A line holding only spaces, tabs and '\r' is skipped; a command must
//     fit on one line. A frame with more than the caller's limit of
//     commands closes the connection with 1009 before any is decoded.
//   - Invalid JSON or invalid UTF-8 closes the connection with 1007; the
//     commands on earlier lines of the frame have been decoded already.
//   - Valid JSON that is not a valid command gets an err for that command
//     alone, with its id when the id is valid, and decoding goes on. The
//     checks run in a fixed order: a JSON object with a string "op"
//     (bad_request), a known op (unknown_op), a valid id, no unknown and no
//     duplicate member names (member names are compared after unescaping,
//     and case-sensitively), nesting of at most [MaxDepth] levels, only
//     the fields of that op, every required field, then each value:
//     topics (invalid_topic), then the other fields in the order of the
//     op's table (bad_request).
//   - Integers (id, from, offset, max_inflight) are JSON integers from 1
//     to [MaxInteger]: "1", 1.0, 1e3, 0, -1 and null are refused.
//   - pub: topic and data are required, key optional. data is any JSON
//     value, null included, kept byte for byte as a slice of the frame.
//     The topic must be a name, not a pattern. key is 1 to [MaxKeyLen]
//     bytes of visible ASCII (the same rule as the HTTP Idempotency-Key
//     header).
//   - sub: topic (a name or pattern) is required. from is an offset,
//     "earliest" or "latest"; last is 1 to [MaxLast]; since is 0 to
//     [MaxInteger] (at most one of from, last, since); epoch is 1 to
//     [MaxEpochLen] bytes; if_gone is "earliest"; consumer is 1 to
//     [MaxConsumerLen] bytes of [A-Za-z0-9_.-]; max_inflight is 1 to
//     [MaxInflightLimit] and needs a consumer. A pattern takes only since,
//     if_gone and positions (topics matching it, each once, mapped to
//     {"from":N,"epoch":"…"}, at most [MaxPositions]).
//   - unsub: topic (a name or pattern). ack: topic (a name), consumer,
//     offset and an optional epoch. auth: a non-empty token. ping: nothing
//     but op and id.
//   - Strings are unescaped; a \u escape of a lone surrogate is refused in
//     every string the decoder returns (it has no UTF-8 form). Inside data
//     nothing is changed.
//
// # Encoding
//
// The Append functions ([AppendMsg], [AppendOK], [AppendErr], ...) append
// one event to a byte slice and allocate only to grow it, so that a msg is
// encoded once and its bytes shared by every subscriber. [AppendCommand]
// encodes commands, for clients.
//
// # Topics
//
// A topic name is 1 to 255 bytes of [A-Za-z0-9_-] segments joined by '.'.
// A pattern may use '*' for exactly one segment and '>' as its last
// segment for one or more trailing segments. See [ValidTopic],
// [ValidPattern] and [Match].
//
// # Errors
//
// Error codes are the one table returned by [Codes]; close codes are the
// [CloseCode] constants, and [CloseReason] builds the JSON close reason.
package subproto
