package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	natsRestarts = flag.Int("cluster.nats-restarts", 2, "times TestClusterNATSRestartKeepsAckedRecords kills NATS with kill -9 and starts it again")
	natsOutage   = flag.Duration("cluster.nats-outage", 10*time.Second, "how long TestClusterNATSOutage keeps NATS down")
)

// natsBin is a nats-server binary built from the module's own NATS server
// version, once per test binary.
var natsBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "brokerd-nats-server-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "nats-server")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building nats-server: %v\n%s", err, out)
	}
	return bin, nil
})

// natsProcess is a nats-server process with JetStream, on a store
// directory and a port kept across restarts, so that the test can kill it
// with kill -9 and start it again as an operator would.
type natsProcess struct {
	t     *testing.T
	bin   string
	dir   string
	port  int
	cmd   *exec.Cmd
	out   *lineWriter
	exits chan struct{}
}

func startNATSProcess(t *testing.T) *natsProcess {
	t.Helper()
	bin, err := natsBin()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	p := &natsProcess{t: t, bin: bin, dir: t.TempDir(), port: port}
	p.start()
	t.Cleanup(func() {
		if p.cmd != nil {
			p.kill()
		}
		if t.Failed() {
			t.Logf("nats-server output:\n%s", p.out)
		}
	})
	return p
}

func (p *natsProcess) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

// start runs nats-server and waits until it accepts connections.
func (p *natsProcess) start() {
	p.t.Helper()
	if p.out == nil {
		p.out = &lineWriter{}
	}
	p.cmd = exec.Command(p.bin, "-a", "127.0.0.1", "-p", strconv.Itoa(p.port), "-js", "-sd", p.dir)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.exits = make(chan struct{})
	go func(cmd *exec.Cmd, exits chan struct{}) {
		_ = cmd.Wait()
		close(exits)
	}(p.cmd, p.exits)
	poll(p.t, 20*time.Second, 20*time.Millisecond, "nats-server accepts connections", func() bool {
		c, err := net.DialTimeout("tcp", p.addr(), time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return strings.Contains(p.out.String(), "Server is ready")
	})
}

// kill ends nats-server with SIGKILL and waits for it to be gone.
func (p *natsProcess) kill() {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exits:
	case <-time.After(10 * time.Second):
		p.t.Fatal("nats-server still running 10s after SIGKILL")
	}
	p.cmd = nil
}

// TestClusterNATSRestartKeepsAckedRecords kills NATS (a real nats-server
// process, JetStream on its own store) with kill -9 and starts it again on
// the same store and port, a few seconds later (every heartbeat and every
// lease's TTL expires meanwhile), twice in a row, while publishers publish
// through every node of a three-node cluster with automatic replicas. No
// node may take a partition whose history it does not hold: every
// acknowledged record stays at its offset in its epoch on every node, no
// offset is acknowledged twice, and every node publishes again within
// seconds of NATS coming back.
func TestClusterNATSRestartKeepsAckedRecords(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nats-server and three brokerd processes")
	}
	rng, seed := clusterRand(t)
	topics := []string{"nats.a", "nats.b", "nats.c", "nats.d", "nats.e", "nats.f"}
	np := startNATSProcess(t)
	c := newTestClusterOn(t, np.addr(), fmt.Sprintf("natsrestart-%d", seed%1_000_000_007), clusterNodes, false, topics)
	c.replicas = "0"
	c.startAll()
	t.Logf("partitions settled in %v", c.awaitSettled("start").Round(time.Millisecond))
	log := newAckLog(topics)
	epochs := c.warmUp(log, topics, "warmup")

	const publishers, window = 6, 8
	l := c.startLoad(log, topics, "restart", publishers, window)
	l.awaitAcks(30*time.Second, nil, 30, "before the restarts")
	for round := 1; round <= *natsRestarts; round++ {
		before := l.acked()
		down := clusterLeaseTTL*2 + time.Duration(rng.Int64N(int64(2*clusterLeaseTTL)))
		np.kill()
		time.Sleep(down)
		np.start()
		back := time.Now()
		l.awaitAcks(60*time.Second, before, 20, fmt.Sprintf("after NATS restart %d", round))
		resumed := time.Since(back)
		// Every node serves publishes again, the ones the publishers
		// happen not to use included.
		for _, n := range c.nodes {
			addr, _ := n.addr()
			tp := topics[rng.IntN(len(topics))]
			key := fmt.Sprintf("restart%d-%s", round, n.name)
			data := []byte(`{"after_restart":` + strconv.Itoa(round) + `,"node":"` + n.name + `"}`)
			log.noteSent(tp, data)
			poll(t, 30*time.Second, 50*time.Millisecond, fmt.Sprintf("a publish on %s after NATS restart %d", n.name, round), func() bool {
				off, _, err := httpPublish(addr, tp, key, data)
				if err != nil {
					return false
				}
				log.noteAck(tp, off, data)
				return true
			})
		}
		t.Logf("restart %d: NATS down %v; the publishers acknowledged 20 more per topic %v after it was back, every node %v after",
			round, down.Round(time.Millisecond), resumed.Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
		log.checkAcks(t)
	}
	t.Logf("partitions settled %v after the last restart", c.awaitSettled("after the restarts").Round(time.Millisecond))
	l.finish()
	log.checkAcks(t)
	t.Logf("%d records acknowledged; %v", log.acks(), l.stats)
	c.verifyServed("after the restarts", log, epochs)
	if t.Failed() {
		return
	}
	c.verifyLocal(log, epochs)
}

// TestClusterNATSOutage keeps NATS down for a long while
// (-cluster.nats-outage, 10s by default) with publishers running: every
// node answers publishes unavailable meanwhile (never ok), nothing
// acknowledged is lost, and every node publishes again within seconds of
// NATS coming back.
func TestClusterNATSOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nats-server and three brokerd processes")
	}
	_, seed := clusterRand(t)
	topics := []string{"outage.a", "outage.b", "outage.c", "outage.d"}
	np := startNATSProcess(t)
	c := newTestClusterOn(t, np.addr(), fmt.Sprintf("outage-%d", seed%1_000_000_007), clusterNodes, false, topics)
	c.replicas = "0"
	c.startAll()
	c.awaitSettled("start")
	log := newAckLog(topics)
	epochs := c.warmUp(log, topics, "warmup")
	l := c.startLoad(log, topics, "outage", 4, 8)
	l.awaitAcks(30*time.Second, nil, 30, "before the outage")

	np.kill()
	downAt := time.Now()
	// While NATS is away every node answers unavailable, within the
	// request timeout plus a lease TTL.
	answers := map[string]int{}
	for time.Since(downAt) < *natsOutage {
		for _, n := range c.nodes {
			addr, _ := n.addr()
			tp := topics[0]
			data := []byte(fmt.Sprintf(`{"during_outage":%d,"node":%q}`, time.Now().UnixNano(), n.name))
			log.noteSent(tp, data)
			sent := time.Now()
			off, _, err := httpPublish(addr, tp, fmt.Sprintf("outage-%d-%s", sent.UnixNano(), n.name), data)
			took := time.Since(sent)
			switch {
			case err == nil:
				// Only a publish sent right at the cut may still get
				// its copies; later ones cannot.
				if sent.Sub(downAt) > clusterRequestTimeout+clusterLeaseTTL {
					t.Errorf("%s acknowledged a publish %v into the NATS outage", n.name, sent.Sub(downAt).Round(time.Millisecond))
				}
				log.noteAck(tp, off, data)
				answers["ok"]++
			case strings.Contains(err.Error(), "HTTP 503") && strings.Contains(err.Error(), "unavailable"):
				answers["unavailable"]++
				if took > clusterRequestTimeout+clusterLeaseTTL+time.Second {
					t.Errorf("%s answered unavailable after %v", n.name, took.Round(time.Millisecond))
				}
			default:
				answers[err.Error()]++
				var ne net.Error
				if !errors.As(err, &ne) {
					t.Errorf("%s answered %v during the NATS outage, want 503 unavailable", n.name, err)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := l.acked()
	np.start()
	back := time.Now()
	for _, n := range c.nodes {
		addr, _ := n.addr()
		data := []byte(`{"after_outage":"` + n.name + `"}`)
		log.noteSent(topics[1], data)
		poll(t, 30*time.Second, 50*time.Millisecond, "a publish on "+n.name+" after the outage", func() bool {
			off, _, err := httpPublish(addr, topics[1], "after-"+n.name, data)
			if err != nil {
				return false
			}
			log.noteAck(topics[1], off, data)
			return true
		})
	}
	everyNode := time.Since(back)
	l.awaitAcks(60*time.Second, before, 20, "after the outage")
	t.Logf("NATS down %v; answers meanwhile %v; every node acknowledged again %v after NATS was back",
		back.Sub(downAt).Round(time.Millisecond), answers, everyNode.Round(time.Millisecond))
	c.awaitSettled("after the outage")
	l.finish()
	log.checkAcks(t)
	c.verifyServed("after the outage", log, epochs)
	if t.Failed() {
		return
	}
	c.verifyLocal(log, epochs)
}
