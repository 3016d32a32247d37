package cluster_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/brokerd/brokerd/broker"
)

// restartableNATS is a NATS server with JetStream on a store directory
// and a port that outlive it, so that it can be stopped and started again
// as an operator restarts NATS.
type restartableNATS struct {
	t    testing.TB
	opts natsserver.Options
	s    *natsserver.Server
}

func startRestartableNATS(t testing.TB) *restartableNATS {
	t.Helper()
	r := &restartableNATS{t: t, opts: natsserver.Options{
		Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: t.TempDir(),
	}}
	r.start()
	r.opts.Port = r.s.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() {
		if r.s != nil {
			r.s.Shutdown()
		}
	})
	return r
}

func (r *restartableNATS) start() {
	r.t.Helper()
	o := r.opts
	s, err := natsserver.NewServer(&o)
	if err != nil {
		r.t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		r.t.Fatal("nats server not ready")
	}
	r.s = s
}

func (r *restartableNATS) stop() {
	r.s.Shutdown()
	r.s.WaitForShutdown()
	r.s = nil
}

func (r *restartableNATS) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", r.opts.Port) }

// ackBook records what publishers were answered ok, per topic and epoch,
// and finds an offset acknowledged for two different records.
type ackBook struct {
	mu     sync.Mutex
	acked  map[string]map[uint64][]byte // topic → offset → data
	epochs map[string]string
	errs   []string
}

func newAckBook() *ackBook {
	return &ackBook{acked: map[string]map[uint64][]byte{}, epochs: map[string]string{}}
}

func (b *ackBook) note(a broker.Appended, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ep, ok := b.epochs[a.Topic]; ok && ep != a.Epoch {
		b.errs = append(b.errs, fmt.Sprintf("%s: offset %d acknowledged in epoch %s, earlier acks were in %s", a.Topic, a.Offset, a.Epoch, ep))
		return
	}
	b.epochs[a.Topic] = a.Epoch
	m := b.acked[a.Topic]
	if m == nil {
		m = map[uint64][]byte{}
		b.acked[a.Topic] = m
	}
	if prev, ok := m[a.Offset]; ok && !bytes.Equal(prev, data) {
		b.errs = append(b.errs, fmt.Sprintf("%s: offset %d acknowledged for %s and for %s", a.Topic, a.Offset, prev, data))
	}
	m[a.Offset] = data
}

func (b *ackBook) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, m := range b.acked {
		n += len(m)
	}
	return n
}

// publishUntil publishes to topics through tn with idempotency keys until
// stop is closed, retrying each record with its key until it is answered
// ok, and counts the acks.
func publishUntil(tn *testNode, topics []string, book *ackBook, acks *[3]int64, slot int, mu *sync.Mutex, stop <-chan struct{}) {
	for i := 0; ; i++ {
		tp := topics[i%len(topics)]
		key := fmt.Sprintf("%s-%d", tn.name, i)
		data := []byte(fmt.Sprintf(`{"node":%q,"n":%d}`, tn.name, i))
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			a, err := tn.Node.Append(ctx, tp, data, key)
			cancel()
			if err == nil {
				book.note(a, data)
				mu.Lock()
				acks[slot]++
				mu.Unlock()
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestNATSRestartKeepsAckedRecords restarts NATS (on its store directory
// and port) twice, each time down for longer than the lease TTL, while
// every node publishes. Every heartbeat expires while NATS is away; the
// nodes must not take that for the death of the partitions' holders:
// no topic starts a new epoch, no acknowledged record is lost, no offset
// is acknowledged twice, and every node publishes again once NATS is back.
func TestNATSRestartKeepsAckedRecords(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts NATS under three nodes")
	}
	t.Parallel()
	ns := startRestartableNATS(t)
	nodes := startClusterR(t, ns.url(), "natsrestart", 3, 0)
	var topics []string
	for i := range 2 * partitions {
		topics = append(topics, fmt.Sprintf("restart.t%d", i))
	}
	for _, tn := range nodes {
		waitFor(t, "followers named", func() bool {
			for _, tp := range topics {
				if o, _ := tn.Node.Owner(tp); o == "" {
					return false
				}
			}
			return true
		})
	}
	book := newAckBook()
	var (
		mu   sync.Mutex
		acks [3]int64
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, tn := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			publishUntil(tn, topics, book, &acks, i, &mu, stop)
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	waitAcks := func(what string, n int64) {
		t.Helper()
		mu.Lock()
		base := acks
		mu.Unlock()
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			ok := true
			for i := range acks {
				ok = ok && acks[i]-base[i] >= n
			}
			now := acks
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: acks per node %v, started from %v, want %d more each", what, now, base, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitAcks("before the restarts", 50)
	for round := range 2 {
		ns.stop()
		time.Sleep(2*leaseTTL + leaseTTL/2) // every heartbeat and lease expires meanwhile
		ns.start()
		began := time.Now()
		waitAcks(fmt.Sprintf("after restart %d", round+1), 20)
		t.Logf("restart %d: every node acknowledged 20 more publishes %v after NATS was back", round+1, time.Since(began).Round(time.Millisecond))
	}
	close(stop)
	wg.Wait()
	book.mu.Lock()
	errs := book.errs
	book.mu.Unlock()
	for _, e := range errs {
		t.Error(e)
	}
	for _, tn := range nodes {
		if s := tn.Node.Stats(); s.EpochResets != 0 {
			t.Errorf("%s started %d topics in a new epoch", tn.name, s.EpochResets)
		}
	}
	// Every acknowledged record, read through every node, at its offset in
	// its epoch.
	for _, tn := range nodes {
		for _, tp := range topics {
			book.mu.Lock()
			want, epoch := book.acked[tp], book.epochs[tp]
			book.mu.Unlock()
			var ti broker.TopicInfo
			waitFor(t, "the topic readable on "+tn.name, func() bool {
				var ok bool
				var err error
				ti, ok, err = tn.Node.Topic(tp)
				return err == nil && ok
			})
			if ti.Epoch != epoch {
				t.Errorf("%s on %s: epoch %s, acknowledged in %s", tp, tn.name, ti.Epoch, epoch)
				continue
			}
			got := map[uint64][]byte{}
			for from := uint64(1); from <= ti.Head; {
				recs, err := tn.Node.Read(tp, from, 1000, 1<<20)
				if err != nil {
					t.Fatalf("reading %s on %s: %v", tp, tn.name, err)
				}
				if len(recs) == 0 {
					break
				}
				for _, r := range recs {
					got[r.Offset] = r.Data
				}
				from = recs[len(recs)-1].Offset + 1
			}
			lost := 0
			for off, data := range want {
				if !bytes.Equal(got[off], data) {
					lost++
				}
			}
			if lost > 0 {
				t.Errorf("%s on %s: %d of %d acknowledged records lost or changed", tp, tn.name, lost, len(want))
			}
		}
	}
	t.Logf("%d records acknowledged across two NATS restarts", book.count())
}
