package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster"
	"github.com/brokerd/brokerd/internal/testscale"
	"github.com/brokerd/brokerd/store"
)

const partitions = 12

// The tests' time bounds, scaled by BROKERD_TEST_SCALE (testscale): a
// wait gives up only after waitTimeout, far beyond what a pass takes on
// an idle machine, so that a loaded one (-race, other processes) passes
// too; leaseTTL is the nodes' lease TTL.
var (
	waitTimeout = testscale.D(30 * time.Second)
	leaseTTL    = testscale.D(1500 * time.Millisecond)
)

var quiet = slog.New(slog.DiscardHandler)

// logger is the nodes' logger in test t, at debug level. The lines of all
// of t's nodes go to one ring of t's last testLogLines lines, printed if t
// fails: a failure on a loaded machine then says what the nodes did. With
// CLUSTER_TEST_LOG set they go to stderr as they come instead.
func logger(t testing.TB) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelDebug}
	if os.Getenv("CLUSTER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts)).With("test", t.Name())
	}
	v, loaded := testLogs.LoadOrStore(t, &ringLog{})
	r := v.(*ringLog)
	if !loaded {
		// Registered before the nodes' cleanups, so it runs after them
		// and holds their last lines too.
		t.Cleanup(func() {
			testLogs.Delete(t)
			if t.Failed() {
				t.Logf("the nodes' log:\n%s", r.String())
			}
		})
	}
	return slog.New(slog.NewTextHandler(r, opts))
}

const testLogLines = 3000

var testLogs sync.Map // testing.TB → *ringLog

// ringLog keeps the last testLogLines lines written to it (slog writes a
// record as one line in one Write).
type ringLog struct {
	mu      sync.Mutex
	lines   []string
	next    int // where the next line goes once the ring is full
	dropped int
}

func (r *ringLog) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) < testLogLines {
		r.lines = append(r.lines, string(p))
	} else {
		r.lines[r.next] = string(p)
		r.next = (r.next + 1) % testLogLines
		r.dropped++
	}
	return len(p), nil
}

func (r *ringLog) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	if r.dropped > 0 {
		fmt.Fprintf(&b, "(%d earlier lines dropped)\n", r.dropped)
	}
	for i := range r.lines {
		b.WriteString(r.lines[(r.next+i)%len(r.lines)])
	}
	return b.String()
}

// startNATS starts a NATS server with JetStream in this process.
func startNATS(t testing.TB) string {
	t.Helper()
	s, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

// testNode is one brokerd node: its store, cluster Node and broker.
type testNode struct {
	name   string
	nc     *nats.Conn
	Store  *store.DB
	Node   *cluster.Node
	Broker *broker.Server
	closed bool
}

func startNode(t testing.TB, url, clusterName, name string) *testNode {
	t.Helper()
	return startNodeR(t, url, clusterName, name, 1)
}

// startNodeR starts a node keeping replicas copies of each record.
func startNodeR(t testing.TB, url, clusterName, name string, replicas int) *testNode {
	t.Helper()
	return startNodeOn(t, url, clusterName, name, replicas, openNodeStore(t, name))
}

// openNodeStore opens a store for node name, checked and closed when the
// test ends.
func openNodeStore(t testing.TB, name string) *store.DB {
	t.Helper()
	st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet, RetentionInterval: -1, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last first: the store closes after the node stops.
	t.Cleanup(func() {
		if err := st.Check(); err != nil {
			t.Errorf("%s: store check: %v", name, err)
		}
		_ = st.Close()
	})
	return st
}

// restartNode starts a killed node again on its store, as a process
// restarted on its data directory.
func restartNode(t testing.TB, url, clusterName string, old *testNode, replicas int) *testNode {
	t.Helper()
	if !old.closed {
		t.Fatalf("%s is running", old.name)
	}
	_ = old.Broker.Shutdown(t.Context())
	return startNodeOn(t, url, clusterName, old.name, replicas, old.Store)
}

func startNodeOn(t testing.TB, url, clusterName, name string, replicas int, st *store.DB) *testNode {
	t.Helper()
	return startNodeWith(t, url, clusterName, name, replicas, st, nil)
}

// startNodeWith is startNodeOn with the broker configured by bcfg too.
func startNodeWith(t testing.TB, url, clusterName, name string, replicas int, st *store.DB, bcfg func(*broker.Config)) *testNode {
	t.Helper()
	nc, err := nats.Connect(url, nats.NoEcho(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	node, err := cluster.New(cluster.Config{Conn: nc, Cluster: clusterName, Node: name, Local: st,
		Partitions: partitions, LeaseTTL: leaseTTL, RequestTimeout: 5 * time.Second, Replicas: replicas, Logger: logger(t).With("n", name)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := broker.Config{Node: name, Logger: quiet}
	if bcfg != nil {
		bcfg(&cfg)
	}
	b, err := broker.New(cfg, node)
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNode{name: name, nc: nc, Store: st, Node: node, Broker: b}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Shutdown(ctx)
		tn.kill()
	})
	return tn
}

// kill stops the node without handing its leases over.
func (tn *testNode) kill() {
	if tn.closed {
		return
	}
	tn.closed = true
	_ = tn.Node.Close()
	tn.nc.Close()
}

func startCluster(t testing.TB, url, name string, k int) []*testNode {
	return startClusterR(t, url, name, k, 1)
}

func startClusterR(t testing.TB, url, name string, k, replicas int) []*testNode {
	nodes := make([]*testNode, k)
	for i := range nodes {
		nodes[i] = startNodeR(t, url, name, fmt.Sprintf("n%d", i+1), replicas)
	}
	waitSpread(t, nodes)
	return nodes
}

// waitSpread waits until every partition has exactly one owner among
// nodes and each node owns at most its share.
func waitSpread(t testing.TB, nodes []*testNode) {
	t.Helper()
	share := (partitions + len(nodes) - 1) / len(nodes)
	waitFor(t, "leases spread", func() bool {
		seen := map[int]int{}
		for _, tn := range nodes {
			owned := tn.Node.Owned()
			if len(owned) > share {
				return false
			}
			for _, p := range owned {
				seen[p]++
			}
		}
		if len(seen) != partitions {
			return false
		}
		for _, c := range seen {
			if c != 1 {
				return false
			}
		}
		return true
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fill appends n records to topic through tn, pipelined, and waits for
// every answer.
func fill(t testing.TB, tn *testNode, topic string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		tn.Node.AppendAsync(topic, []byte(fmt.Sprint(i)), "", func(_ broker.Appended, err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
}

// topicOwnedBy returns a topic name, with prefix, whose partition nodes[i] owns.
func topicOwnedBy(t testing.TB, owner *testNode, prefix string) string {
	t.Helper()
	owned := map[int]bool{}
	for _, p := range owner.Node.Owned() {
		owned[p] = true
	}
	for i := range 10000 {
		topic := prefix + strconv.Itoa(i)
		if owned[owner.Node.Partition(topic)] {
			return topic
		}
	}
	t.Fatalf("no topic owned by %s", owner.name)
	return ""
}

// nodeBesides returns the first of nodes that is none of not.
func nodeBesides(nodes []*testNode, not ...*testNode) *testNode {
	for _, tn := range nodes {
		if !slices.Contains(not, tn) {
			return tn
		}
	}
	return nil
}

// client is a broker session over an in-memory connection.
type client struct {
	t    testing.TB
	s    *broker.Session
	mu   sync.Mutex
	cond *sync.Cond
	evs  []map[string]any
	code uint16
	id   uint64
}

func connect(t testing.TB, tn *testNode) *client {
	t.Helper()
	c := &client{t: t}
	c.cond = sync.NewCond(&c.mu)
	s, err := tn.Broker.Connect(c, broker.ConnInfo{Remote: "test"})
	if err != nil {
		t.Fatal(err)
	}
	c.s = s
	t.Cleanup(func() { s.Closed(nil) })
	c.wait("welcome", func(evs []map[string]any) bool { return len(evs) > 0 })
	return c
}

func (c *client) WriteFrame(parts [][]byte) error {
	frame := bytes.Join(parts, nil)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, line := range bytes.Split(frame, []byte{'\n'}) {
		var ev map[string]any
		d := json.NewDecoder(bytes.NewReader(line))
		d.UseNumber()
		if err := d.Decode(&ev); err != nil {
			panic(fmt.Sprintf("invalid JSON %q: %v", line, err))
		}
		c.evs = append(c.evs, ev)
	}
	c.cond.Broadcast()
	return nil
}

func (c *client) WritePing() error { return nil }

func (c *client) Close(code uint16, _ []byte) {
	c.mu.Lock()
	if c.code == 0 {
		c.code = code
	}
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *client) wait(what string, pred func([]map[string]any) bool) []map[string]any {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	timer := time.AfterFunc(waitTimeout, func() { c.mu.Lock(); c.cond.Broadcast(); c.mu.Unlock() })
	defer timer.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for !pred(c.evs) {
		if time.Now().After(deadline) {
			n := len(c.evs)
			c.t.Fatalf("timed out waiting for %s; %d events, last: %v", what, n, c.evs[max(0, n-3):])
		}
		c.cond.Wait()
	}
	return append([]map[string]any(nil), c.evs...)
}

// do sends a command with a fresh id and returns its reply.
func (c *client) do(cmd map[string]any) map[string]any {
	c.t.Helper()
	c.mu.Lock()
	c.id++
	id := c.id
	c.mu.Unlock()
	cmd["id"] = id
	b, _ := json.Marshal(cmd)
	c.s.HandleFrame(b)
	var reply map[string]any
	c.wait(fmt.Sprintf("reply to %v", cmd), func(evs []map[string]any) bool {
		for _, ev := range evs {
			if ev["id"] != nil && num(ev["id"]) == id {
				reply = ev
				return true
			}
		}
		return false
	})
	return reply
}

func (c *client) pub(topic, data, key string) map[string]any {
	cmd := map[string]any{"op": "pub", "topic": topic, "data": json.RawMessage(data)}
	if key != "" {
		cmd["key"] = key
	}
	return c.do(cmd)
}

func num(v any) uint64 {
	switch x := v.(type) {
	case json.Number:
		n, _ := x.Int64()
		return uint64(n)
	}
	return 0
}

// msgs returns the offsets of the msg events of topic (or of pattern sub).
func msgs(evs []map[string]any, topic string) []uint64 {
	var out []uint64
	for _, ev := range evs {
		if ev["op"] == "msg" && (ev["topic"] == topic || ev["sub"] == topic) {
			out = append(out, num(ev["offset"]))
		}
	}
	return out
}

func mustOK(t testing.TB, ev map[string]any) map[string]any {
	t.Helper()
	if ev["op"] != "ok" {
		t.Fatalf("want ok, got %v", ev)
	}
	return ev
}
