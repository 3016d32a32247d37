// The brokerd.v1.json protocol's error and close codes.
//
// Generated from the server's tables; a test of the Go module fails when
// this file and those tables disagree. To regenerate, from the repository
// root: go test ./clients/js -run TestCodes -update

/**
 * The error codes of err events and unsubbed events, each with its
 * description, in the protocol's order.
 */
export const ErrorCodes = Object.freeze({
  bad_request: "The command is malformed: not a JSON object, a missing, unknown, duplicate or mistyped field, or a value out of range. The message names the field.",
  unknown_op: "The op is not a command of this protocol version.",
  invalid_topic: "The topic is not a valid name (1-255 bytes of [A-Za-z0-9_-] segments joined by '.') or pattern, or is a pattern where pub and ack need a topic.",
  unauthorized: "The connection is not authenticated (only auth and ping are allowed before), or the token of an auth is invalid; on a live connection the old token stays in force.",
  forbidden: "The token does not allow this pub, sub or ack. As an unsubbed code: a new token no longer allows the subscription.",
  offset_out_of_range: "The offset is outside the topic's log: from older than the earliest retained offset (without if_gone \"earliest\") or beyond the head, or an ack beyond the head. The err carries earliest and latest. As an unsubbed code: retention removed messages a lagging subscription had not received yet; subscribe again (with if_gone \"earliest\" to accept the hole).",
  epoch_mismatch: "The epoch of the sub (or of the consumer's acked offset) is not the topic's current epoch: its history was reset. The err carries epoch, earliest and latest. As an unsubbed code: the topic's history was reset under a live subscription; subscribe again to learn the new epoch.",
  not_subscribed: "An unsub for a topic or pattern this connection is not subscribed to.",
  already_subscribed: "A sub for a topic or pattern this connection is already subscribed to.",
  too_many_subscriptions: "The connection holds as many subscriptions as it may.",
  message_too_large: "The data of a pub is larger than the broker accepts.",
  rate_limited: "The connection sends commands faster than it may; retry later.",
  unavailable: "The broker cannot serve the command now (shutting down, storage or cluster unavailable); retry later. A pub that got it may or may not be stored: retry it with the same key.",
  internal: "An unexpected error in the broker. As an unsubbed code: the subscription could not continue.",
  taken_over: "Unsubbed only: a newer sub for the same durable consumer and topic took the subscription over.",
  slow: "Unsubbed only, from servers before v1.1: a live-only pattern subscription fell too far behind and was ended. A v1.1 server feeds slow pattern subscriptions from the topic logs instead.",
  topic_deleted: "Unsubbed only: the topic was deleted.",
  not_found: "HTTP API only: the topic has no log.",
  too_many_topics: "A pattern sub would replay more topics (topics it has a position for, or that hold messages at or after since) than the broker allows (--max-pattern-topics): narrow the pattern, or resume with fewer positions. Or a pub or sub would create a topic while the broker holds as many as it may (--max-topics).",
});

/** The WebSocket close codes the server uses, by number, with their names. */
export const CloseCodes = Object.freeze({
  1000: "normal",
  1001: "going_away",
  1002: "protocol_error",
  1003: "unsupported_data",
  1007: "invalid_data",
  1008: "policy_violation",
  1009: "too_big",
  1011: "internal_error",
  1013: "try_again_later",
  4001: "unauthorized",
  4003: "token_expired",
  4008: "slow_consumer",
  4029: "rate_limited",
});
