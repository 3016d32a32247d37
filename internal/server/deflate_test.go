package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

type deflateClient struct {
	gws.BuiltinEventHandler
	msgs   chan string
	closed chan error
}

func (c *deflateClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	select {
	case c.msgs <- string(m.Bytes()):
	default:
	}
	m.Close()
}

func (c *deflateClient) OnClose(_ *gws.Conn, err error) { c.closed <- err }

func dialDeflate(t *testing.T, ts *testServer) (*gws.Conn, *deflateClient) {
	t.Helper()
	dc := &deflateClient{msgs: make(chan string, 16), closed: make(chan error, 1)}
	h := http.Header{}
	h.Set("Sec-WebSocket-Protocol", "brokerd.v1.json")
	conn, _, err := gws.NewClient(dc, &gws.ClientOption{
		Addr:              ts.URL,
		RequestHeader:     h,
		PermessageDeflate: gws.PermessageDeflate{Enabled: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	go conn.ReadLoop()
	t.Cleanup(func() { _ = conn.NetConn().Close() })
	return conn, dc
}

// With compression on, a small compressed frame that inflates past the
// frame limit closes that connection; the server inflates no further.
func TestDeflateBombBounded(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Server.Compression = true
		c.Server.MaxFrameBytes = 64 << 10
	})
	conn, dc := dialDeflate(t, ts)
	select {
	case m := <-dc.msgs:
		if !strings.Contains(m, `"welcome"`) {
			t.Fatalf("first event %s", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no welcome")
	}
	// A normal compressed command works.
	if err := conn.WriteString(`{"op":"ping","id":1}`); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-dc.msgs:
		if !strings.Contains(m, `"pong"`) {
			t.Fatalf("got %s", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no pong")
	}
	// 8 MiB of spaces compresses to a few KiB.
	bomb := `{"op":"pub","topic":"t","data":"` + strings.Repeat(" ", 8<<20) + `"}`
	_ = conn.WriteString(bomb)
	select {
	case <-dc.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the bomb did not close the connection")
	}
	if h := ts.head("t"); h != 0 {
		t.Fatalf("the bomb was stored (head %d)", h)
	}
	// Everyone else is fine.
	dial(t, ts).pub("after.bomb", `1`)
}
