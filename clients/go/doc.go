// Package client is the Go client of brokerd, the WebSocket pub/sub broker.
//
// It is a module of its own, github.com/brokerd/brokerd/clients/go, whose
// only requirements are the protocol package (github.com/brokerd/brokerd/subproto,
// no dependencies), a WebSocket library and a UUID library: an application
// importing it does not inherit the server's dependencies.
//
//	go get github.com/brokerd/brokerd/clients/go
//
// and import it as
//
//	import client "github.com/brokerd/brokerd/clients/go"
//
// A [Client] holds one WebSocket connection (subprotocol brokerd.v1.json)
// and keeps it alive: when the connection drops it reconnects with
// exponential backoff and full jitter (waiting at least the retry_after_ms
// a 1001, 1013 or 4029 close asks for), resumes every subscription from
// the offset after the last message it delivered, in the same epoch, and
// sends again every publish and ack that had no reply yet.
//
// # Publishing
//
// [Client.Publish] returns once the broker has stored the message durably
// (its ok carries the offset). [Client.PublishAsync] pipelines: it returns
// as soon as the publish is queued and calls back when the reply arrives;
// at most the publish window (see [WithPublishWindow]) of publishes are in
// flight, and PublishAsync blocks while the window is full. Every publish
// carries an idempotency key — a random UUID unless [WithKey] gives one — so
// a publish that was in flight when the connection dropped is sent again
// with the same key and stored once.
//
// # Subscribing
//
// [Client.Subscribe] returns once the broker has accepted the subscription.
// The handler runs on a goroutine of the subscription, one message at a
// time, in offset order, with no gap and no duplicate across reconnects
// (durable consumers excepted: unacknowledged messages come again, as the
// protocol says). Messages of one subscription are buffered up to a bound;
// past it the client stops reading the connection, which the broker
// answers by feeding the subscription from its log: nothing is lost and
// memory stays bounded. A handler should therefore not wait for the reply
// of a command on the same Client (Publish, Ack, Subscribe): once the
// buffer is full that reply cannot be read. Use PublishAsync, or another
// goroutine.
//
// # Presence
//
// A topic subscription with [SubOptions].Presence is a member of the
// topic's presence while it lasts, on every node of a cluster (protocol
// v1.1, feature "presence"). Its OnJoin and OnLeave get the other members
// as they join and leave ([Member]: session, user, node and the
// PresenceInfo they gave), on the subscription's goroutine like its
// messages; OnPresenceMuted says once that the topic has more than 1,000
// members and sends no more of them. A new member is not told of the
// members already there: [Client.Presence] lists at most 1,000 of them
// and counts them all. A member leaves when its subscription ends or its
// connection closes; after a reconnect the subscription joins again as
// the new session. On a broker without the feature, Subscribe with
// Presence and Client.Presence fail with [ErrUnsupported].
//
// # Errors
//
// Errors the broker answers are [*Error] values carrying the protocol's
// code; compare them with errors.Is against the sentinels ([ErrForbidden],
// [ErrEpochMismatch], ...). A connection the broker closed is described by
// a [*CloseError]. After [Client.Close], calls return [ErrClosed].
package client
