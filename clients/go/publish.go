package client

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"

	"github.com/brokerd/brokerd/subproto"
	"github.com/google/uuid"
)

// Result is the broker's answer to a publish.
type Result struct {
	Topic  string
	Offset uint64 // where the message is stored
	// Dup reports that the broker had already stored a message with the
	// same idempotency key: Offset is that message's.
	Dup bool
}

// PubOption configures one publish.
type PubOption func(*call)

// WithKey sets the publish's idempotency key (1 to 255 bytes of visible
// ASCII). Without it the client generates a random UUID. A second publish
// with the same key to the same topic, within the broker's dedup window,
// is not stored again and reports Dup.
func WithKey(key string) PubOption { return func(cl *call) { cl.key = key } }

// newPub checks and copies a publish.
func newPub(topic string, data []byte, opts []PubOption) (*call, error) {
	if !subproto.ValidTopic(topic) {
		return nil, &Error{Code: CodeInvalidTopic, Message: "invalid topic " + strconv.Quote(topic)}
	}
	if len(data) == 0 {
		data = []byte("null")
	} else if !json.Valid(data) {
		return nil, &Error{Code: CodeBadRequest, Message: "data is not a valid JSON value"}
	}
	var d []byte
	if bytes.IndexByte(data, '\n') >= 0 {
		// A command is one line: newlines in data are whitespace between
		// JSON tokens (a string cannot hold a raw one), so compacting
		// keeps the value.
		var b bytes.Buffer
		_ = json.Compact(&b, data)
		d = b.Bytes()
	} else {
		d = bytes.Clone(data)
	}
	cl := &call{kind: kPub, retry: true, topic: topic, data: d}
	for _, o := range opts {
		o(cl)
	}
	if cl.key == "" {
		cl.key = newKey()
	} else if !validKey(cl.key) {
		return nil, &Error{Code: CodeBadRequest, Message: "the idempotency key must be 1 to 255 bytes of visible ASCII"}
	}
	return cl, nil
}

func validKey(k string) bool {
	if len(k) == 0 || len(k) > subproto.MaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// acquire takes a publish window token.
func (c *Client) acquire(ctx context.Context, cl *call) error {
	select {
	case c.window <- struct{}{}:
		cl.win = c.window
		return nil
	default:
	}
	select {
	case c.window <- struct{}{}:
		cl.win = c.window
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.quit:
		return c.Err()
	}
}

// Publish appends data (a JSON value; empty means null) to topic and
// returns once the broker has stored it durably. It copies data. When the
// connection drops before the answer, the publish is sent again, with the
// same idempotency key, once the client has reconnected; Publish keeps
// waiting until ctx ends. When ctx ends first, the publish may or may not
// have been stored.
func (c *Client) Publish(ctx context.Context, topic string, data []byte, opts ...PubOption) (Result, error) {
	cl, err := newPub(topic, data, opts)
	if err != nil {
		return Result{}, err
	}
	if err := c.acquire(ctx, cl); err != nil {
		return Result{}, err
	}
	ev, err := c.wait(ctx, cl)
	if err != nil {
		return Result{}, err
	}
	return Result{Topic: topic, Offset: ev.Offset, Dup: ev.Dup}, nil
}

// PublishAsync queues a publish and returns; done is called with the
// broker's answer once it arrives (or with ErrClosed when the client
// closes first). PublishAsync blocks while the publish window is full,
// until ctx ends. Publishes are sent in the order of the PublishAsync
// calls, and sent again with the same key after a reconnect; an answer
// of unavailable is retried too. done runs on the connection's reader:
// it must be quick and must not wait for another reply of this Client.
func (c *Client) PublishAsync(ctx context.Context, topic string, data []byte, done func(Result, error), opts ...PubOption) error {
	cl, err := newPub(topic, data, opts)
	if err != nil {
		return err
	}
	if err := c.acquire(ctx, cl); err != nil {
		return err
	}
	cl.done = func(ev *event, err error) {
		if done == nil {
			return
		}
		if err != nil {
			done(Result{}, err)
			return
		}
		done(Result{Topic: topic, Offset: ev.Offset, Dup: ev.Dup}, nil)
	}
	return c.start(cl)
}

// newKey returns a fresh idempotency key: a time-ordered UUID (version 7),
// so that the keys the broker indexes arrive in nearly ascending order
// and land at the end of its index instead of all over it.
func newKey() string {
	if u, err := uuid.NewV7(); err == nil {
		return u.String()
	}
	return uuid.NewString()
}
