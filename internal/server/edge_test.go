package server_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// The edge sets a write deadline for each frame the broker writes. Once
// the connection has been idle past that deadline, writes that do not go
// through the broker (pongs, close frames written by the WebSocket layer)
// must still work.
const shortWriteTimeout = 200 * time.Millisecond

// pastWriteDeadline waits until the deadline of the server's last write
// (the welcome) has passed.
func pastWriteDeadline() { time.Sleep(3 * shortWriteTimeout) }

func TestClientPingAfterIdle(t *testing.T) {
	t.Parallel()
	ts := startServer(t, func(sc *serverConfig) { sc.Server.WriteTimeout = shortWriteTimeout })
	c := dial(t, ts)
	pastWriteDeadline()
	if err := c.Conn.WritePing([]byte("are you there")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		pongs, closed, code := c.pongs, c.closed, c.closeCode
		c.mu.Unlock()
		if pongs == 1 {
			break
		}
		if closed {
			t.Fatalf("the server closed the connection (code %d) instead of answering a ping after an idle period", code)
		}
		if time.Now().After(deadline) {
			t.Fatal("no pong")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := c.do(map[string]any{"op": "ping"}); r.Op != "pong" {
		t.Fatalf("ping command: %s", r)
	}
}

func TestCloseFramesAfterIdle(t *testing.T) {
	t.Parallel()
	ts := startServer(t, func(sc *serverConfig) {
		sc.Server.WriteTimeout = shortWriteTimeout
		sc.Server.MaxFrameBytes = 1 << 10
	})
	cases := []struct {
		name  string
		bytes []byte
		code  uint16
	}{
		// Closes decided by the WebSocket layer itself.
		{"invalid UTF-8", frame(true, 1, []byte("\"\xff\"")), uint16(subproto.CloseInvalidData)},
		{"too big", bigHeader(2 << 10), uint16(subproto.CloseTooBig)},
		{"protocol error", frame(true, 3, nil), uint16(subproto.CloseProtocolError)},
		// The client's own close: the server answers it.
		{"client close", frame(true, 8, binary.BigEndian.AppendUint16(nil, 1000)), 1000},
		// Closes decided by the broker.
		{"invalid JSON", frame(true, 1, []byte("{")), uint16(subproto.CloseInvalidData)},
		{"binary", frame(true, 2, []byte("{}")), uint16(subproto.CloseUnsupported)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := dialRaw(t, ts)
			pastWriteDeadline()
			r.write(c.bytes)
			rc := r.readUntilClose(5 * time.Second)
			if !rc.gotClose || rc.code != c.code {
				t.Errorf("after an idle period: close frame %v, code %d %q, err %v; want close %d", rc.gotClose, rc.code, rc.reason, rc.err, c.code)
			}
		})
	}
}

// A publish whose op is written with an escape is still a publish; its
// data must survive the frame buffer being reused for the next frames.
func TestPubWithEscapedOpKeepsItsData(t *testing.T) {
	ts := startServer(t)
	r := dialRaw(t, ts)
	want := strings.Repeat("A", 2000)
	pub := fmt.Sprintf(`{"op":"\u0070ub","id":1,"topic":"esc","data":"%s"}`, want)
	// Frames of the same size reuse the reader's buffer; they all go in
	// one write, so the reader gets to them before the store commits.
	ping := `{"op":"ping"}`
	filler := []byte(ping + strings.Repeat(" ", len(pub)-len(ping)))
	all := frame(true, 1, []byte(pub))
	for range 200 {
		all = append(all, frame(true, 1, filler)...)
	}
	r.write(all)
	var ok string
	_ = r.c.SetReadDeadline(time.Now().Add(waitTimeout))
	for ok == "" {
		op, p, err := r.readFrame()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(p), "\n") {
			if op == 1 && strings.HasPrefix(line, `{"op":"ok","id":1,`) {
				ok = line
			}
		}
	}
	if ok != `{"op":"ok","id":1,"topic":"esc","offset":1}` {
		t.Fatalf("escaped pub: %s", ok)
	}
	recs, err := ts.Store.Read("esc", 1, 1, 0)
	if err != nil || len(recs) != 1 {
		t.Fatalf("read: %v %v", recs, err)
	}
	if got := string(recs[0].Data); got != `"`+want+`"` {
		t.Fatalf("stored data %.60q…, want %.60q…", got, `"`+want+`"`)
	}
}

// A client may send its first frame right behind the upgrade request, in
// the same TCP segment: the server must not lose the bytes it read ahead.
func TestFrameRightBehindTheUpgrade(t *testing.T) {
	ts := startServer(t)
	c, err := net.Dial("tcp", ts.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /ws HTTP/1.1\r\nHost: " + ts.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Protocol: " + subproto.Subprotocol + "\r\n\r\n"
	if _, err := c.Write(append([]byte(req), frame(true, 1, []byte(`{"op":"ping","id":77}`))...)); err != nil {
		t.Fatal(err)
	}
	r := &rawConn{t: t, c: c, br: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	var got []string
	for len(got) < 2 {
		op, p, err := r.readFrame()
		if err != nil {
			t.Fatalf("after %q: %v (the frame sent with the request was lost)", got, err)
		}
		if op == 1 {
			got = append(got, strings.Split(string(p), "\n")...)
		}
	}
	if !strings.HasPrefix(got[0], `{"op":"welcome"`) || got[1] != `{"op":"pong","id":77}` {
		t.Fatalf("got %q, want welcome then the pong", got)
	}
}
