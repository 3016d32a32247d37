package broker

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestBudget(t *testing.T) {
	b := &budget{max: 10}
	var waits atomic.Int64
	never := make(chan struct{})
	if n, ok := b.acquire(25, never, &waits); !ok || n != 10 {
		t.Fatalf("more than max on an empty budget: took %d, %v; want all of it", n, ok)
	}
	b.release(10)
	if n, _ := b.acquire(6, never, &waits); n != 6 {
		t.Fatalf("took %d, want 6", n)
	}
	got := make(chan int64)
	go func() {
		n, _ := b.acquire(6, never, &waits)
		got <- n
	}()
	deadline := time.Now().Add(10 * time.Second)
	for waits.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the second acquire did not wait")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case n := <-got:
		t.Fatalf("acquired %d past the budget", n)
	default:
	}
	b.release(6)
	if n := <-got; n != 6 {
		t.Fatalf("took %d after the release, want 6", n)
	}
	done := make(chan struct{})
	close(done)
	if _, ok := b.acquire(6, done, &waits); ok {
		t.Fatal("acquired past the budget after done closed")
	}
	if b.inUse() != 6 {
		t.Fatalf("in use %d, want 6", b.inUse())
	}
}
