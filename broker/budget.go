package broker

import (
	"sync"
	"sync/atomic"
)

// budget bounds bytes held at once: the data of publishes waiting to be
// durable, per connection and for the whole server. Taking more than is
// left waits; the connection's reader waiting is what stops the server
// from reading a client that publishes faster than the store writes.
type budget struct {
	max int64

	mu   sync.Mutex
	used int64         // guarded by mu
	wake chan struct{} // closed on release when someone waits; guarded by mu
}

// acquire takes n bytes, waiting while they do not fit; it returns false
// when done closes first. An n larger than max is taken as max, and a
// budget with nothing taken always admits one, so that no size waits
// forever. A wait is counted in waits as it begins.
func (b *budget) acquire(n int64, done <-chan struct{}, waits *atomic.Int64) (taken int64, ok bool) {
	waited := false
	n = min(n, b.max)
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return n, true
		}
		if b.wake == nil {
			b.wake = make(chan struct{})
		}
		w := b.wake
		b.mu.Unlock()
		if !waited {
			waited = true
			waits.Add(1)
		}
		select {
		case <-w:
		case <-done:
			return 0, false
		}
	}
}

// release gives back n bytes taken by acquire.
func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
	b.mu.Unlock()
}

// inUse returns the bytes taken.
func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
