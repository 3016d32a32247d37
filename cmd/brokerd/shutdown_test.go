package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// closeReason is the JSON reason of a 1001 or 1013 close.
type closeReason struct {
	Reason       string `json:"reason"`
	RetryAfterMs int    `json:"retry_after_ms"`
}

// checkGoingAway requires a 1001 close whose reason is JSON with a
// positive retry_after_ms.
func checkGoingAway(t *testing.T, who string, code uint16, reason []byte, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", who, err)
		return
	}
	if code != 1001 {
		t.Errorf("%s: closed with code %d (reason %q), want 1001", who, code, reason)
		return
	}
	var r closeReason
	if err := json.Unmarshal(reason, &r); err != nil {
		t.Errorf("%s: close reason %q is not JSON: %v", who, reason, err)
		return
	}
	if r.RetryAfterMs <= 0 || r.Reason == "" {
		t.Errorf("%s: close reason %q, want a reason and retry_after_ms > 0", who, reason)
	}
}

// TestSIGTERMDrains checks the shutdown contract: every client is closed
// with 1001 and a retry_after_ms, no new connection gets in once draining
// began, the process exits 0 within the shutdown timeout, and what was
// acknowledged before (or while) draining is there after a restart.
func TestSIGTERMDrains(t *testing.T) {
	const timeout = 5 * time.Second
	dir := t.TempDir()
	d := startDaemon(t, dir, "--shutdown-timeout", timeout.String())

	// One acknowledged publish before the signal.
	pc := mustDial(t, d.addr)
	data := []byte(`{"before":"sigterm", "n":1}`)
	ok := pc.request(t, 1, pubCmd(1, "drain.one", data))
	if ok.Op != "ok" || ok.Offset != 1 {
		t.Fatalf("pub: got %s, want ok at offset 1", ok)
	}

	// A subscriber that has received it, and an idle client.
	sc := mustDial(t, d.addr)
	sok := sc.request(t, 1, subCmd(1, "drain.one", "earliest", ""))
	if sok.Op != "ok" || sok.Head != 1 {
		t.Fatalf("sub: got %s", sok)
	}
	epoch := sok.Epoch
	if m, err := sc.next(5 * time.Second); err != nil || m.Op != "msg" || !bytes.Equal(m.Data, data) {
		t.Fatalf("subscriber: got %v, %v; want the msg", m, err)
	}
	idle := mustDial(t, d.addr)

	// Publishers still busy when the signal comes.
	topics := []string{"drain.busy"}
	log := newAckLog(topics)
	stop := make(chan struct{})
	defer close(stop)
	var wg sync.WaitGroup
	busy := make([]*wsClient, 3)
	for p := range busy {
		busy[p] = mustDial(t, d.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			publish(busy[p], log, topics, p, 1, 16, stop)
		}()
	}
	eventually(t, 10*time.Second, "publishers get acks", func() bool { return log.n.Load() >= 100 })

	start := time.Now()
	d.signal(syscall.SIGTERM)

	code, reason, err := idle.waitClosed(timeout)
	checkGoingAway(t, "idle client", code, reason, err)
	code, reason, err = sc.waitClosed(timeout)
	checkGoingAway(t, "subscriber", code, reason, err)
	code, reason, err = pc.waitClosed(timeout)
	checkGoingAway(t, "publisher", code, reason, err)

	// Draining has begun (clients got 1001): a new client must not get in.
	if c, err := dial(d.addr); err == nil {
		c.close()
		t.Errorf("a client connected while draining (welcome %s)", c.welcome)
	} else {
		t.Logf("connecting while draining: %v", err)
	}

	if !d.waitExit(timeout + 2*time.Second) {
		t.Fatalf("brokerd still runs %v after SIGTERM (shutdown timeout %v)", time.Since(start), timeout)
	}
	if code := d.state.ExitCode(); code != 0 {
		t.Fatalf("brokerd exited with %v after SIGTERM, want status 0", d.state)
	}
	t.Logf("drained and exited in %v", time.Since(start))
	wg.Wait()
	log.check(t)
	// The busy publishers were closed too, but not reliably with a close
	// frame: the edge closes the TCP connection right after writing it,
	// and with the client's pubs still arriving the kernel answers with a
	// reset, which the client may see before the frame. Logged, not failed.
	for p, c := range busy {
		code, reason, err := c.waitClosed(time.Second)
		if err != nil || code != 1001 {
			t.Logf("busy publisher %d: close code %d reason %q err %v", p, code, reason, err)
		}
	}
	if _, err := dial(d.addr); err == nil {
		t.Error("a client connected after brokerd exited")
	}

	// After a restart: the publish acknowledged before the signal, and
	// every one acknowledged while draining.
	d2 := startDaemon(t, dir)
	logs := readLogs(t, d2, map[string]string{"drain.one": epoch, "drain.busy": ""})
	if got := logs["drain.one"]; len(got) != 1 || !bytes.Equal(got[0].Data, data) {
		t.Fatalf("after restart drain.one holds %v, want exactly %s", got, data)
	}
	n := verifyLogs(t, map[string][]*event{"drain.busy": logs["drain.busy"]}, log)
	t.Logf("%d publishes acknowledged around the drain, %d stored", log.n.Load(), n)
	d2.stop(timeout + time.Second)
}

// TestSIGTERMClosesEveryClient: with many clients connected, each one
// gets its 1001 close frame before the process exits, and their
// retry_after_ms are spread.
func TestSIGTERMClosesEveryClient(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	clients := make([]*wsClient, 300)
	for i := range clients {
		clients[i] = mustDial(t, d.addr)
	}
	d.signal(syscall.SIGTERM)
	retryAfter := map[int]bool{}
	failed := 0
	for i, c := range clients {
		code, reason, err := c.waitClosed(5 * time.Second)
		var r closeReason
		if err != nil || code != 1001 || json.Unmarshal(reason, &r) != nil || r.RetryAfterMs <= 0 {
			if failed++; failed <= 3 {
				t.Errorf("client %d: close code %d reason %q (%v), want 1001 with retry_after_ms", i, code, reason, err)
			}
			continue
		}
		retryAfter[r.RetryAfterMs] = true
	}
	if failed > 0 {
		t.Errorf("%d of %d clients did not get a 1001 close with retry_after_ms", failed, len(clients))
	}
	if len(retryAfter) < 10 {
		t.Errorf("%d clients got only %d distinct retry_after_ms: they should be spread", len(clients), len(retryAfter))
	}
	if !d.waitExit(10 * time.Second) {
		t.Fatal("brokerd still runs 10s after SIGTERM")
	}
	if code := d.state.ExitCode(); code != 0 {
		t.Fatalf("brokerd exited with %v, want status 0", d.state)
	}
}

// dialStalled opens a WebSocket connection by hand, sends cmds in one
// masked text frame and then never reads again, so that whatever the
// server writes piles up in the socket buffers.
func dialStalled(t *testing.T, addr string, cmds ...string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		// A small receive window, so that the server's writes block sooner.
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Protocol: " + subprotocol + "\r\n\r\n"
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: HTTP %d", resp.StatusCode)
	}
	payload := []byte(strings.Join(cmds, "\n"))
	frame := []byte{0x81} // FIN, text
	switch n := len(payload); {
	case n < 126:
		frame = append(frame, 0x80|byte(n))
	case n <= 0xffff:
		frame = append(frame, 0x80|126, byte(n>>8), byte(n))
	default:
		t.Fatalf("payload of %d bytes", n)
	}
	frame = append(frame, 0, 0, 0, 0) // a zero masking key leaves the payload as is
	frame = append(frame, payload...)
	if _, err := conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn
}

// TestSIGTERMWithStalledClient: a client that stopped reading while the
// server has megabytes to send it must not hold the process past the
// shutdown timeout.
func TestSIGTERMWithStalledClient(t *testing.T) {
	const timeout = 5 * time.Second
	d := startDaemon(t, t.TempDir(), "--shutdown-timeout", timeout.String(), "--write-timeout", "1m",
		"--queue-bytes", "262144")

	// 8 MiB in the topic, more than the socket buffers (a few MiB at
	// most) and the connection's outbound queue hold together.
	pc := mustDial(t, d.addr)
	big := []byte(`"` + strings.Repeat("z", 64<<10) + `"`)
	const n = 128
	var cmds []string
	for i := 1; i <= n; i++ {
		cmds = append(cmds, pubCmd(uint64(i), "stall.big", big))
		if len(cmds) == 8 || i == n { // a frame stays under --max-frame-bytes
			if err := pc.send(cmds...); err != nil {
				t.Fatal(err)
			}
			cmds = cmds[:0]
		}
	}
	for range n {
		if ev, err := pc.next(20 * time.Second); err != nil || ev.Op != "ok" {
			t.Fatalf("publishing: %v %v", ev, err)
		}
	}

	dialStalled(t, d.addr, subCmd(1, "stall.big", "earliest", ""))
	// A subscriber that does read: once it has the whole replay, the
	// stalled one's is under way too (same server, same log).
	rc := mustDial(t, d.addr)
	if ev := rc.request(t, 1, subCmd(1, "stall.big", "earliest", "")); ev.Op != "ok" {
		t.Fatalf("sub: %s", ev)
	}
	for i := 0; i < n; i++ {
		if ev, err := rc.next(20 * time.Second); err != nil || ev.Op != "msg" {
			t.Fatalf("replay: %v %v", ev, err)
		}
	}

	start := time.Now()
	d.signal(syscall.SIGTERM)
	code, reason, err := rc.waitClosed(timeout)
	checkGoingAway(t, "reading subscriber", code, reason, err)
	if !d.waitExit(timeout + 2*time.Second) {
		t.Fatalf("brokerd still runs %v after SIGTERM with a stalled client (shutdown timeout %v)", time.Since(start), timeout)
	}
	if code := d.state.ExitCode(); code != 0 {
		t.Fatalf("brokerd exited with %v, want status 0", d.state)
	}
	t.Logf("exited %v after SIGTERM", time.Since(start))
}

// TestSIGTERMRightAfterStart: a SIGTERM sent the moment the daemon has
// announced its address drains and exits 0; it must not find the default
// signal action still in place.
func TestSIGTERMRightAfterStart(t *testing.T) {
	t.Parallel()
	for range 3 {
		d := startDaemon(t, t.TempDir())
		d.stop(10 * time.Second)
		if !strings.Contains(d.stderr.String(), `"msg":"stopped"`) {
			t.Fatalf("no \"stopped\" line after SIGTERM:\n%s", d.stderr)
		}
	}
}
