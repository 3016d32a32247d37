package main

// The harness of the cluster fault tests: an in-process NATS server, brokerd
// nodes as child processes (optionally each behind its own TCP proxy to
// NATS), the leases read straight from the NATS key-value bucket,
// publishers that fail over between nodes, and the checks of what was
// acknowledged, over HTTP while the nodes run and in each node's own store
// once they are stopped.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/brokerd/brokerd/internal/testscale"
	"github.com/brokerd/brokerd/store"
)

var (
	clusterSeed       = flag.Uint64("cluster.seed", 0, "random seed of the TestCluster fault tests (0: from the clock)")
	clusterReplicasOf = flag.Int("cluster.replicas", clusterReplicas, "--replicas of the TestCluster fault tests' nodes: 2, or 0 for automatic (two copies with three nodes, the checks' expectation either way)")
)

// The cluster every fault test runs: three nodes, two copies of each
// record, 64 partitions, a short lease.
const (
	clusterNodes      = 3
	clusterReplicas   = 2
	clusterPartitions = 64
)

// Its timing, scaled by BROKERD_TEST_SCALE (testscale) on a slow machine:
// the nodes' --lease-ttl, and the bounds the tests derive from it.
var (
	clusterLeaseTTL = testscale.D(time.Second)
	// clusterRequestTimeout is the cluster's default request timeout,
	// 2×lease TTL: how long a node waits for another node's answer, for
	// its follower's copies, or for a partition to get an owner, before it
	// answers a publish unavailable.
	clusterRequestTimeout = 2 * clusterLeaseTTL
	// pubAnswerWait is how long a publisher waits for any answer before it
	// takes the node for gone and moves to another one (a SIGSTOPped node
	// keeps its connections open and answers nothing).
	pubAnswerWait = clusterRequestTimeout + clusterLeaseTTL/2
)

func clusterRand(t *testing.T) (*rand.Rand, uint64) {
	seed := *clusterSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (-cluster.seed to replay)", seed)
	return rand.New(rand.NewPCG(seed, seed>>1)), seed
}

// nodeState is what the test did to a node last.
type nodeState int

const (
	nodeDown   nodeState = iota // not running: killed, stopped, not started
	nodeUp                      // running and reachable
	nodePaused                  // SIGSTOPped
	nodeCut                     // running, its connection to NATS cut
)

func (s nodeState) String() string {
	return [...]string{"down", "up", "paused", "cut"}[s]
}

// clusterNode is one brokerd node of the test cluster, its data directory
// kept across restarts; d is replaced at each start.
type clusterNode struct {
	name    string
	dataDir string
	proxy   *natsProxy // nil when the node connects to NATS directly

	mu    sync.Mutex
	d     *daemon
	state nodeState
}

// addr returns the node's address and whether clients should use it: the
// test's clients stay away from a node it stopped, paused or cut off, as
// a load balancer's health check would.
func (n *clusterNode) addr() (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.d == nil {
		return "", false
	}
	return n.d.addr, n.state == nodeUp
}

func (n *clusterNode) set(s nodeState) {
	n.mu.Lock()
	n.state = s
	n.mu.Unlock()
}

func (n *clusterNode) get() (*daemon, nodeState) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.d, n.state
}

// testCluster is brokerd nodes sharing one in-process NATS server.
type testCluster struct {
	t      *testing.T
	ns     *natsserver.Server // nil when NATS runs as a process of its own
	nats   string             // the server's URL
	name   string             // --cluster
	nodes  []*clusterNode
	topics []string // the test's topics, for the failure report
	// replicas, when set, is the nodes' --replicas instead of
	// -cluster.replicas.
	replicas string
	// args are more flags for every node (e.g. --config).
	args []string
	js   jetstream.JetStream

	mu  sync.Mutex
	all []*daemon // every process started, in order, for the failure report
}

// newTestCluster starts a NATS server with JetStream and prepares n nodes
// (not started); with proxies each node reaches NATS through its own
// proxy, which the test can cut.
func newTestCluster(t *testing.T, name string, n int, proxies bool, topics []string) *testCluster {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	c := newTestClusterOn(t, ns.Addr().String(), name, n, proxies, topics)
	c.ns = ns
	return c
}

// newTestClusterOn prepares n nodes (not started) of a cluster on the NATS
// server at addr (host:port).
func newTestClusterOn(t *testing.T, addr, name string, n int, proxies bool, topics []string) *testCluster {
	t.Helper()
	c := &testCluster{t: t, nats: "nats://" + addr, name: name, topics: topics}
	nc, err := nats.Connect(c.nats, nats.Name("fault test"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if c.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		cn := &clusterNode{name: fmt.Sprintf("n%d", i), dataDir: t.TempDir()}
		if proxies {
			cn.proxy = newNATSProxy(t, addr)
		}
		c.nodes = append(c.nodes, cn)
	}
	// Registered after the server's shutdown, so run before it: the
	// leases can still be read.
	t.Cleanup(c.report)
	return c
}

// start starts n on its data directory and waits until it is ready.
func (c *testCluster) start(n *clusterNode) {
	c.t.Helper()
	url := c.nats
	if n.proxy != nil {
		url = n.proxy.url()
	}
	d := startDaemon(c.t, n.dataDir, append([]string{
		"--nats", url, "--cluster", c.name, "--node", n.name,
		"--replicas", cmp.Or(c.replicas, strconv.Itoa(*clusterReplicasOf)), "--partitions", strconv.Itoa(clusterPartitions),
		"--lease-ttl", clusterLeaseTTL.String(), "--log-level", "debug"}, c.args...)...)
	c.mu.Lock()
	c.all = append(c.all, d)
	c.mu.Unlock()
	hc := &http.Client{Timeout: 2 * time.Second}
	poll(c.t, 20*time.Second, 20*time.Millisecond, n.name+" serves /readyz", func() bool {
		resp, err := hc.Get(d.url("/readyz"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	n.mu.Lock()
	n.d, n.state = d, nodeUp
	n.mu.Unlock()
}

func (c *testCluster) startAll() {
	c.t.Helper()
	for _, n := range c.nodes {
		c.start(n)
	}
}

// kill ends n with SIGKILL.
func (c *testCluster) kill(n *clusterNode) {
	c.t.Helper()
	n.set(nodeDown)
	d, _ := n.get()
	d.kill()
	if ws, ok := d.state.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		c.t.Fatalf("%s ended with %v, not by SIGKILL", n.name, d.state)
	}
}

// stop ends n with SIGTERM (it hands its partitions over and closes its
// clients) and requires a clean exit.
func (c *testCluster) stop(n *clusterNode) {
	c.t.Helper()
	d, st := n.get()
	if st == nodePaused {
		d.signal(syscall.SIGCONT)
	}
	n.set(nodeDown)
	d.stop(30 * time.Second)
}

// stopAll sends SIGTERM to every running node at once and waits for them
// to exit cleanly. (One after the other, each would hand its partitions
// to the nodes still running, which may not be their followers yet.)
func (c *testCluster) stopAll() {
	c.t.Helper()
	var running []*daemon
	for _, n := range c.nodes {
		if n.proxy != nil {
			n.proxy.heal()
		}
		d, st := n.get()
		if st == nodeDown {
			continue
		}
		if st == nodePaused {
			d.signal(syscall.SIGCONT)
		}
		n.set(nodeDown)
		running = append(running, d)
	}
	for _, d := range running {
		d.signal(syscall.SIGTERM)
	}
	for _, d := range running {
		if !d.waitExit(30 * time.Second) {
			c.t.Fatalf("%s did not exit within 30s of SIGTERM", d.dataDir)
		}
		if code := d.state.ExitCode(); code != 0 {
			c.t.Errorf("%s exited with %v after SIGTERM, want status 0", d.dataDir, d.state)
		}
	}
}

// pause stops n with SIGSTOP: it holds its connections and leases and
// answers nothing.
func (c *testCluster) pause(n *clusterNode) {
	c.t.Helper()
	n.set(nodePaused)
	d, _ := n.get()
	d.signal(syscall.SIGSTOP)
}

// resume continues a paused n with SIGCONT.
func (c *testCluster) resume(n *clusterNode) {
	c.t.Helper()
	d, _ := n.get()
	d.signal(syscall.SIGCONT)
	n.set(nodeUp)
}

// cut closes n's connections to NATS and refuses new ones.
func (c *testCluster) cut(n *clusterNode) {
	c.t.Helper()
	n.set(nodeCut)
	n.proxy.cut()
}

// heal lets n connect to NATS again.
func (c *testCluster) heal(n *clusterNode) {
	c.t.Helper()
	n.proxy.heal()
	n.set(nodeUp)
}

// up returns the nodes in state nodeUp.
func (c *testCluster) up() []*clusterNode {
	var out []*clusterNode
	for _, n := range c.nodes {
		if _, st := n.get(); st == nodeUp {
			out = append(out, n)
		}
	}
	return out
}

func (c *testCluster) node(name string) *clusterNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// poll calls cond every interval until it holds, failing the test with msg
// after timeout.
func poll(t testing.TB, timeout, interval time.Duration, msg string, cond func() bool) {
	t.Helper()
	timeout = testscale.D(timeout)
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg)
		}
		time.Sleep(interval)
	}
}

// topicPartition is the partition of topic: FNV-1a (32 bits) of the name
// modulo the partitions, as the cluster hashes it.
func topicPartition(topic string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	return int(h.Sum32() % clusterPartitions)
}

// lease is a partition's lease as stored in the cluster's key-value
// bucket: "<owner> <term>[ <follower>,…]", the owner prefixed with "~"
// when it handed the partition back.
type lease struct {
	owner     string // "" when free
	term      uint64
	followers []string
}

func (l lease) String() string {
	if l.owner == "" {
		return "free"
	}
	return fmt.Sprintf("%s/%d%v", l.owner, l.term, l.followers)
}

// leases reads every partition's lease and the nodes whose heartbeat is
// alive. A partition without a lease is absent from the map.
func (c *testCluster) leases() (map[int]lease, []string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := c.js.KeyValue(ctx, "brokerd_"+c.name+"_leases")
	if err != nil {
		return nil, nil, err
	}
	out := map[int]lease{}
	for p := range clusterPartitions {
		e, err := kv.Get(ctx, "p"+strconv.Itoa(p))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		f := strings.Fields(string(e.Value()))
		var l lease
		if len(f) > 0 && !strings.HasPrefix(f[0], "~") {
			l.owner = f[0]
		}
		if len(f) > 1 {
			l.term, _ = strconv.ParseUint(f[1], 10, 64)
		}
		if l.term == 0 {
			l.term = e.Revision()
		}
		if len(f) > 2 {
			l.followers = strings.Split(f[2], ",")
		}
		out[p] = l
	}
	hb, err := c.js.KeyValue(ctx, "brokerd_"+c.name+"_nodes")
	if err != nil {
		return nil, nil, err
	}
	keys, err := hb.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil, err
	}
	sort.Strings(keys)
	return out, keys, nil
}

// owner returns the node holding topic's partition, "" when none.
func (c *testCluster) owner(topic string) lease {
	c.t.Helper()
	ls, _, err := c.leases()
	if err != nil {
		c.t.Fatalf("reading the leases: %v", err)
	}
	return ls[topicPartition(topic)]
}

// awaitSettled waits until the partitions have settled over the nodes
// that are up: exactly those nodes heartbeat, every partition is held by
// one of them with its R-1 followers (also up) named in the lease, no
// node holds more than its share, and nothing has changed for a lease
// TTL. It returns how long that took.
func (c *testCluster) awaitSettled(label string) time.Duration {
	c.t.Helper()
	start := time.Now()
	var up []string
	for _, n := range c.up() {
		up = append(up, n.name)
	}
	share := (clusterPartitions + len(up) - 1) / len(up)
	var (
		last    string
		since   time.Time
		problem string
	)
	settled := func() bool {
		ls, alive, err := c.leases()
		if err != nil {
			problem = err.Error()
			return false
		}
		problem = ""
		if !slices.Equal(alive, up) {
			problem = fmt.Sprintf("heartbeats from %v", alive)
		}
		owned := map[string]int{}
		var b strings.Builder
		for p := range clusterPartitions {
			l, ok := ls[p]
			fmt.Fprintf(&b, "%d:%s ", p, l)
			switch {
			case problem != "":
			case !ok || l.owner == "":
				problem = fmt.Sprintf("partition %d has no owner", p)
			case !slices.Contains(up, l.owner):
				problem = fmt.Sprintf("partition %d is held by %s", p, l)
			case len(l.followers) != clusterReplicas-1:
				problem = fmt.Sprintf("partition %d names followers %v", p, l.followers)
			}
			for _, f := range l.followers {
				if problem == "" && (!slices.Contains(up, f) || f == l.owner) {
					problem = fmt.Sprintf("partition %d names follower %s", p, f)
				}
			}
			owned[l.owner]++
		}
		for _, n := range up {
			if problem == "" && owned[n] > share {
				problem = fmt.Sprintf("%s holds %d partitions, over its share %d", n, owned[n], share)
			}
		}
		if s := b.String(); s != last {
			last, since = s, time.Now()
		}
		if problem != "" {
			return false
		}
		if time.Since(since) < clusterLeaseTTL {
			problem = "still moving"
			return false
		}
		return true
	}
	for !settled() {
		if limit := testscale.D(45 * time.Second); time.Since(start) > limit {
			c.t.Fatalf("%s: the partitions did not settle over %v within %v: %s", label, up, limit, problem)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// warmUp publishes one record to each topic through each node over HTTP
// (retrying while partitions settle) and returns the topics' epochs.
func (c *testCluster) warmUp(log *ackLog, topics []string, round string) map[string]string {
	c.t.Helper()
	for _, n := range c.up() {
		addr, _ := n.addr()
		for _, tp := range topics {
			key := round + "-" + n.name + "-" + tp
			data := []byte(`{"warmup":"` + key + `"}`)
			log.noteSent(tp, data)
			poll(c.t, 20*time.Second, 50*time.Millisecond, fmt.Sprintf("a publish to %s on %s succeeds", tp, n.name), func() bool {
				off, _, err := httpPublish(addr, tp, key, data)
				if err != nil {
					return false
				}
				log.noteAck(tp, off, data)
				return true
			})
		}
	}
	log.checkAcks(c.t)
	epochs := map[string]string{}
	addr, _ := c.up()[0].addr()
	for _, tp := range topics {
		ep, _, err := httpReadLog(addr, tp)
		if err != nil || ep == "" {
			c.t.Fatalf("reading %s: epoch %q, %v", tp, ep, err)
		}
		epochs[tp] = ep
	}
	return epochs
}

// report logs, when the test failed, the leases of the test's topics and
// the lines of every node's log about them: warnings and errors, epoch
// changes, nodes joining, and every line about a partition of the topics.
func (c *testCluster) report() {
	if !c.t.Failed() {
		return
	}
	if ls, alive, err := c.leases(); err == nil {
		var b strings.Builder
		for _, tp := range c.topics {
			fmt.Fprintf(&b, "%s: partition %d %s; ", tp, topicPartition(tp), ls[topicPartition(tp)])
		}
		c.t.Logf("leases at the end: %sheartbeats from %v", &b, alive)
	}
	c.mu.Lock()
	all := append([]*daemon(nil), c.all...)
	c.mu.Unlock()
	type line struct {
		Level     string `json:"level"`
		Msg       string `json:"msg"`
		Topic     string `json:"topic"`
		Partition *int   `json:"partition"`
	}
	parts := map[int]bool{}
	for _, tp := range c.topics {
		parts[topicPartition(tp)] = true
	}
	for i, d := range all {
		var out []string
		for _, l := range strings.Split(d.stderr.String(), "\n") {
			var rec line
			if json.Unmarshal([]byte(l), &rec) != nil {
				if strings.TrimSpace(l) != "" {
					out = append(out, l)
				}
				continue
			}
			if rec.Level == "WARN" || rec.Level == "ERROR" || strings.Contains(rec.Msg, "epoch") ||
				slices.Contains(c.topics, rec.Topic) || (rec.Partition != nil && parts[*rec.Partition]) ||
				strings.Contains(rec.Msg, "joined") || strings.Contains(rec.Msg, "released") ||
				strings.Contains(rec.Msg, "NATS") || strings.Contains(rec.Msg, "draining") {
				out = append(out, l)
			}
		}
		if len(out) > 300 {
			out = append(out[:150], append([]string{"…"}, out[len(out)-150:]...)...)
		}
		c.t.Logf("process %d (%s), lines about partitions %v of the topics:\n%s", i+1, d.dataDir, slices.Sorted(maps.Keys(parts)), strings.Join(out, "\n"))
	}
}

// natsProxy forwards TCP connections to NATS; cut closes them and refuses
// new ones until heal.
type natsProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	cutOff bool
	conns  map[net.Conn]bool
}

func newNATSProxy(t *testing.T, target string) *natsProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &natsProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.serve()
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		p.cut()
	})
	return p
}

func (p *natsProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *natsProxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.cutOff
		p.mu.Unlock()
		if refuse {
			in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		if p.cutOff {
			p.mu.Unlock()
			in.Close()
			out.Close()
			continue
		}
		p.conns[in], p.conns[out] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(out, in)
		go pipe(in, out)
	}
}

func (p *natsProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutOff = true
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *natsProxy) heal() {
	p.mu.Lock()
	p.cutOff = false
	p.mu.Unlock()
}

// httpPublish publishes data to topic over HTTP with an idempotency key.
func httpPublish(addr, topic, key string, data []byte) (offset uint64, dup bool, err error) {
	req, err := http.NewRequest("POST", "http://"+addr+"/v1/topics/"+topic, bytes.NewReader(data))
	if err != nil {
		return 0, false, err
	}
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, false, fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	var r struct {
		Offset uint64 `json:"offset"`
		Dup    bool   `json:"dup"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Offset == 0 {
		return 0, false, fmt.Errorf("reply %s: %v", body, err)
	}
	return r.Offset, r.Dup, nil
}

type pageMsg struct {
	Offset uint64          `json:"offset"`
	TS     int64           `json:"ts"`
	Data   json.RawMessage `json:"data"`
}

// httpReadLog reads a topic's whole log from a node over HTTP, page by
// page, and returns its epoch and messages.
func httpReadLog(addr, topic string) (epoch string, msgs []pageMsg, err error) {
	hc := &http.Client{Timeout: 10 * time.Second}
	from := uint64(1)
	for {
		var body []byte
		// While a partition changes hands a read may be answered
		// unavailable: retry for a while.
		for try := 0; ; try++ {
			resp, err := hc.Get("http://" + addr + "/v1/topics/" + topic + "/messages?from=" + strconv.FormatUint(from, 10) + "&limit=1000")
			if err != nil {
				return "", nil, err
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			if resp.StatusCode != http.StatusServiceUnavailable || try >= 100 {
				return "", nil, fmt.Errorf("GET messages from %d (try %d): HTTP %d: %s", from, try+1, resp.StatusCode, bytes.TrimSpace(body))
			}
			time.Sleep(100 * time.Millisecond)
		}
		var page struct {
			Epoch    string    `json:"epoch"`
			Earliest uint64    `json:"earliest"`
			Head     uint64    `json:"head"`
			Messages []pageMsg `json:"messages"`
			Next     uint64    `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return "", nil, fmt.Errorf("GET messages from %d: %v", from, err)
		}
		if epoch == "" {
			epoch = page.Epoch
		} else if page.Epoch != epoch {
			return "", nil, fmt.Errorf("the epoch changed while paging: %s then %s", epoch, page.Epoch)
		}
		if page.Earliest != 1 {
			return "", nil, fmt.Errorf("earliest %d, want 1 (nothing expires in this test)", page.Earliest)
		}
		msgs = append(msgs, page.Messages...)
		if len(page.Messages) == 0 || page.Next > page.Head {
			return epoch, msgs, nil
		}
		from = page.Next
	}
}

// faultStats are what publishers saw around a fault.
type faultStats struct {
	mu         sync.Mutex
	lastAck    map[string]time.Time
	maxGap     map[string]time.Duration // per topic, the longest time between two acks
	faultAt    time.Time                // the fault, once there was one
	firstAfter map[string]time.Duration // per topic, from the fault to the first ack of a pub sent after it

	retries   atomic.Int64 // pubs sent again (unavailable, lost connection, no answer)
	dups      atomic.Int64 // retried pubs answered dup
	reconnect atomic.Int64
	timeouts  atomic.Int64 // connections given up for want of any answer
	unavail   atomic.Int64 // unavailable answers
}

func newFaultStats() *faultStats {
	return &faultStats{lastAck: map[string]time.Time{}, maxGap: map[string]time.Duration{}, firstAfter: map[string]time.Duration{}}
}

// fault marks the moment of a fault.
func (s *faultStats) fault(at time.Time) {
	s.mu.Lock()
	s.faultAt = at
	clear(s.firstAfter)
	s.mu.Unlock()
}

func (s *faultStats) ack(topic string, sentAt time.Time) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if last, ok := s.lastAck[topic]; ok && now.Sub(last) > s.maxGap[topic] {
		s.maxGap[topic] = now.Sub(last)
	}
	s.lastAck[topic] = now
	if !s.faultAt.IsZero() && !sentAt.Before(s.faultAt) {
		if _, ok := s.firstAfter[topic]; !ok {
			s.firstAfter[topic] = now.Sub(s.faultAt)
		}
	}
}

// failover returns, per topic, the time from the fault to the first ack
// of a publish sent after it, and the longest gap between two acks.
func (s *faultStats) failover() (first, gap map[string]time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return rounded(s.firstAfter), rounded(s.maxGap)
}

func rounded(m map[string]time.Duration) map[string]time.Duration {
	out := make(map[string]time.Duration, len(m))
	for k, v := range m {
		out[k] = v.Round(time.Millisecond)
	}
	return out
}

func (s *faultStats) String() string {
	first, gap := s.failover()
	return fmt.Sprintf("from the fault to the first ack of a pub sent after it %v; longest gap between acks %v; %d pubs resent, %d dup answers, %d unavailable answers, %d connections, %d given up for want of an answer",
		first, gap, s.retries.Load(), s.dups.Load(), s.unavail.Load(), s.reconnect.Load(), s.timeouts.Load())
}

// load is publishers publishing to the test's topics until finish.
type load struct {
	c      *testCluster
	log    *ackLog
	topics []string
	round  string
	window int
	stats  *faultStats
	acks   map[string]*atomic.Int64 // per topic
	total  atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup
}

// startLoad starts publishers, publisher p on the p-th node (modulo
// their number) first. round names the keys and data: unique per load.
func (c *testCluster) startLoad(log *ackLog, topics []string, round string, publishers, window int) *load {
	var first []int
	for p := range publishers {
		first = append(first, p%len(c.nodes))
	}
	return c.startLoadOn(log, topics, round, first, window)
}

// startLoadOn starts a publisher for each element of first, on that node
// first.
func (c *testCluster) startLoadOn(log *ackLog, topics []string, round string, first []int, window int) *load {
	l := &load{c: c, log: log, topics: topics, round: round, window: window, stats: newFaultStats(),
		acks: map[string]*atomic.Int64{}, stop: make(chan struct{})}
	for _, tp := range topics {
		l.acks[tp] = new(atomic.Int64)
	}
	for p, node := range first {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.publish(p, node)
		}()
	}
	return l
}

// acked returns the acks per topic so far.
func (l *load) acked() map[string]int64 {
	m := map[string]int64{}
	for tp, n := range l.acks {
		m[tp] = n.Load()
	}
	return m
}

// awaitAcks waits until every topic has taken n more acks than in since.
func (l *load) awaitAcks(timeout time.Duration, since map[string]int64, n int64, what string) {
	l.c.t.Helper()
	timeout = testscale.D(timeout)
	ok := func() bool {
		for tp, c := range l.acks {
			if c.Load()-since[tp] < n {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			now := l.acked()
			for tp := range now {
				now[tp] -= since[tp]
			}
			l.finish()
			l.log.checkAcks(l.c.t)
			l.c.t.Fatalf("%s: after %v, acks per topic %v, want %d each", what, timeout, now, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// finish stops the publishers and waits for them.
func (l *load) finish() {
	l.c.t.Helper()
	select {
	case <-l.stop:
		return
	default:
	}
	close(l.stop)
	finished := make(chan struct{})
	go func() { l.wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(20 * time.Second):
		l.c.t.Fatal("publishers still running 20s after being stopped")
	}
}

// publish sends pipelined pubs with idempotency keys, keeping window in
// flight, starting on node p and moving to the next usable node whenever
// a pub is answered unavailable, the connection is lost or nothing is
// answered for pubAnswerWait; every pub not acknowledged yet is then sent
// again with the same key. It stops when l.stop is closed.
func (l *load) publish(p, first int) {
	type pending struct {
		topic string
		key   string
		data  []byte
		at    time.Time // first sent
		sent  bool      // sent on the current connection
	}
	c, stats := l.c, l.stats
	inflight := map[uint64]*pending{}
	var seq uint64
	node := first - 1 // connect moves to the next node first
	var conn *wsClient
	defer func() {
		if conn != nil {
			conn.close()
		}
	}()
	stopped := func() bool {
		select {
		case <-l.stop:
			return true
		default:
			return false
		}
	}
	connect := func() bool {
		for !stopped() {
			for range c.nodes {
				node = (node + 1) % len(c.nodes)
				addr, ok := c.nodes[node].addr()
				if !ok {
					continue
				}
				if cl, err := dial(addr); err == nil {
					conn = cl
					stats.reconnect.Add(1)
					for _, pd := range inflight {
						pd.sent = false
					}
					return true
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		return false
	}
	drop := func() {
		stats.retries.Add(int64(len(inflight)))
		conn.close()
		conn = nil
	}
	for !stopped() {
		if conn == nil && !connect() {
			return
		}
		var frame []string
		for len(inflight) < l.window {
			seq++
			topic := l.topics[int(seq)%len(l.topics)]
			key := fmt.Sprintf("%s-p%d-n%d", l.round, p, seq)
			data := fmt.Appendf(nil, `{"p":%d,"round":%q,"n":%d,"key":%q,"s":"caf\u00e9 é %s"}`,
				p, l.round, seq, key, strings.Repeat("x", int(seq%32)))
			l.log.noteSent(topic, data)
			inflight[seq] = &pending{topic: topic, key: key, data: data, at: time.Now()}
		}
		for id, pd := range inflight {
			if !pd.sent {
				pd.sent = true
				frame = append(frame, pubKeyCmd(id, pd.topic, pd.key, pd.data))
			}
		}
		if len(frame) > 0 {
			if err := conn.send(frame...); err != nil {
				drop()
				continue
			}
		}
		ev, err := conn.next(pubAnswerWait)
		if errors.Is(err, errClientClosed) {
			drop()
			continue
		}
		if err != nil {
			stats.timeouts.Add(1)
			drop()
			continue
		}
		pd, ok := inflight[ev.ID]
		switch {
		case !ok:
			l.log.noteErr("publisher %d: event for no pub in flight: %s", p, ev)
			return
		case ev.Op == "ok":
			delete(inflight, ev.ID)
			if ev.Topic != pd.topic || ev.Offset == 0 {
				l.log.noteErr("publisher %d: ok %s for a pub to %s", p, ev, pd.topic)
				return
			}
			if ev.Dup {
				stats.dups.Add(1)
			}
			l.log.noteAck(pd.topic, ev.Offset, pd.data)
			l.acks[pd.topic].Add(1)
			l.total.Add(1)
			stats.ack(pd.topic, pd.at)
		case ev.Op == "err" && ev.Code == "unavailable":
			// Retry on another node, with the same key.
			stats.unavail.Add(1)
			drop()
			time.Sleep(20 * time.Millisecond)
		default:
			l.log.noteErr("publisher %d: unexpected %s", p, ev)
			return
		}
	}
}

func pubKeyCmd(id uint64, topic, key string, data []byte) string {
	return `{"op":"pub","id":` + strconv.FormatUint(id, 10) + `,"topic":` + strconv.Quote(topic) +
		`,"key":` + strconv.Quote(key) + `,"data":` + string(data) + `}`
}

// tally counts what a check found, for the summaries.
type tally struct {
	acked     int // acknowledged records checked
	lost      int // acknowledged records missing, or with other bytes
	dupOffset int // offsets acknowledged for two different records
	dupData   int // records stored at two offsets
	conflicts int // local copies holding other bytes at an acknowledged offset
}

func (a *tally) add(b tally) {
	a.acked += b.acked
	a.lost += b.lost
	a.dupOffset += b.dupOffset
	a.dupData += b.dupData
	a.conflicts += b.conflicts
}

// worst keeps, field by field, the larger of a and b: each check covers
// every acknowledgement so far.
func (a *tally) worst(b tally) {
	a.acked = max(a.acked, b.acked)
	a.lost = max(a.lost, b.lost)
	a.dupOffset = max(a.dupOffset, b.dupOffset)
	a.dupData = max(a.dupData, b.dupData)
	a.conflicts = max(a.conflicts, b.conflicts)
}

// checkLog checks one copy of a topic's log against what was acknowledged:
// the epoch wanted, offsets 1..head without gap, every acknowledged offset
// present with the same bytes, every stored value one that was sent, and
// none stored twice.
func checkLog(t *testing.T, who, topic, wantEpoch, epoch string, msgs []pageMsg, log *ackLog) (r tally) {
	t.Helper()
	if epoch != wantEpoch {
		t.Errorf("%s %s: epoch %s, want %s (the history was reset)", who, topic, epoch, wantEpoch)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	seen := map[string]uint64{}
	for i, m := range msgs {
		if want := uint64(i + 1); m.Offset != want {
			t.Errorf("%s %s: message %d has offset %d, want %d (gap or reorder)", who, topic, i, m.Offset, want)
			r.lost++
			return r
		}
		if m.TS <= 0 {
			t.Errorf("%s %s offset %d: ts %d", who, topic, m.Offset, m.TS)
		}
		if !log.sent[topic][string(m.Data)] {
			t.Errorf("%s %s offset %d holds %s, which was never published to it", who, topic, m.Offset, m.Data)
		}
		if prev, dup := seen[string(m.Data)]; dup {
			r.dupData++
			t.Errorf("%s %s: %s stored twice, at %d and %d", who, topic, m.Data, prev, m.Offset)
		}
		seen[string(m.Data)] = m.Offset
	}
	for off, data := range log.acked[topic] {
		r.acked++
		if off > uint64(len(msgs)) {
			if r.lost++; r.lost <= 3 {
				t.Errorf("%s %s: acknowledged offset %d (%s) is lost: the log ends at %d", who, topic, off, data, len(msgs))
			}
			continue
		}
		if got := msgs[off-1].Data; !bytes.Equal(got, data) {
			if r.lost++; r.lost <= 3 {
				t.Errorf("%s %s offset %d: read back %s, acknowledged %s", who, topic, off, got, data)
			}
		}
	}
	if r.lost > 3 {
		t.Errorf("%s %s: %d of %d acknowledged records lost", who, topic, r.lost, len(log.acked[topic]))
	}
	return r
}

// checkAcks fails the test when the publishers found something wrong,
// showing the first few of what they found.
func (l *ackLog) checkAcks(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, e := range l.errs {
		if i == 10 {
			t.Errorf("… and %d more", len(l.errs)-i)
			break
		}
		t.Error(e)
	}
	if len(l.errs) > 0 {
		t.FailNow()
	}
}

// acks counts the acknowledged records.
func (l *ackLog) acks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.acked {
		n += len(m)
	}
	return n
}

// dupAcks counts the offsets acknowledged twice (the ack log reports each
// as an error).
func (l *ackLog) dupAcks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.errs {
		if strings.Contains(e, "acknowledged twice") {
			n++
		}
	}
	return n
}

// verifyServed reads each topic through every node that is up (reads are
// forwarded to the topic's owner), waits until they agree, and checks the
// log against what was acknowledged. Records still landing (pubs in
// flight when the publishers stopped) are waited for.
func (c *testCluster) verifyServed(label string, log *ackLog, epochs map[string]string) (r tally) {
	c.t.Helper()
	for _, tp := range c.topicsOf(epochs) {
		var (
			ep   string
			msgs []pageMsg
			diff string
		)
		agreed := func() bool {
			diff = ""
			var ref []pageMsg
			var refWho string
			for _, n := range c.up() {
				addr, _ := n.addr()
				e, m, err := httpReadLog(addr, tp)
				if err != nil {
					diff = fmt.Sprintf("reading on %s: %v", n.name, err)
					return false
				}
				switch {
				case ref == nil:
					ref, refWho, ep, msgs = m, n.name, e, m
				case e != ep:
					diff = fmt.Sprintf("%s serves epoch %s, %s %s", refWho, ep, n.name, e)
				case len(m) != len(ref):
					diff = fmt.Sprintf("%s serves %d records, %s %d", refWho, len(ref), n.name, len(m))
				default:
					for i := range m {
						if !bytes.Equal(m[i].Data, ref[i].Data) {
							diff = fmt.Sprintf("offset %d: %s serves %s, %s %s", m[i].Offset, refWho, ref[i].Data, n.name, m[i].Data)
							break
						}
					}
				}
				if diff != "" {
					return false
				}
			}
			return true
		}
		deadline := time.Now().Add(testscale.D(10 * time.Second))
		for !agreed() && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if diff != "" {
			c.t.Errorf("%s %s: the nodes do not agree: %s", label, tp, diff)
		}
		r.add(checkLog(c.t, label, tp, epochs[tp], ep, msgs, log))
		c.t.Logf("%s: %s: %d records, epoch %s", label, tp, len(msgs), ep)
	}
	return r
}

func (c *testCluster) topicsOf(epochs map[string]string) []string {
	return slices.Sorted(maps.Keys(epochs))
}

// localCopy is a topic's log in one node's own store.
type localCopy struct {
	node  string
	epoch string
	recs  map[uint64][]byte
	head  uint64
}

// readLocal opens a stopped node's store and reads the topics' logs.
func readLocal(t *testing.T, n *clusterNode, topics []string) map[string]*localCopy {
	t.Helper()
	db, err := store.Open(n.dataDir, &store.Options{RetentionInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("opening %s's store: %v", n.name, err)
	}
	defer db.Close()
	if err := db.Check(); err != nil {
		t.Errorf("%s's store: %v", n.name, err)
	}
	out := map[string]*localCopy{}
	for _, tp := range topics {
		ti, ok, err := db.Topic(tp)
		if err != nil {
			t.Fatalf("%s's store: topic %s: %v", n.name, tp, err)
		}
		if !ok {
			continue
		}
		lc := &localCopy{node: n.name, epoch: ti.Epoch, recs: map[uint64][]byte{}, head: ti.Head}
		for from := ti.Earliest; from <= ti.Head; {
			recs, err := db.Read(tp, from, 1000, 0)
			if err != nil {
				t.Fatalf("%s's store: reading %s from %d: %v", n.name, tp, from, err)
			}
			if len(recs) == 0 {
				t.Errorf("%s's store: %s: nothing from %d, head %d", n.name, tp, from, ti.Head)
				break
			}
			for _, rec := range recs {
				lc.recs[rec.Offset] = rec.Data
			}
			from = recs[len(recs)-1].Offset + 1
		}
		out[tp] = lc
	}
	return out
}

// verifyLocal stops every node and checks each node's own store: every
// acknowledged record is held, at its offset and in the topic's epoch, by
// at least clusterReplicas nodes; no copy in that epoch holds other bytes
// at an acknowledged offset or a record twice.
func (c *testCluster) verifyLocal(log *ackLog, epochs map[string]string) (r tally) {
	c.t.Helper()
	// Who holds what, to tell in a failure whether a bad copy is one a
	// failover would serve.
	ls, _, err := c.leases()
	if err != nil {
		c.t.Errorf("reading the leases: %v", err)
	}
	role := func(node, topic string) string {
		l := ls[topicPartition(topic)]
		switch {
		case l.owner == node:
			return "the owner"
		case slices.Contains(l.followers, node):
			return "a follower named in the lease"
		}
		return "neither owner nor follower"
	}
	c.stopAll()
	topics := c.topicsOf(epochs)
	copies := map[string][]*localCopy{}
	for _, n := range c.nodes {
		for tp, lc := range readLocal(c.t, n, topics) {
			copies[tp] = append(copies[tp], lc)
		}
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, tp := range topics {
		var same []*localCopy
		for _, lc := range copies[tp] {
			if lc.epoch != epochs[tp] {
				c.t.Logf("local copies: %s's copy of %s is of epoch %s (head %d), not the topic's %s", lc.node, tp, lc.epoch, lc.head, epochs[tp])
				continue
			}
			same = append(same, lc)
			seen := map[string]uint64{}
			for off := uint64(1); off <= lc.head; off++ {
				data, ok := lc.recs[off]
				if !ok {
					c.t.Errorf("local copies: %s's %s lacks offset %d below its head %d", lc.node, tp, off, lc.head)
					continue
				}
				if prev, dup := seen[string(data)]; dup {
					r.dupData++
					c.t.Errorf("local copies: %s (%s) holds %s of %s twice, at %d and %d", lc.node, role(lc.node, tp), data, tp, prev, off)
				}
				seen[string(data)] = off
			}
		}
		offs := slices.Sorted(maps.Keys(log.acked[tp]))
		var short, conflicts []string
		for _, off := range offs {
			want := log.acked[tp][off]
			r.acked++
			var holders []string
			for _, lc := range same {
				got, ok := lc.recs[off]
				switch {
				case !ok:
				case bytes.Equal(got, want):
					holders = append(holders, lc.node)
				default:
					r.conflicts++
					sent := "never published"
					if log.sent[tp][string(got)] {
						sent = "published but not acknowledged there"
					}
					conflicts = append(conflicts, fmt.Sprintf("%s (%s) holds %s (%s) at offset %d, acknowledged %s", lc.node, role(lc.node, tp), got, sent, off, want))
				}
			}
			if len(holders) == 0 {
				r.lost++
			}
			if len(holders) < clusterReplicas {
				short = append(short, fmt.Sprintf("%d on %v", off, holders))
			}
		}
		if len(short) > 0 {
			c.t.Errorf("local copies: %s: %d of %d acknowledged records are on fewer than %d nodes, e.g. offsets %s",
				tp, len(short), len(offs), clusterReplicas, strings.Join(short[:min(5, len(short))], ", "))
		}
		if len(conflicts) > 0 {
			c.t.Errorf("local copies: %s: %d conflict with what was acknowledged, e.g.\n%s",
				tp, len(conflicts), strings.Join(conflicts[:min(5, len(conflicts))], "\n"))
		}
		var heads []string
		for _, lc := range copies[tp] {
			heads = append(heads, fmt.Sprintf("%s head %d epoch %.8s", lc.node, lc.head, lc.epoch))
		}
		c.t.Logf("local copies of %s (%d acknowledged, lease %s): %s", tp, len(offs), ls[topicPartition(tp)], strings.Join(heads, "; "))
	}
	return r
}
