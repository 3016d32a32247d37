package main

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/brokerd/brokerd/internal/testscale"
)

// durableConsumer walks a topic as one durable consumer, a step at a time,
// each step on another live node: it subscribes, checks that delivery
// starts right after the position it last had acknowledged (an ack
// answered ok is durable on the topic's owner and its followers, so it
// must survive the owner's death), reads some messages, checks them
// against the acknowledged publishes, and acknowledges the last one.
type durableConsumer struct {
	c     *testCluster
	log   *ackLog
	topic string
	name  string
	epoch string
	node  int

	acked uint64 // the position whose ack was answered ok
	maybe uint64 // an ack whose answer did not come (unavailable, the connection lost): the position may be this
	steps int
	subID uint64
}

// step makes one step of up to n messages within timeout. It returns an
// error describing the first broken promise; a step that cannot find a
// node to serve it within the timeout is an error too.
func (d *durableConsumer) step(n int, timeout time.Duration) error {
	timeout = testscale.D(timeout)
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		d.node = (d.node + 1) % len(d.c.nodes)
		addr, ok := d.c.nodes[d.node].addr()
		if !ok {
			continue
		}
		done, err := d.stepOn(addr, n, time.Until(deadline))
		if done || err != nil && !errors.Is(err, errRetryStep) {
			if err == nil {
				d.steps++
			}
			return err
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("consumer %s: no step within %v: %v", d.name, timeout, last)
}

// errRetryStep marks a step to try again on another node: a node that
// answered unavailable, or a connection that ended.
var errRetryStep = errors.New("try another node")

func (d *durableConsumer) stepOn(addr string, n int, timeout time.Duration) (bool, error) {
	cl, err := dial(addr)
	if err != nil {
		return false, fmt.Errorf("%w: %v", errRetryStep, err)
	}
	defer cl.close()
	node := cl.welcome.Node
	d.subID++
	subID := d.subID
	cmd := `{"op":"sub","id":` + strconv.FormatUint(subID, 10) + `,"topic":` + strconv.Quote(d.topic) +
		`,"consumer":` + strconv.Quote(d.name) + `,"from":"earliest","epoch":` + strconv.Quote(d.epoch) + `,"max_inflight":` + strconv.Itoa(n) + `}`
	if err := cl.send(cmd); err != nil {
		return false, fmt.Errorf("%w: %v", errRetryStep, err)
	}
	// Where delivery may start: after the acknowledged position, or after
	// the one whose answer was lost.
	starts := []uint64{d.acked + 1}
	if d.maybe > d.acked {
		starts = append(starts, d.maybe+1)
	}
	deadline := time.Now().Add(timeout)
	var (
		next   uint64 // the next offset expected
		got    int
		ackID  uint64
		ackOff uint64 // the offset acknowledged: messages past it may come before the ack's ok, once the window opens
	)
	for {
		ev, err := cl.next(time.Until(deadline))
		if errors.Is(err, errClientClosed) {
			if ackID != 0 {
				d.maybe = ackOff // sent, its answer lost
			}
			return false, fmt.Errorf("%w: connection to %s ended: %v", errRetryStep, node, cl.closeError())
		}
		if err != nil {
			return false, fmt.Errorf("consumer %s on %s: %v (%d messages so far)", d.name, node, err, got)
		}
		switch {
		case ev.Op == "err" && ev.Code == "unavailable", ev.Op == "unsubbed" && ev.Code != "epoch_mismatch":
			if ackID != 0 && ev.ID == ackID {
				d.maybe = ackOff
			}
			return false, fmt.Errorf("%w: %s on %s", errRetryStep, ev, node)
		case ev.Op == "ok" && ev.ID == subID:
			if ev.Epoch != d.epoch {
				return false, fmt.Errorf("consumer %s on %s: sub answered %s, want epoch %s", d.name, node, ev, d.epoch)
			}
			if !containsOffset(starts, ev.From) {
				return false, fmt.Errorf("consumer %s on %s: starts at %d, its acknowledged position is %d (maybe %d): sub answered %s",
					d.name, node, ev.From, d.acked, d.maybe, ev)
			}
			next = ev.From
		case ev.Op == "msg" && ev.Topic == d.topic:
			if next == 0 || ev.Offset != next {
				return false, fmt.Errorf("consumer %s on %s: got offset %d, want %d", d.name, node, ev.Offset, next)
			}
			d.log.mu.Lock()
			want, acked := d.log.acked[d.topic][ev.Offset]
			d.log.mu.Unlock()
			if acked && !bytes.Equal(want, ev.Data) {
				return false, fmt.Errorf("consumer %s on %s: offset %d is %s, acknowledged %s", d.name, node, ev.Offset, ev.Data, want)
			}
			next++
			if got++; got == n {
				d.subID++
				ackID, ackOff = d.subID, ev.Offset
				cmd := `{"op":"ack","id":` + strconv.FormatUint(ackID, 10) + `,"topic":` + strconv.Quote(d.topic) +
					`,"consumer":` + strconv.Quote(d.name) + `,"offset":` + strconv.FormatUint(ev.Offset, 10) + `}`
				if err := cl.send(cmd); err != nil {
					d.maybe = ackOff
					return false, fmt.Errorf("%w: %v", errRetryStep, err)
				}
			}
		case ev.Op == "ok" && ackID != 0 && ev.ID == ackID:
			d.acked, d.maybe = ackOff, 0
			return true, nil
		default:
			return false, fmt.Errorf("consumer %s on %s: unexpected %s", d.name, node, ev)
		}
	}
}

func containsOffset(offs []uint64, off uint64) bool {
	for _, o := range offs {
		if o == off {
			return true
		}
	}
	return false
}
