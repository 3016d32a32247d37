package clienttest_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	client "github.com/brokerd/brokerd/clients/go"
)

// Presence in the Go client against a brokerd in the process.

// members records what OnJoin and OnLeave receive.
type members struct {
	mu     sync.Mutex
	events []string // "join <session>", "leave <session>"
	last   map[string]client.Member
}

func (m *members) join(x client.Member) { m.add("join", x) }

func (m *members) leave(x client.Member) { m.add("leave", x) }

func (m *members) add(op string, x client.Member) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events = append(m.events, op+" "+x.Session)
	if m.last == nil {
		m.last = make(map[string]client.Member)
	}
	m.last[op+" "+x.Session] = x
}

func (m *members) wait(t *testing.T, ev string) client.Member {
	t.Helper()
	var got client.Member
	eventually(t, ev, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		x, ok := m.last[ev]
		got = x
		return ok
	})
	return got
}

func (m *members) list() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.events)
}

func sessions(p client.Presence) []string {
	var s []string
	for _, m := range p.Members {
		s = append(s, m.Session)
	}
	slices.Sort(s)
	return s
}

// listed waits until c lists itself in topic's presence, as an app asks
// who is there once it has joined; the tests do so before another member
// joins, so that they do not depend on whether the broker registers a
// member before or after it sends the ok of its sub.
func listed(t *testing.T, c *client.Client, topic string) {
	t.Helper()
	eventually(t, "the client listed in the presence of "+topic, func() bool {
		p, err := c.Presence(context.Background(), topic)
		return err == nil && slices.Contains(sessions(p), c.Info().Session)
	})
}

func TestPresence(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	a := dial(t, tb)
	if !a.Info().HasFeature("presence") {
		t.Fatalf("features %v lack presence", a.Info().Features)
	}
	var seen members
	sa, err := a.Subscribe(ctx, "room.lobby", func(*client.Message) {}, client.SubOptions{
		Presence: true, PresenceInfo: json.RawMessage(`{"name": "Ada"}`), OnJoin: seen.join, OnLeave: seen.leave,
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Presence(ctx, "room.lobby")
	if err != nil {
		t.Fatal(err)
	}
	if p.Topic != "room.lobby" || p.Count != 1 || len(p.Members) != 1 || p.Members[0].Session != a.Info().Session ||
		p.Members[0].Node != "test" || p.Members[0].User != "" || string(p.Members[0].Info) != `{"name":"Ada"}` {
		t.Fatalf("Presence alone: %+v", p)
	}

	b := dial(t, tb)
	sb, err := b.Subscribe(ctx, "room.lobby", func(*client.Message) {}, client.SubOptions{Presence: true, PresenceInfo: json.RawMessage(`"Bob"`)})
	if err != nil {
		t.Fatal(err)
	}
	bs := b.Info().Session
	if m := seen.wait(t, "join "+bs); m.Node != "test" || string(m.Info) != `"Bob"` {
		t.Fatalf("join of b: %+v", m)
	}
	p, err = b.Presence(ctx, "room.lobby")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{a.Info().Session, bs}; p.Count != 2 || !slices.Equal(sessions(p), slices.Sorted(slices.Values(want))) {
		t.Fatalf("Presence of two: %+v, want %v", p, want)
	}

	if err := sb.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	if m := seen.wait(t, "leave "+bs); string(m.Info) != `"Bob"` {
		t.Fatalf("leave of b: %+v", m)
	}

	// A client that closes leaves too.
	c := dial(t, tb)
	if _, err := c.Subscribe(ctx, "room.lobby", func(*client.Message) {}, client.SubOptions{Presence: true}); err != nil {
		t.Fatal(err)
	}
	cs := c.Info().Session
	seen.wait(t, "join "+cs)
	_ = c.Close()
	if m := seen.wait(t, "leave "+cs); m.Info != nil {
		t.Fatalf("leave of c: %+v", m)
	}
	if got, want := seen.list(), []string{"join " + bs, "leave " + bs, "join " + cs, "leave " + cs}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v (a is not told of itself)", got, want)
	}
	eventually(t, "a alone again", func() bool {
		p, err := a.Presence(ctx, "room.lobby")
		return err == nil && p.Count == 1
	})
	if sa.PresenceMuted() {
		t.Fatal("muted with three members")
	}

	// Presence is per topic; a pattern is refused before anything is sent.
	if _, err := a.Presence(ctx, "room.*"); !errors.Is(err, client.ErrInvalidTopic) {
		t.Fatalf("Presence of a pattern: %v", err)
	}
	if _, err := a.Subscribe(ctx, "room.*", func(*client.Message) {}, client.SubOptions{Presence: true}); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("pattern with Presence: %v", err)
	}
}

// A presence subscription that reconnects comes back as the new session:
// the others see the old one leave and the new one join.
func TestPresenceAfterReconnect(t *testing.T) {
	tb := startBroker(t)
	ctx := ctxT(t)
	var seen members
	watcher := dial(t, tb)
	if _, err := watcher.Subscribe(ctx, "room.r", func(*client.Message) {}, client.SubOptions{Presence: true, OnJoin: seen.join, OnLeave: seen.leave}); err != nil {
		t.Fatal(err)
	}
	listed(t, watcher, "room.r")
	infos := make(chan client.ConnInfo, 4)
	m := dial(t, tb, client.WithOnConnect(func(ci client.ConnInfo) { infos <- ci }))
	first := (<-infos).Session
	if _, err := m.Subscribe(ctx, "room.r", func(*client.Message) {}, client.SubOptions{Presence: true, PresenceInfo: json.RawMessage(`[1,2]`)}); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, "join "+first)
	tb.dropConns() // both clients reconnect
	var second string
	select {
	case ci := <-infos:
		second = ci.Session
	case <-time.After(waitTimeout):
		t.Fatal("no reconnect")
	}
	// The watcher reconnected too, and may have joined after m: it asks.
	eventually(t, "the new session listed, the old one gone", func() bool {
		p, err := watcher.Presence(ctx, "room.r")
		if err != nil || p.Count != 2 || slices.Contains(sessions(p), first) {
			return false
		}
		for _, x := range p.Members {
			if x.Session == second {
				return string(x.Info) == `[1,2]`
			}
		}
		return false
	})
}

// teamAuth grants each token (its subject) the right to subscribe to
// team.>.
type teamAuth struct{}

func (teamAuth) Verify(tok string) (*broker.Grant, error) {
	if tok != "alice" && tok != "bob" {
		return nil, broker.ErrTokenInvalid
	}
	return &broker.Grant{Subject: tok, Expires: time.Now().Add(time.Hour), Subscribe: []string{"team.>"}}, nil
}

func TestPresenceAuth(t *testing.T) {
	tb := startBroker(t, func(c *broker.Config) { c.Auth = teamAuth{} })
	ctx := ctxT(t)
	alice := dial(t, tb, client.WithToken("alice"))
	bob := dial(t, tb, client.WithToken("bob"))
	var seen members
	if _, err := alice.Subscribe(ctx, "team.a", func(*client.Message) {}, client.SubOptions{Presence: true, OnJoin: seen.join}); err != nil {
		t.Fatal(err)
	}
	listed(t, alice, "team.a")
	if _, err := bob.Subscribe(ctx, "team.a", func(*client.Message) {}, client.SubOptions{Presence: true}); err != nil {
		t.Fatal(err)
	}
	if m := seen.wait(t, "join "+bob.Info().Session); m.User != "bob" {
		t.Fatalf("join of bob: %+v", m)
	}
	p, err := bob.Presence(ctx, "team.a")
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, m := range p.Members {
		users = append(users, m.User)
	}
	slices.Sort(users)
	if !slices.Equal(users, []string{"alice", "bob"}) {
		t.Fatalf("users %v", users)
	}
	if _, err := alice.Presence(ctx, "other.room"); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("Presence without the right to subscribe: %v", err)
	}
	if _, err := alice.Subscribe(ctx, "other.room", func(*client.Message) {}, client.SubOptions{Presence: true}); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("Subscribe with Presence without the right: %v", err)
	}
}

// Above the mute threshold (2 here) the members are told once with
// presence_muted and get no more joins and leaves; listing still counts
// every member.
func TestPresenceMuted(t *testing.T) {
	tb := startBroker(t, func(c *broker.Config) { c.PresenceMuteAbove = 2 })
	ctx := ctxT(t)
	type member struct {
		c     *client.Client
		sub   *client.Subscription
		seen  members
		muted chan struct{}
	}
	join := func() *member {
		m := &member{c: dial(t, tb), muted: make(chan struct{}, 4)}
		var err error
		m.sub, err = m.c.Subscribe(ctx, "room.big", func(*client.Message) {}, client.SubOptions{
			Presence: true, OnJoin: m.seen.join, OnLeave: m.seen.leave,
			OnPresenceMuted: func() { m.muted <- struct{}{} },
		})
		if err != nil {
			t.Fatal(err)
		}
		listed(t, m.c, "room.big")
		return m
	}
	a := join()
	b := join()
	a.seen.wait(t, "join "+b.c.Info().Session)
	if a.sub.PresenceMuted() {
		t.Fatal("muted with two members")
	}
	c := join() // the third: above 2
	for i, m := range []*member{a, b, c} {
		select {
		case <-m.muted:
		case <-time.After(waitTimeout):
			t.Fatalf("member %d was not told presence_muted", i)
		}
		if !m.sub.PresenceMuted() {
			t.Fatalf("member %d: PresenceMuted false after OnPresenceMuted", i)
		}
	}
	d := join()
	select {
	case <-d.muted:
	case <-time.After(waitTimeout):
		t.Fatal("a member joining a muted topic was not told")
	}
	eventually(t, "four counted", func() bool {
		p, err := a.c.Presence(ctx, "room.big")
		return err == nil && p.Count == 4 && len(p.Members) == 4
	})
	if err := d.sub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "three counted", func() bool {
		p, err := a.c.Presence(ctx, "room.big")
		return err == nil && p.Count == 3
	})
	// a was told of b's join only: not of c's (it muted the topic), d's
	// or d's leave; and presence_muted once.
	if got, want := a.seen.list(), []string{"join " + b.c.Info().Session}; !slices.Equal(got, want) {
		t.Fatalf("a saw %v, want %v", got, want)
	}
	select {
	case <-a.muted:
		t.Fatal("a was told presence_muted twice")
	default:
	}
}
