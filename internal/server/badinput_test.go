package server_test

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// Frames that must close the connection, each on a raw connection. After
// each, the broker still serves everyone else.
func TestBadFramesClose(t *testing.T) {
	const maxFrame = 256 << 10
	ts := startServer(t, func(sc *serverConfig) {
		sc.Server.MaxFrameBytes = maxFrame
	})
	watcher := dial(t, ts)
	watcher.sub("health", nil)

	text := func(s string) []byte { return frame(true, 1, []byte(s)) }
	cases := []struct {
		name  string
		bytes []byte
		code  subproto.CloseCode
	}{
		{"invalid JSON", text(`{"op":`), subproto.CloseInvalidData},
		{"invalid JSON after a valid command", text("{\"op\":\"ping\",\"id\":1}\n{\"op\":\"ping\",,}"), subproto.CloseInvalidData},
		{"two objects on one line", text(`{"op":"ping"}{"op":"ping"}`), subproto.CloseInvalidData},
		{"pretty-printed object", text("{\n\"op\":\"ping\"\n}"), subproto.CloseInvalidData},
		{"number with a leading zero", text(`{"op":"ping","id":01}`), subproto.CloseInvalidData},
		{"trailing comma", text(`{"op":"ping",}`), subproto.CloseInvalidData},
		{"invalid UTF-8", text("{\"op\":\"pub\",\"topic\":\"x\",\"data\":\"\xff\xfe\"}"), subproto.CloseInvalidData},
		{"overlong UTF-8", text("{\"op\":\"pub\",\"topic\":\"x\",\"data\":\"\xc0\xaf\"}"), subproto.CloseInvalidData},
		{"UTF-8 surrogate", text("{\"op\":\"pub\",\"topic\":\"x\",\"data\":\"\xed\xa0\x80\"}"), subproto.CloseInvalidData},
		{"unbalanced deep nesting", text(`{"op":"pub","topic":"x","data":` + strings.Repeat("[", 100000) + `}`), subproto.CloseInvalidData},
		{"binary frame", frame(true, 2, []byte(`{"op":"ping","id":1}`)), subproto.CloseUnsupported},
		{"frame over MaxFrameBytes (header only)", bigHeader(maxFrame + 1), subproto.CloseTooBig},
		{"fragments over MaxFrameBytes", append(frame(false, 1, make([]byte, 150<<10)), frame(true, 0, make([]byte, 150<<10))...), subproto.CloseTooBig},
		{"commands over the per-frame limit", text(strings.Repeat(`{"op":"ping","id":1}`+"\n", 10000)), subproto.CloseTooBig},
		{"one command over the per-frame limit", text(strings.Repeat(`{"op":"ping"}`+"\n", 1001)), subproto.CloseTooBig},
		{"unmasked frame", []byte{0x81, 0x02, '{', '}'}, subproto.CloseProtocolError},
		{"reserved opcode", frame(true, 3, []byte("x")), subproto.CloseProtocolError},
		{"RSV1 without an extension", func() []byte { f := text(`{"op":"ping"}`); f[0] |= 0x40; return f }(), subproto.CloseProtocolError},
		{"fragmented control frame", frame(false, 9, []byte("x")), subproto.CloseProtocolError},
		{"control frame over 125 bytes", frame(true, 9, make([]byte, 126)), subproto.CloseProtocolError},
		{"continuation without a start", frame(true, 0, []byte("x")), subproto.CloseProtocolError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := dialRaw(t, ts)
			r.write(c.bytes)
			rc := r.readUntilClose(5 * time.Second)
			if !rc.gotClose || rc.code != uint16(c.code) {
				t.Errorf("got close frame %v code %d %q (read error %v), want close %d", rc.gotClose, rc.code, rc.reason, rc.err, c.code)
			}
			// After the close frame the server ends the TCP connection.
			_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, _, err := r.readFrame(); err == nil || isTimeout(err) {
				t.Errorf("connection still open after the close frame: %v", err)
			}
			checkHealthy(t, ts, watcher, "health")
		})
	}
	if n := ts.Edge.ReadPanics(); n != 0 {
		t.Errorf("%d reader panics", n)
	}
}

// bigHeader is the header of a masked text frame announcing n bytes, with
// no payload: the server must refuse it from the header alone.
func bigHeader(n int) []byte {
	h := []byte{0x81, 0x80 | 127}
	h = binary.BigEndian.AppendUint64(h, uint64(n))
	return append(h, 1, 2, 3, 4)
}

// Commands that are refused with an err; the connection stays open.
func TestBadCommandsGetErr(t *testing.T) {
	ts := startServer(t, func(sc *serverConfig) {
		sc.Broker.MaxSubscriptions = 4
		sc.Broker.MaxMessageBytes = 1000
	})
	watcher := dial(t, ts)
	watcher.sub("health", nil)
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	cases := []struct {
		name string
		raw  string
		code subproto.Code
		id   uint64 // the id the err must echo, 0 for none
	}{
		{"unknown op", `{"op":"publish","id":7,"topic":"x","data":1}`, subproto.CodeUnknownOp, 7},
		{"event as op", `{"op":"msg","id":8}`, subproto.CodeUnknownOp, 8},
		{"op not a string", `{"op":1,"id":9}`, subproto.CodeBadRequest, 9},
		{"missing op", `{"id":10}`, subproto.CodeBadRequest, 10},
		{"not an object", `[1,2,3]`, subproto.CodeBadRequest, 0},
		{"a string", `"ping"`, subproto.CodeBadRequest, 0},
		{"id as string", `{"op":"ping","id":"1"}`, subproto.CodeBadRequest, 0},
		{"id fraction", `{"op":"ping","id":1.5}`, subproto.CodeBadRequest, 0},
		{"id negative", `{"op":"ping","id":-1}`, subproto.CodeBadRequest, 0},
		{"id zero", `{"op":"ping","id":0}`, subproto.CodeBadRequest, 0},
		{"id exponent", `{"op":"ping","id":1e3}`, subproto.CodeBadRequest, 0},
		{"id 2^53", `{"op":"ping","id":9007199254740992}`, subproto.CodeBadRequest, 0},
		{"id bool", `{"op":"ping","id":true}`, subproto.CodeBadRequest, 0},
		{"id null", `{"op":"ping","id":null}`, subproto.CodeBadRequest, 0},
		{"unknown field", `{"op":"ping","id":11,"x":1}`, subproto.CodeBadRequest, 11},
		{"duplicate field", `{"op":"ping","id":12,"id":12}`, subproto.CodeBadRequest, 12},
		{"field of another op", `{"op":"ping","id":13,"topic":"x"}`, subproto.CodeBadRequest, 13},
		{"deeply nested data", `{"op":"pub","id":14,"topic":"deep","data":` + deep + `}`, subproto.CodeBadRequest, 14},
		{"nested past the limit", `{"op":"pub","id":15,"topic":"deep","data":` + strings.Repeat("[", subproto.MaxDepth+1) + strings.Repeat("]", subproto.MaxDepth+1) + `}`, subproto.CodeBadRequest, 15},
		{"deep topic", `{"op":"sub","id":16,"topic":` + deep + `}`, subproto.CodeBadRequest, 16},
		{"invalid topic", `{"op":"sub","id":17,"topic":"a..b"}`, subproto.CodeInvalidTopic, 17},
		{"topic too long", `{"op":"sub","id":18,"topic":"` + strings.Repeat("a", 256) + `"}`, subproto.CodeInvalidTopic, 18},
		{"pattern in pub", `{"op":"pub","id":19,"topic":"a.*","data":1}`, subproto.CodeInvalidTopic, 19},
		{"from zero", `{"op":"sub","id":20,"topic":"x","from":0}`, subproto.CodeBadRequest, 20},
		{"from word", `{"op":"sub","id":21,"topic":"x","from":"newest"}`, subproto.CodeBadRequest, 21},
		{"max_inflight without consumer", `{"op":"sub","id":22,"topic":"x","max_inflight":5}`, subproto.CodeBadRequest, 22},
		{"if_gone other", `{"op":"sub","id":23,"topic":"x","if_gone":"latest"}`, subproto.CodeBadRequest, 23},
		{"data too large", `{"op":"pub","id":24,"topic":"x","data":"` + strings.Repeat("x", 1000) + `"}`, subproto.CodeMessageTooLarge, 24},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts)
			n := len(c.snapshot())
			c.send(tc.raw)
			evs := c.waitFor("err", func(evs []event) bool { return len(evs) > n })
			e := evs[n]
			if e.Op != "err" || e.str("code") != string(tc.code) || e.str("message") == "" {
				t.Fatalf("got %s, want err %s with a message", e, tc.code)
			}
			if tc.id == 0 && e.has("id") || tc.id != 0 && e.id() != tc.id {
				t.Fatalf("got %s, want id %d", e, tc.id)
			}
			// The connection is still usable.
			if r := c.do(map[string]any{"op": "ping"}); r.Op != "pong" {
				t.Fatalf("ping after the err: %s", r)
			}
		})
	}
	checkHealthy(t, ts, watcher, "health")

	t.Run("too many subscriptions", func(t *testing.T) {
		s := dial(t, ts)
		for i := range 4 {
			s.sub(fmt.Sprintf("many.%d", i), nil)
		}
		e := s.mustErr(map[string]any{"op": "sub", "topic": "many.4", "id": 99}, subproto.CodeTooManySubscriptions)
		if e.id() != 99 {
			t.Fatalf("err %s, want id 99", e)
		}
		s.mustErr(map[string]any{"op": "sub", "topic": "many.>"}, subproto.CodeTooManySubscriptions)
		// Room again after an unsub.
		s.mustOK(map[string]any{"op": "unsub", "topic": "many.0"})
		s.sub("many.4", nil)
	})
	t.Run("exactly the per-frame limit", func(t *testing.T) {
		var lines []string
		for i := 1; i <= 1000; i++ {
			lines = append(lines, fmt.Sprintf(`{"op":"ping","id":%d}`, 1000+i))
		}
		s := dial(t, ts)
		s.send(strings.Join(lines, "\n") + "\n\n")
		s.waitReplies(1000)
		checkReplyOrder(t, s.snapshot(), 1001, slicesRepeat("pong", 1000))
	})
}

func slicesRepeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// Regression: a frame header announcing a length with the top bit set
// made the gws reader panic (a negative length). The connection must be
// closed, the process must live on, and other clients must not notice.
func TestReaderPanicRegression(t *testing.T) {
	ts := startServer(t)
	watcher := dial(t, ts)
	watcher.sub("health", nil)
	evil, err := hex.DecodeString("81ffffff7fffffffffff00000000")
	if err != nil || len(evil) != 14 {
		t.Fatal("bad test frame")
	}
	for i := 1; i <= 3; i++ {
		r := dialRaw(t, ts)
		r.write(evil)
		rc := r.readUntilClose(5 * time.Second)
		if rc.gotClose && rc.code != uint16(subproto.CloseProtocolError) {
			t.Errorf("close code %d %q, want 1002", rc.code, rc.reason)
		}
		if n := ts.Edge.ReadPanics(); n != 0 && n != int64(i) {
			t.Errorf("ReadPanics() = %d after %d bad frames", n, i)
		}
		eventually(t, 5*time.Second, "the broker to forget the session", func() bool {
			return ts.Broker.Stats().Connections.Load() == 1
		})
		checkHealthy(t, ts, watcher, "health")
	}
	t.Logf("ReadPanics() = %d", ts.Edge.ReadPanics())
}

// A client that vanishes mid-frame or mid-handshake leaves nothing behind.
func TestTruncatedInput(t *testing.T) {
	ts := startServer(t)
	watcher := dial(t, ts)
	watcher.sub("health", nil)

	r := dialRaw(t, ts)
	f := frame(true, 1, []byte(`{"op":"pub","topic":"health","data":"never"}`))
	r.write(f[:len(f)/2])
	_ = r.c.Close()

	r2 := dialRaw(t, ts)
	r2.write(frame(false, 1, []byte(`{"op":"pi`)))
	_ = r2.c.Close()

	eventually(t, 5*time.Second, "the broker to forget both sessions", func() bool {
		return ts.Broker.Stats().Connections.Load() == 1
	})
	checkHealthy(t, ts, watcher, "health")
	if got := msgs(watcher.snapshot(), "health"); len(got) != 1 {
		t.Errorf("health msgs %d, want 1 (the half frame must not publish)", len(got))
	}
}

// Fragmented messages and client pings are part of RFC 6455.
func TestFragmentsAndPings(t *testing.T) {
	ts := startServer(t)
	r := dialRaw(t, ts)
	r.write(frame(false, 1, []byte(`{"op":"pi`)))
	r.write(frame(true, 9, []byte("hello"))) // a ping between fragments
	r.write(frame(false, 0, []byte(`ng","id`)))
	r.write(frame(true, 0, []byte(`":5}`)))
	_ = r.c.SetReadDeadline(time.Now().Add(waitTimeout))
	var got []string
	for len(got) < 2 {
		op, p, err := r.readFrame()
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, fmt.Sprintf("%d:%s", op, p))
	}
	if got[0] != "10:hello" || got[1] != `1:{"op":"pong","id":5}` {
		t.Fatalf("got %q, want the pong frame for the ping, then the pong event", got)
	}
}
