package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
	"github.com/lxzan/gws"
)

// The presence of the client against a scripted WebSocket server that
// speaks just enough of the protocol: real connections, a server whose
// welcome may lack the feature (which a real brokerd no longer does).
// internal/clienttest runs presence against a real brokerd.

const waitFor = 10 * time.Second

type scriptServer struct {
	t        *testing.T
	srv      *httptest.Server
	features []string
	// answer may answer a command itself and return true.
	answer func(ws *gws.Conn, cmd map[string]any) bool

	mu    sync.Mutex
	cmds  []map[string]any
	conns []*gws.Conn
	n     int
}

func newScriptServer(t *testing.T, features ...string) *scriptServer {
	s := &scriptServer{t: t, features: features}
	up := gws.NewUpgrader(s, &gws.ServerOption{SubProtocols: []string{subproto.Subprotocol}})
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r)
		if err != nil {
			return
		}
		go ws.ReadLoop()
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *scriptServer) url() string { return "ws" + strings.TrimPrefix(s.srv.URL, "http") + "/ws" }

func (s *scriptServer) send(ws *gws.Conn, events ...any) {
	var lines [][]byte
	for _, e := range events {
		b, err := json.Marshal(e)
		if err != nil {
			s.t.Error(err)
			return
		}
		lines = append(lines, b)
	}
	_ = ws.WriteMessage(gws.OpcodeText, bytes.Join(lines, []byte{'\n'}))
}

// current is the latest connection.
func (s *scriptServer) current() *gws.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[len(s.conns)-1]
}

// commands returns the commands received with op.
func (s *scriptServer) commands(op string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, c := range s.cmds {
		if c["op"] == op {
			out = append(out, c)
		}
	}
	return out
}

func (s *scriptServer) OnOpen(ws *gws.Conn) {
	s.mu.Lock()
	s.conns = append(s.conns, ws)
	s.n++
	session := "s" + string(rune('0'+s.n))
	s.mu.Unlock()
	w := map[string]any{"op": "welcome", "session": session, "node": "script", "version": "test", "heartbeat": 25}
	if s.features != nil {
		w["features"] = s.features
	}
	s.send(ws, w)
}

func (s *scriptServer) OnClose(*gws.Conn, error)      {}
func (s *scriptServer) OnPing(ws *gws.Conn, p []byte) { _ = ws.WritePong(p) }
func (s *scriptServer) OnPong(*gws.Conn, []byte)      {}

func (s *scriptServer) OnMessage(ws *gws.Conn, m *gws.Message) {
	defer m.Close()
	for _, line := range bytes.Split(m.Bytes(), []byte{'\n'}) {
		var cmd map[string]any
		if err := json.Unmarshal(line, &cmd); err != nil {
			s.t.Errorf("the client sent %q: %v", line, err)
			continue
		}
		s.mu.Lock()
		s.cmds = append(s.cmds, cmd)
		answer := s.answer
		s.mu.Unlock()
		if answer != nil && answer(ws, cmd) {
			continue
		}
		id := cmd["id"]
		switch cmd["op"] {
		case "sub":
			s.send(ws, map[string]any{"op": "ok", "id": id, "topic": cmd["topic"], "epoch": "e1", "head": 0, "from": 1})
		case "ping":
			s.send(ws, map[string]any{"op": "pong", "id": id})
		case "presence":
			s.send(ws, map[string]any{"op": "ok", "id": id, "topic": cmd["topic"], "members": []any{}, "count": 0})
		default:
			s.send(ws, map[string]any{"op": "ok", "id": id})
		}
	}
}

func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func dialScript(t *testing.T, s *scriptServer) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := Dial(ctx, s.url(), WithBackoff(10*time.Millisecond, 50*time.Millisecond), WithLogger(silent))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var silent = slog.New(slog.DiscardHandler)

func TestPresenceSubscription(t *testing.T) {
	s := newScriptServer(t, "last", "presence")
	c := dialScript(t, s)
	ctx := context.Background()

	type got struct {
		op string
		m  Member
	}
	events := make(chan got, 16)
	info := json.RawMessage("{ \"name\" :\n \"Ada\" }")
	sub, err := c.Subscribe(ctx, "room.1", func(*Message) {}, SubOptions{
		Presence:        true,
		PresenceInfo:    info,
		OnJoin:          func(m Member) { events <- got{"join", m} },
		OnLeave:         func(m Member) { events <- got{"leave", m} },
		OnPresenceMuted: func() { events <- got{op: "muted"} },
	})
	if err != nil {
		t.Fatal(err)
	}
	copy(info, "XXXXXXXXXXXXXXXXXXXXXXX") // the caller's slice may be reused
	sent := s.commands("sub")[0]
	if sent["presence"] != true || !jsonEqual(sent["presence_info"], map[string]any{"name": "Ada"}) {
		t.Fatalf("sub sent %v", sent)
	}

	// The member's info must outlive the frame it came in.
	ws := s.current()
	s.send(ws,
		map[string]any{"op": "join", "topic": "room.1", "member": map[string]any{"session": "x", "user": "bob", "node": "n2", "info": map[string]any{"k": []int{1, 2}}}},
		map[string]any{"op": "join", "topic": "other", "member": map[string]any{"session": "y", "node": "n1"}})
	s.send(ws, map[string]any{"op": "msg", "topic": "room.1", "offset": 1, "ts": 1, "data": strings.Repeat("z", 200)})
	s.send(ws, map[string]any{"op": "leave", "topic": "room.1", "member": map[string]any{"session": "x", "user": "bob", "node": "n2", "info": map[string]any{"k": []int{1, 2}}}})
	want := Member{Session: "x", User: "bob", Node: "n2", Info: json.RawMessage(`{"k":[1,2]}`)}
	for _, op := range []string{"join", "leave"} {
		select {
		case g := <-events:
			if g.op != op || g.m.Session != want.Session || g.m.User != want.User || g.m.Node != want.Node || string(g.m.Info) != string(want.Info) {
				t.Fatalf("got %s %+v (info %s), want %s %+v", g.op, g.m, g.m.Info, op, want)
			}
		case <-time.After(waitFor):
			t.Fatalf("no %s", op)
		}
	}
	if sub.PresenceMuted() {
		t.Fatal("muted before presence_muted")
	}
	s.send(ws, map[string]any{"op": "presence_muted", "topic": "room.1"})
	select {
	case g := <-events:
		if g.op != "muted" {
			t.Fatalf("got %v", g)
		}
	case <-time.After(waitFor):
		t.Fatal("no presence_muted")
	}
	if !sub.PresenceMuted() {
		t.Fatal("PresenceMuted false after presence_muted")
	}

	// A reconnect subscribes again with presence and the same info.
	_ = ws.NetConn().Close()
	until(t, "the resubscribe", func() bool { return len(s.commands("sub")) == 2 })
	again := s.commands("sub")[1]
	if again["presence"] != true || !jsonEqual(again["presence_info"], map[string]any{"name": "Ada"}) {
		t.Fatalf("resubscribe sent %v", again)
	}

	// Without Presence, neither field is sent, and presence events of
	// the topic are ignored.
	if _, err := c.Subscribe(ctx, "room.2", func(*Message) {}, SubOptions{}); err != nil {
		t.Fatal(err)
	}
	plain := s.commands("sub")[2]
	if _, has := plain["presence"]; has {
		t.Fatalf("sub without presence sent %v", plain)
	}
}

func TestPresenceQuery(t *testing.T) {
	s := newScriptServer(t, "presence")
	s.answer = func(ws *gws.Conn, cmd map[string]any) bool {
		if cmd["op"] != "presence" {
			return false
		}
		switch cmd["topic"] {
		case "secret":
			s.send(ws, map[string]any{"op": "err", "id": cmd["id"], "code": "forbidden", "message": "not allowed"})
		default:
			s.send(ws, map[string]any{"op": "ok", "id": cmd["id"], "topic": cmd["topic"], "count": 1500, "members": []any{
				map[string]any{"session": "a", "node": "n1", "info": "hi"},
				map[string]any{"session": "b", "user": "u", "node": "n2"},
			}})
		}
		return true
	}
	c := dialScript(t, s)
	ctx := context.Background()
	p, err := c.Presence(ctx, "room.1")
	if err != nil {
		t.Fatal(err)
	}
	if p.Topic != "room.1" || p.Count != 1500 || len(p.Members) != 2 ||
		p.Members[0].Session != "a" || string(p.Members[0].Info) != `"hi"` || p.Members[1].User != "u" || p.Members[1].Info != nil {
		t.Fatalf("Presence = %+v", p)
	}
	if _, err := c.Presence(ctx, "secret"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("Presence(secret): %v", err)
	}
	if _, err := c.Presence(ctx, "room.*"); !errors.Is(err, ErrInvalidTopic) {
		t.Fatalf("Presence(pattern): %v", err)
	}
	if got := s.commands("presence"); len(got) != 2 {
		t.Fatalf("presence commands %v", got)
	}

	// A query in flight when the connection drops is asked again.
	var once sync.Once
	s.mu.Lock()
	prev := s.answer
	s.answer = func(ws *gws.Conn, cmd map[string]any) bool {
		if cmd["op"] == "presence" {
			dropped := false
			once.Do(func() { dropped = true; _ = ws.NetConn().Close() })
			if dropped {
				return true
			}
		}
		return prev(ws, cmd)
	}
	s.mu.Unlock()
	p, err = c.Presence(ctx, "room.3")
	if err != nil || p.Count != 1500 {
		t.Fatalf("Presence across a reconnect: %+v, %v", p, err)
	}
	if got := s.commands("presence"); len(got) != 4 {
		t.Fatalf("%d presence commands, want 4 (one asked twice)", len(got))
	}
	ctx2, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	s.mu.Lock()
	s.answer = func(ws *gws.Conn, cmd map[string]any) bool { return cmd["op"] == "presence" } // never answered
	s.mu.Unlock()
	if _, err := c.Presence(ctx2, "room.4"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Presence past its context: %v", err)
	}
	_ = c.Close()
	if _, err := c.Presence(ctx, "room.1"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Presence after Close: %v", err)
	}
}

func TestPresenceUnsupported(t *testing.T) {
	s := newScriptServer(t, "last", "since")
	c := dialScript(t, s)
	ctx := context.Background()
	_, err := c.Subscribe(ctx, "room.1", func(*Message) {}, SubOptions{Presence: true})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), `"presence"`) {
		t.Fatalf("Subscribe with Presence: %v", err)
	}
	if _, err := c.Presence(ctx, "room.1"); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Presence: %v", err)
	}
	if n := len(s.commands("sub")) + len(s.commands("presence")); n != 0 {
		t.Fatalf("%d commands sent", n)
	}
	if _, err := c.Subscribe(ctx, "room.1", func(*Message) {}, SubOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestPresenceOptions(t *testing.T) {
	for _, c := range []struct {
		name    string
		pattern bool
		opts    SubOptions
		want    string
	}{
		{"pattern", true, SubOptions{Presence: true}, "pattern"},
		{"info without presence", false, SubOptions{PresenceInfo: json.RawMessage(`1`)}, "need Presence"},
		{"callback without presence", false, SubOptions{OnJoin: func(Member) {}}, "need Presence"},
		{"not JSON", false, SubOptions{Presence: true, PresenceInfo: json.RawMessage(`{"a":`)}, "not a JSON value"},
		{"too big", false, SubOptions{Presence: true, PresenceInfo: json.RawMessage(`"` + strings.Repeat("x", MaxPresenceInfo-1) + `"`)}, "1025 bytes"},
	} {
		opts := c.opts
		err := checkPresenceOptions(c.pattern, &opts)
		if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want bad_request with %q", c.name, err, c.want)
		}
	}
	// Whitespace does not count: the value goes out compact.
	opts := SubOptions{Presence: true, PresenceInfo: json.RawMessage(" \"" + strings.Repeat("x", MaxPresenceInfo-2) + "\" \n")}
	if err := checkPresenceOptions(false, &opts); err != nil || len(opts.PresenceInfo) != MaxPresenceInfo {
		t.Fatalf("largest info: %v, %d bytes", err, len(opts.PresenceInfo))
	}
	var cmd []byte
	cmd = subproto.AppendCommand(cmd, &subproto.Command{Op: subproto.OpSub, ID: 1, Topic: "t", Presence: true, PresenceInfo: opts.PresenceInfo})
	if bytes.IndexByte(cmd, '\n') >= 0 {
		t.Fatal("the command spans lines")
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
