package store

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

func TestMain(m *testing.M) {
	code := m.Run()
	closeReplay()
	if code == 0 && os.Getenv(crashDirEnv) == "" {
		if err := checkNoLeaks(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// checkNoLeaks waits for the store's goroutines to end.
func checkNoLeaks() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var leaked []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "brokerd/store.(*DB).") && !strings.Contains(g, "checkNoLeaks") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leaked goroutines:\n%s", strings.Join(leaked, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testOptions are fast options for functional tests: no fsync, no
// background retention.
func testOptions() *Options {
	return &Options{NoSync: true, RetentionInterval: -1, LockTimeout: 200 * time.Millisecond}
}

// openTest opens a DB in a new temporary directory; Cleanup checks its
// consistency and closes it. It returns the directory for reopening.
func openTest(t testing.TB, opts *Options) (*DB, string) {
	t.Helper()
	dir := t.TempDir()
	return openAt(t, dir, opts), dir
}

// openAt opens a DB in dir with the same Cleanup as openTest.
func openAt(t testing.TB, dir string, opts *Options) *DB {
	t.Helper()
	if opts == nil {
		opts = testOptions()
	}
	db, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := db.Check(); err != nil && !errors.Is(err, broker.ErrClosed) {
			t.Errorf("Check: %v", err)
		}
		if err := db.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return db
}

// reopen closes db after checking it and opens dir again.
func reopen(t testing.TB, db *DB, dir string, opts *Options) *DB {
	t.Helper()
	if err := db.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return openAt(t, dir, opts)
}

// pause blocks the committer until release is called, so that what is
// queued meanwhile is committed in one batch.
func pause(t testing.TB, db *DB) (release func()) {
	t.Helper()
	started, rel := make(chan struct{}), make(chan struct{})
	o := newOp(opView)
	o.fn = func(*bbolt.Tx) error {
		close(started)
		<-rel
		return nil
	}
	go func() { _ = db.runSync(o) }()
	<-started
	release = sync.OnceFunc(func() { close(rel) })
	t.Cleanup(release)
	return release
}

// clock is a settable Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// result is what an async done callback got.
type result struct {
	a   broker.Appended
	err error
}

// appendAsync queues an append and returns a channel for its outcome.
func appendAsync(db *DB, topic, data, key string) <-chan result {
	ch := make(chan result, 1)
	db.AppendAsync(topic, []byte(data), key, func(a broker.Appended, err error) { ch <- result{a, err} })
	return ch
}

func mustAppend(t testing.TB, db *DB, topic, data, key string) broker.Appended {
	t.Helper()
	a, err := db.Append(t.Context(), topic, []byte(data), key)
	if err != nil {
		t.Fatalf("Append(%q, %q, %q): %v", topic, data, key, err)
	}
	return a
}

func mustTopic(t testing.TB, db *DB, topic string) broker.TopicInfo {
	t.Helper()
	info, ok, err := db.Topic(topic)
	if err != nil || !ok {
		t.Fatalf("Topic(%q) = %v, %v", topic, ok, err)
	}
	return info
}

func mustRead(t testing.TB, db *DB, topic string, from uint64, max, maxBytes int) []broker.Record {
	t.Helper()
	recs, err := db.Read(topic, from, max, maxBytes)
	if err != nil {
		t.Fatalf("Read(%q, %d): %v", topic, from, err)
	}
	return recs
}

// offsets returns the records' offsets.
func offsets(recs []broker.Record) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.Offset
	}
	return out
}

// span returns [from, from+1, ..., to].
func span(from, to uint64) []uint64 {
	out := []uint64{}
	for o := from; o <= to; o++ {
		out = append(out, o)
	}
	return out
}

// readAll reads a whole topic.
func readAll(t testing.TB, db *DB, topic string) []broker.Record {
	t.Helper()
	var all []broker.Record
	for from := uint64(0); ; {
		recs := mustRead(t, db, topic, from, 100, 1<<20)
		if len(recs) == 0 {
			return all
		}
		all = append(all, recs...)
		from = recs[len(recs)-1].Offset + 1
	}
}

// topicMeta returns the stored metadata of a topic.
func topicMeta(t testing.TB, db *DB, topic string) meta {
	t.Helper()
	var m meta
	// On the committer, once bbolt holds everything logged.
	o := newOp(opView)
	o.fn = func(tx *bbolt.Tx) error {
		tt, err := loadTopic(tx, topic)
		if err != nil {
			return err
		}
		m = tt.m
		return nil
	}
	if err := db.runSync(o); err != nil {
		t.Fatal(err)
	}
	return m
}

// keyCount returns how many idempotency keys the index holds for topic (""
// for all topics), read on the committer, which owns the index.
func keyCount(t testing.TB, db *DB, topic string) int {
	t.Helper()
	n := 0
	o := newOp(opView)
	o.fn = func(*bbolt.Tx) error {
		n = db.keys.count(topic)
		return nil
	}
	if err := db.runSync(o); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func (db *DB) isClosed() bool {
	db.mu.RLock()
	defer db.mu.RUnlock()
	return db.closed
}
