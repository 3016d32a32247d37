package server_test

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// handshake sends a WebSocket upgrade request by hand, with the given
// extra header lines, and returns the response and its body (empty for a
// 101). Raw, so that the test sees exactly what the server answered.
func handshake(t *testing.T, ts *testServer, lines ...string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", ts.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	var key [16]byte
	_, _ = rand.Read(key[:])
	req := "GET /ws HTTP/1.1\r\nHost: " + ts.Host + "\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key[:]) + "\r\n" +
		"Sec-WebSocket-Version: 13\r\n"
	for _, l := range lines {
		req += l + "\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, ""
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestHandshakeSubprotocol(t *testing.T) {
	ts := startServer(t)
	cases := []struct {
		name   string
		lines  []string
		status int
		echo   string // the Sec-WebSocket-Protocol of a 101
	}{
		{"none offered", nil, http.StatusBadRequest, ""},
		{"other protocol", []string{"Sec-WebSocket-Protocol: chat"}, http.StatusBadRequest, ""},
		{"other version", []string{"Sec-WebSocket-Protocol: brokerd.v2.json"}, http.StatusBadRequest, ""},
		{"empty", []string{"Sec-WebSocket-Protocol: "}, http.StatusBadRequest, ""},
		{"ours", []string{"Sec-WebSocket-Protocol: brokerd.v1.json"}, http.StatusSwitchingProtocols, subproto.Subprotocol},
		{"ours among others", []string{"Sec-WebSocket-Protocol: chat, brokerd.v1.json ,x"}, http.StatusSwitchingProtocols, subproto.Subprotocol},
		// RFC 6455 4.1: the header may be repeated; that is the same as one
		// header listing every value.
		{"ours in a second header line", []string{"Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: brokerd.v1.json"}, http.StatusSwitchingProtocols, subproto.Subprotocol},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := handshake(t, ts, c.lines...)
			if resp.StatusCode != c.status {
				t.Fatalf("HTTP %d (body %q), want %d", resp.StatusCode, body, c.status)
			}
			if c.status != http.StatusSwitchingProtocols {
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("Content-Type %q, want text/plain", ct)
				}
				if !strings.Contains(body, subproto.Subprotocol) {
					t.Errorf("body %q does not name %s", body, subproto.Subprotocol)
				}
				return
			}
			if got := resp.Header.Values("Sec-WebSocket-Protocol"); len(got) != 1 || got[0] != c.echo {
				t.Errorf("101 selects subprotocol %q, want exactly %q", got, c.echo)
			}
		})
	}
}

func TestHandshakeNotWebSocket(t *testing.T) {
	ts := startServer(t)
	status, body := ts.get("/ws", nil)
	if status != http.StatusUpgradeRequired || !strings.Contains(body, subproto.Subprotocol) {
		t.Errorf("plain GET /ws: HTTP %d %q, want 426 naming %s", status, body, subproto.Subprotocol)
	}
	resp, err := ts.HTTP.Client().Post(ts.HTTP.URL+"/ws", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /ws: HTTP %d, want 405", resp.StatusCode)
	}
}

func TestHandshakeOrigin(t *testing.T) {
	const proto = "Sec-WebSocket-Protocol: " + subproto.Subprotocol
	type check struct {
		origin string // "" sends none; "SELF" is the server's own origin
		status int
	}
	cases := []struct {
		name    string
		allowed []string
		checks  []check
	}{
		{"default: same host only", nil, []check{
			{"", 101},
			{"SELF", 101},
			{"http://evil.example", 403},
			{"http://127.0.0.1:1", 403}, // same address, other port
			{"null", 403},
		}},
		{"any", []string{"*"}, []check{
			{"", 101},
			{"SELF", 101},
			{"http://evil.example", 101},
			{"null", 101},
		}},
		{"list: exact match only", []string{"https://app.example.com", "http://localhost:3000"}, []check{
			{"", 101},
			{"https://app.example.com", 101},
			{"HTTPS://APP.EXAMPLE.COM", 101}, // scheme and host are case-insensitive
			{"http://localhost:3000", 101},
			{"SELF", 403}, // a list replaces the same-host default
			{"http://app.example.com", 403},
			{"https://app.example.com:8443", 403},
			{"https://evil.app.example.com", 403},
			{"https://app.example.com.evil.example", 403},
			{"http://localhost:30000", 403},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := startServer(t, func(sc *serverConfig) { sc.Server.AllowedOrigins = c.allowed })
			for _, ch := range c.checks {
				lines := []string{proto}
				origin := ch.origin
				if origin == "SELF" {
					origin = "http://" + ts.Host
				}
				if origin != "" {
					lines = append(lines, "Origin: "+origin)
				}
				resp, body := handshake(t, ts, lines...)
				if resp.StatusCode != ch.status {
					t.Errorf("Origin %q: HTTP %d (body %q), want %d", origin, resp.StatusCode, body, ch.status)
				}
			}
		})
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestWelcome(t *testing.T) {
	ts := startServer(t, func(sc *serverConfig) { sc.Broker.Heartbeat = 7 * time.Second })
	a := dial(t, ts)
	b := dial(t, ts)
	if got := a.Resp.Header.Get("Sec-WebSocket-Protocol"); got != subproto.Subprotocol {
		t.Errorf("101 selects %q, want %q", got, subproto.Subprotocol)
	}
	sessions := map[string]bool{}
	for _, c := range []*client{a, b} {
		w := c.snapshot()[0]
		if w.Op != "welcome" || w.Frame != 0 {
			t.Fatalf("first event %s (frame %d), want welcome in the first frame", w, w.Frame)
		}
		if !uuidRE.MatchString(w.str("session")) {
			t.Errorf("session %q is not a UUID", w.str("session"))
		}
		if w.str("node") != "node-test" || w.str("version") != "1.2.3-test" || w.num("heartbeat") != 7 {
			t.Errorf("welcome %s: want node node-test, version 1.2.3-test, heartbeat 7", w)
		}
		sessions[w.str("session")] = true
	}
	if len(sessions) != 2 {
		t.Errorf("two connections share the session id %v", sessions)
	}
	// Nothing else is sent unasked.
	a.quiet(100*time.Millisecond, "event besides welcome", func(e event) bool { return true })
}

func TestHealthEndpoints(t *testing.T) {
	ts := startServer(t)
	if status, _ := ts.get("/healthz", nil); status != http.StatusOK {
		t.Errorf("/healthz: HTTP %d, want 200", status)
	}
	if status, _ := ts.get("/readyz", nil); status != http.StatusOK {
		t.Errorf("/readyz: HTTP %d, want 200", status)
	}
}
