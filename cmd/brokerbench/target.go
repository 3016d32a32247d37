package main

import (
	"context"
	"io"
)

// target is a broker under test, driven through its own client library.
type target interface {
	Name() string
	// Subscriber opens one connection subscribed to topic; fn receives the
	// data of each message, on one goroutine per subscriber. fromStart
	// reads the topic's stored history from the first message on.
	Subscriber(ctx context.Context, topic string, fromStart bool, fn func(data []byte)) (io.Closer, error)
	// Publisher opens one publishing connection with at most window
	// publishes in flight. durable asks for stored-and-acknowledged
	// publishes (brokerd always is; NATS uses JetStream then).
	Publisher(ctx context.Context, window int, durable bool) (publisher, error)
	// Idle opens a subscribed connection that holds no client-side state
	// beyond its socket.
	Idle(ctx context.Context, topic string) (io.Closer, error)
	// RSS returns the broker's resident memory, and whether it includes
	// this process's own (embedded broker).
	RSS() (rss int64, self bool, err error)
	// Prepare readies a topic for durable publishes (a JetStream stream).
	Prepare(ctx context.Context, topic string) error
	Close() error
}

// publisher publishes asynchronously. Publish blocks while the window is
// full; done is called once per publish, maybe on another goroutine.
type publisher interface {
	Publish(ctx context.Context, topic string, data []byte, done func(error)) error
	Close() error
}
