package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	killCycles = flag.Int("kill.cycles", 3, "kill -9 cycles of TestKillWhilePublishing")
	killSeed   = flag.Uint64("kill.seed", 0, "random seed of TestKillWhilePublishing (0: from the clock)")
)

// ackLog records what the broker acknowledged, across restarts: per topic,
// the data acknowledged at each offset, and every data value sent at all.
type ackLog struct {
	mu    sync.Mutex
	acked map[string]map[uint64][]byte
	sent  map[string]map[string]bool
	n     atomic.Int64 // acknowledgements in the current run
	errs  []string
}

func newAckLog(topics []string) *ackLog {
	l := &ackLog{acked: map[string]map[uint64][]byte{}, sent: map[string]map[string]bool{}}
	for _, tp := range topics {
		l.acked[tp] = map[uint64][]byte{}
		l.sent[tp] = map[string]bool{}
	}
	return l
}

func (l *ackLog) noteSent(topic string, data []byte) {
	l.mu.Lock()
	l.sent[topic][string(data)] = true
	l.mu.Unlock()
}

func (l *ackLog) noteAck(topic string, offset uint64, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, ok := l.acked[topic][offset]; ok {
		l.errs = append(l.errs, fmt.Sprintf("%s offset %d acknowledged twice: for %s and for %s", topic, offset, prev, data))
		return
	}
	l.acked[topic][offset] = data
	l.n.Add(1)
}

func (l *ackLog) noteErr(format string, args ...any) {
	l.mu.Lock()
	l.errs = append(l.errs, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *ackLog) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.errs {
		t.Error(e)
	}
	if len(l.errs) > 0 {
		t.FailNow()
	}
}

// publish sends pubs as fast as acknowledgements allow, keeping up to
// window of them in flight (several per frame), until stop is closed or the
// connection ends. Every data value is unique: publisher p, sequence n.
func publish(c *wsClient, log *ackLog, topics []string, p, run, window int, stop <-chan struct{}) {
	type pending struct {
		topic string
		data  []byte
	}
	inflight := map[uint64]pending{}
	var id uint64
	for {
		select {
		case <-stop:
			return
		default:
		}
		var frame []string
		for len(inflight) < window {
			id++
			topic := topics[int(id)%len(topics)]
			// Spaces, escapes and non-ASCII: stored and delivered byte for byte.
			data := fmt.Appendf(nil, `{"p":%d, "run":%d,"n":%d,"s":"caf\u00e9 é %s","v":[1, 2.50,null,true]}`,
				p, run, id, strings.Repeat("x", int(id%64)))
			log.noteSent(topic, data)
			inflight[id] = pending{topic, data}
			frame = append(frame, pubCmd(id, topic, data))
		}
		if len(frame) > 0 {
			if err := c.send(frame...); err != nil {
				return // the daemon is gone
			}
		}
		ev, err := c.next(10 * time.Second)
		if errors.Is(err, errClientClosed) {
			return
		}
		if err != nil {
			log.noteErr("publisher %d: %v with %d pubs in flight", p, err, len(inflight))
			return
		}
		pd, ok := inflight[ev.ID]
		switch {
		case ev.Op == "ok" && ok:
			delete(inflight, ev.ID)
			if ev.Topic != pd.topic || ev.Offset == 0 {
				log.noteErr("publisher %d: ok %s for a pub to %s", p, ev, pd.topic)
				return
			}
			log.noteAck(pd.topic, ev.Offset, pd.data)
		default:
			log.noteErr("publisher %d: unexpected %s", p, ev)
			return
		}
	}
}

// learnEpochs subscribes once to each topic (creating its log) and returns
// the epochs.
func learnEpochs(t *testing.T, d *daemon, topics []string) map[string]string {
	t.Helper()
	c := mustDial(t, d.addr)
	defer c.close()
	epochs := map[string]string{}
	for i, tp := range topics {
		ev := c.request(t, uint64(i+1), subCmd(uint64(i+1), tp, "", ""))
		if ev.Op != "ok" || ev.Epoch == "" {
			t.Fatalf("sub %s: got %s, want ok with an epoch", tp, ev)
		}
		epochs[tp] = ev.Epoch
	}
	return epochs
}

// readLogs subscribes from the earliest offset to every topic with its
// known epoch ("" for any), on one connection, and returns each topic's whole log in
// the order delivered. It fails the test when a sub is refused (an
// epoch_mismatch means the restart reset the history).
func readLogs(t *testing.T, d *daemon, epochs map[string]string) map[string][]*event {
	t.Helper()
	c := mustDial(t, d.addr)
	defer c.close()
	var cmds []string
	byID := map[uint64]string{}
	var id uint64
	for tp, ep := range epochs {
		id++
		byID[id] = tp
		cmds = append(cmds, subCmd(id, tp, "earliest", ep))
	}
	if err := c.send(cmds...); err != nil {
		t.Fatal(err)
	}
	heads := map[string]uint64{}
	logs := map[string][]*event{}
	complete := func() bool {
		if len(heads) < len(epochs) {
			return false
		}
		for tp, h := range heads {
			if uint64(len(logs[tp])) < h {
				return false
			}
		}
		return true
	}
	for !complete() {
		ev, err := c.next(10 * time.Second)
		if err != nil {
			t.Fatalf("reading the logs back: %v (close: %v); have heads %v", err, c.closeError(), heads)
		}
		switch ev.Op {
		case "ok":
			tp := byID[ev.ID]
			if ev.Topic != tp || ev.Epoch == "" || (epochs[tp] != "" && ev.Epoch != epochs[tp]) {
				t.Fatalf("sub %s with epoch %s: got %s (the epoch changed across the restart)", tp, epochs[tp], ev)
			}
			if ev.From != 1 {
				t.Fatalf("sub %s from earliest: got %s, want from 1 (nothing expires in this test)", tp, ev)
			}
			heads[tp] = ev.Head
		case "msg":
			if _, ok := heads[ev.Topic]; !ok {
				t.Fatalf("msg before the ok of its sub: %s", ev)
			}
			logs[ev.Topic] = append(logs[ev.Topic], ev)
		default:
			t.Fatalf("reading the logs back: unexpected %s", ev)
		}
	}
	if err := c.protocolError(); err != nil {
		t.Fatal(err)
	}
	return logs
}

// verifyLogs checks the logs read back against what was acknowledged:
// offsets 1..head without gap or duplicate, every acknowledged offset
// present with the same bytes, every stored value one that was sent, and
// none stored twice.
func verifyLogs(t *testing.T, logs map[string][]*event, log *ackLog) (total int) {
	t.Helper()
	log.mu.Lock()
	defer log.mu.Unlock()
	for tp, acked := range log.acked {
		msgs := logs[tp]
		seen := map[string]uint64{}
		for i, m := range msgs {
			if want := uint64(i + 1); m.Offset != want {
				t.Fatalf("%s: message %d has offset %d, want %d (gap or reorder)", tp, i, m.Offset, want)
			}
			if m.TS <= 0 {
				t.Errorf("%s offset %d: ts %d", tp, m.Offset, m.TS)
			}
			if !log.sent[tp][string(m.Data)] {
				t.Errorf("%s offset %d holds %s, which was never published to it", tp, m.Offset, m.Data)
			}
			if prev, dup := seen[string(m.Data)]; dup {
				t.Errorf("%s: %s stored twice, at %d and %d", tp, m.Data, prev, m.Offset)
			}
			seen[string(m.Data)] = m.Offset
		}
		for off, data := range acked {
			if off > uint64(len(msgs)) {
				t.Errorf("%s: acknowledged offset %d is lost: the log ends at %d", tp, off, len(msgs))
				continue
			}
			if got := msgs[off-1].Data; !bytes.Equal(got, data) {
				t.Errorf("%s offset %d: read back %s, acknowledged %s", tp, off, got, data)
			}
		}
		total += len(msgs)
	}
	return total
}

// TestKillWhilePublishing publishes from several connections, kills the
// daemon with SIGKILL at a random moment, restarts it on the same data
// directory and checks that every acknowledged publish survived, in a log
// without gaps, under the same epoch. -kill.cycles sets how many times.
func TestKillWhilePublishing(t *testing.T) {
	seed := *killSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (-kill.seed to replay)", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1))

	const publishers, window = 8, 32
	topics := []string{"crash.alpha", "crash.beta", "crash.gamma-3"}
	dir := t.TempDir()
	log := newAckLog(topics)
	var epochs map[string]string

	for run := 1; run <= *killCycles; run++ {
		d := startDaemon(t, dir)
		if run == 1 {
			epochs = learnEpochs(t, d, topics)
		} else {
			n := verifyLogs(t, readLogs(t, d, epochs), log)
			t.Logf("run %d: %d records read back after the kill", run, n)
		}
		if t.Failed() {
			return
		}

		log.n.Store(0)
		target := int64(200 + rng.IntN(1801))
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for p := range publishers {
			c := mustDial(t, d.addr)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.close()
				publish(c, log, topics, p, run, window, stop)
			}()
		}
		eventually(t, 20*time.Second, fmt.Sprintf("run %d: %d of %d acks", run, log.n.Load(), target), func() bool {
			return log.n.Load() >= target
		})
		d.kill()
		if ws, ok := d.state.Sys().(interface{ Signaled() bool }); !ok || !ws.Signaled() {
			t.Fatalf("brokerd ended with %v, not by SIGKILL", d.state)
		}
		close(stop)
		finished := make(chan struct{})
		go func() { wg.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-time.After(15 * time.Second):
			t.Fatal("publishers still running 15s after the kill")
		}
		log.check(t)
		t.Logf("run %d: killed after %d acks (target %d)", run, log.n.Load(), target)
	}

	d := startDaemon(t, dir)
	n := verifyLogs(t, readLogs(t, d, epochs), log)
	t.Logf("final: %d records read back", n)
	d.stop(15 * time.Second)
}
