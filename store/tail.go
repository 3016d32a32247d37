package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

// DefaultMaxTailBytes bounds the memory of records logged but not yet in
// bbolt (see Options.MaxTailBytes).
const DefaultMaxTailBytes = 64 << 20

// The applier lets the log run ahead of bbolt until applyDelay has passed
// since the oldest entry it has not applied, until the tail holds a quarter
// of MaxTailBytes, or until an operation waits for it: large transactions
// are cheap per record, and fewer of them leave the disk's syncs to the
// log. One transaction takes at most a quarter of MaxTailBytes of entries.
const applyDelay = 500 * time.Millisecond

// tailRecOverhead is what the tail counts per record beyond its encoded
// key and value: its broker.Record and its put.
const tailRecOverhead = 128

// tail holds what the log has and bbolt does not have yet: the topics whose
// latest state is only in the log, with their records not yet applied, and
// the entries the applier has still to apply. Its mutex also guards the
// list of log segments.
type tail struct {
	mu      chanCond
	topics  map[string]*tailTopic
	pending []*walBatch // logged, not yet taken by the applier, in log order
	busy    int         // batches the applier is applying
	bytes   int64       // memory of pending and busy batches
	gen     uint64      // bumped by every applier transaction, before it drops records
	created int         // tail topics created by the log (maybe not in bbolt yet)
	applied uint64      // the log position bbolt covers
	end     uint64      // the log position after the last entry logged
	segs    []uint64    // bases of the log segments, ascending
	done    bool        // the committer has stopped: apply what is left and stop
	dead    error       // the applier gave up (set at Close after a failure)
	failing error       // the applier's last attempt failed; nil once one succeeds
	urgent  int         // operations waiting for the applier
}

// tailTopic is a topic whose latest state is in the log.
type tailTopic struct {
	m       meta            // its state after its last logged record
	recs    []broker.Record // records not yet in bbolt, consecutive offsets
	last    uint64          // end position of its last log entry
	created bool            // created by the log: bbolt may not have it yet
}

// walBatch is one log entry on its way to bbolt.
type walBatch struct {
	puts   []walPut
	end    uint64
	bytes  int64
	at     time.Time      // when it was logged
	counts map[string]int // records per topic
	topics []string       // every topic the entry touched
}

// chanCond is a mutex with a broadcast that waiters can also leave when a
// channel closes.
type chanCond struct {
	ch chan struct{} // held: a token in it means unlocked
	wk chan struct{} // closed and replaced by broadcast
}

func (c *chanCond) init() {
	c.ch, c.wk = make(chan struct{}, 1), make(chan struct{})
	c.ch <- struct{}{}
}

func (c *chanCond) Lock()   { <-c.ch }
func (c *chanCond) Unlock() { c.ch <- struct{}{} }

// broadcast wakes every waiter; the caller holds the lock.
func (c *chanCond) broadcast() {
	close(c.wk)
	c.wk = make(chan struct{})
}

// wait releases the lock until a broadcast, until quit closes or until
// timer fires (either may be nil), then takes it again; it reports whether
// quit closed. The caller holds the lock.
func (c *chanCond) wait(quit <-chan struct{}, timer <-chan time.Time) (quitting bool) {
	wk := c.wk
	c.Unlock()
	select {
	case <-wk:
	case <-timer:
	case <-quit:
		quitting = true
	}
	c.Lock()
	return quitting
}

// tailState returns the state of topic held in the tail, if any, with its
// records not yet in bbolt (the caller must not modify them).
func (db *DB) tailState(topic string) (tt tailTopic, ok bool) {
	db.tail.mu.Lock()
	defer db.tail.mu.Unlock()
	if p := db.tail.topics[topic]; p != nil {
		return *p, true
	}
	return tt, false
}

// logged reports to the tail a batch the log now holds durably: the
// topics' new state and records, and the entry for the applier.
func (db *DB) logged(b *batch, end uint64) {
	wb := &walBatch{puts: b.puts, end: end, at: time.Now(), counts: make(map[string]int, len(b.order))}
	wb.bytes = int64(len(b.puts) * 16)
	for i := range b.puts {
		wb.bytes += int64(len(b.puts[i].k) + len(b.puts[i].v))
	}
	wb.bytes += int64(len(b.recs) * tailRecOverhead)
	tl := &db.tail
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for _, t := range b.order {
		tt := tl.topics[t.name]
		if tt == nil {
			tt = &tailTopic{created: t.created}
			if t.created {
				tl.created++
			}
			tl.topics[t.name] = tt
		}
		tt.m, tt.last = t.m, end
		wb.topics = append(wb.topics, t.name)
	}
	for _, p := range b.recs {
		tt := tl.topics[p.t.name]
		tt.recs = append(tt.recs, p.rec)
		wb.counts[p.t.name]++
	}
	tl.pending = append(tl.pending, wb)
	tl.bytes += wb.bytes
	tl.end = end
	tl.mu.broadcast()
}

// applyLoop is the applier: it brings bbolt up to date from the log, taking
// every entry logged so far into one synced transaction that also stores
// the position it reaches, then drops the applied records from the tail and
// removes the log segments bbolt now covers. After a failure it retries
// every second; at Close it gives up (the next Open replays the log).
func (db *DB) applyLoop() {
	defer db.wg.Done()
	tl := &db.tail
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for {
		for !tl.done {
			if len(tl.pending) == 0 {
				tl.mu.wait(nil, nil)
				continue
			}
			wait := applyDelay - time.Since(tl.pending[0].at)
			if tl.urgent > 0 || tl.bytes >= db.opts.MaxTailBytes/4 || wait <= 0 {
				break
			}
			t := time.NewTimer(wait)
			tl.mu.wait(nil, t.C)
			t.Stop()
		}
		if len(tl.pending) == 0 {
			return
		}
		// At most a quarter of MaxTailBytes per transaction (at least
		// one entry), which bounds its dirty pages.
		n, size := 0, int64(0)
		for n < len(tl.pending) && (n == 0 || size+tl.pending[n].bytes <= db.opts.MaxTailBytes/4) {
			size += tl.pending[n].bytes
			n++
		}
		work := tl.pending[:n:n]
		tl.pending, tl.busy = tl.pending[n:], len(work)
		tl.mu.Unlock()
		err := db.applyBatches(work)
		tl.mu.Lock()
		if err != nil {
			db.log.Error("store: applying the write-ahead log to the data file failed; retrying", "err", err)
			tl.pending, tl.busy = append(work, tl.pending...), 0
			tl.failing = fmt.Errorf("the data file is behind the write-ahead log: %w", err)
			tl.mu.broadcast()
			tl.mu.Unlock()
			t := time.NewTimer(time.Second)
			select {
			case <-t.C:
			case <-db.quitting:
				t.Stop()
			}
			tl.mu.Lock()
			select {
			case <-db.quitting:
				tl.dead = fmt.Errorf("store: the data file is behind the write-ahead log (%w); the next open replays it", err)
				tl.mu.broadcast()
				return
			default:
			}
			continue
		}
		end := work[len(work)-1].end
		tl.gen++
		for _, wb := range work {
			for _, name := range wb.topics {
				tt := tl.topics[name]
				if tt == nil {
					continue
				}
				if n := wb.counts[name]; n > 0 {
					tt.recs = tt.recs[n:]
				}
				if tt.last <= end {
					if tt.created {
						tl.created--
					}
					delete(tl.topics, name)
				}
			}
			tl.bytes -= wb.bytes
		}
		tl.busy, tl.applied, tl.failing = 0, end, nil
		var gone []uint64
		for len(tl.segs) > 1 && tl.segs[1] <= end {
			gone, tl.segs = append(gone, tl.segs[0]), tl.segs[1:]
		}
		tl.mu.broadcast()
		if len(gone) > 0 {
			tl.mu.Unlock()
			for i, base := range gone {
				if crashHook != nil && i > 0 {
					crashHook(crashSegment)
				}
				if err := os.Remove(filepath.Join(db.walDir, segmentName(base))); err != nil && !errors.Is(err, os.ErrNotExist) {
					db.log.Error("store: cannot remove an applied log segment", "err", err)
				}
			}
			tl.mu.Lock()
		}
	}
}

// applyBatches applies log entries to bbolt in one synced transaction.
func (db *DB) applyBatches(work []*walBatch) error {
	if db.beforeApply != nil {
		db.beforeApply()
	}
	began := time.Now()
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		for i, wb := range work {
			if err := applyPuts(tx, wb.puts); err != nil {
				return err
			}
			if crashHook != nil && i == len(work)/2 {
				crashHook(crashApply)
			}
		}
		return putWALPos(tx, work[len(work)-1].end)
	})
	if err == nil && crashHook != nil {
		crashHook(crashApplied)
	}
	if err == nil && db.opts.OnApply != nil {
		n := 0
		for _, wb := range work {
			n += len(wb.puts)
		}
		db.opts.OnApply(n, time.Since(began))
	}
	return err
}

// catchUp waits until bbolt holds everything logged, for the operations
// that work on bbolt directly. It fails when the applier gave up.
func (db *DB) catchUp() error {
	tl := &db.tail
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.urgent++
	defer func() { tl.urgent-- }()
	for len(tl.pending) > 0 || tl.busy > 0 {
		if tl.dead != nil {
			return tl.dead
		}
		if tl.failing != nil {
			return tl.failing
		}
		tl.mu.broadcast()
		tl.mu.wait(nil, nil)
	}
	return tl.dead
}

// waitApplied waits until bbolt holds what was logged when it was called
// (not what is logged meanwhile, so that appends cannot keep it waiting).
func (db *DB) waitApplied() error {
	tl := &db.tail
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.urgent++
	defer func() { tl.urgent-- }()
	for target := tl.end; tl.applied < target; {
		if tl.dead != nil {
			return tl.dead
		}
		tl.mu.broadcast()
		if tl.mu.wait(db.quitting, nil) {
			return errClosed
		}
	}
	return nil
}

// room waits until the tail has room for another batch (backpressure: while
// it waits, the queue fills and appenders block).
func (db *DB) room() error {
	tl := &db.tail
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for tl.bytes >= db.opts.MaxTailBytes {
		if tl.dead != nil {
			return tl.dead
		}
		if tl.failing != nil {
			return tl.failing
		}
		tl.mu.wait(nil, nil)
	}
	return tl.dead
}

// stopApplier tells the applier that nothing more will be logged; it
// applies what is left and stops.
func (db *DB) stopApplier() {
	db.tail.mu.Lock()
	db.tail.done = true
	db.tail.mu.broadcast()
	db.tail.mu.Unlock()
}

// newSegment records a segment the committer began.
func (db *DB) newSegment(base uint64) {
	db.tail.mu.Lock()
	db.tail.segs = append(db.tail.segs, base)
	db.tail.mu.Unlock()
}
