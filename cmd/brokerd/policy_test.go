package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/metrics"
	"github.com/brokerd/brokerd/store"
)

const examplePolicies = `
retention-max-age: 48h
policies:
  - match: "orders.>"
    retention: {max-age: 720h}
  - match: "chat.room.*"
    name: rooms
    storage: durable
    retention: {max-age: 24h, max-messages: 1000, max-bytes: 1048576}
    max-message-bytes: 4096
    max-topics: 5000
    publish-rate: 20
    publish-burst: 40
    pattern-replay: false
`

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "brokerd.yaml")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestConfigPolicies: the policies of the config file, every field, and
// the global retention flags as the default policy.
func TestConfigPolicies(t *testing.T) {
	file := writeConfig(t, examplePolicies)
	c, err := parseConfig([]string{"--config", file, "--retention-max-messages", "500"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ps, err := c.policies()
	if err != nil {
		t.Fatal(err)
	}
	rooms := ps.For("chat.room.1")
	want := broker.Policy{Name: "rooms", Match: "chat.room.*",
		Retention:       broker.Retention{MaxAge: 24 * time.Hour, MaxBytes: 1 << 20, MaxMessages: 1000},
		MaxMessageBytes: 4096, MaxTopics: 5000, PublishRate: 20, PublishBurst: 40, NoPatternReplay: true}
	if *rooms != want {
		t.Errorf("chat.room.1: %+v, want %+v", *rooms, want)
	}
	if p := ps.For("orders.eu.1"); p.Name != "orders.>" || p.Retention != (broker.Retention{MaxAge: 720 * time.Hour}) || p.NoPatternReplay {
		t.Errorf("orders.eu.1: %+v", *p)
	}
	def := ps.For("chat.lobby")
	if def.Name != broker.DefaultPolicyName || def.Retention != (broker.Retention{MaxAge: 48 * time.Hour, MaxBytes: 1 << 30, MaxMessages: 500}) {
		t.Errorf("default policy: %+v", *def)
	}

	if r := retentionOf(func() *broker.Policies { return ps })("orders.x"); r != (store.Retention{MaxAge: 720 * time.Hour}) {
		t.Errorf("orders.x store retention %+v", r)
	}

	// The store's retention pass applies each topic's policy; fields the
	// policy leaves out come from the flags.
	small, err := broker.NewPolicies(broker.Policy{}, []broker.Policy{{Match: "a.*", Retention: broker.Retention{MaxMessages: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	so := c.storeOptions(slog.New(slog.DiscardHandler), metrics.New())
	so.RetentionInterval = -1
	so.RetentionOf = retentionOf(func() *broker.Policies { return small })
	st, err := store.Open(t.TempDir(), so)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, topic := range []string{"a.x", "b.x"} {
		for range 5 {
			if _, err := st.Append(context.Background(), topic, []byte("1"), ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := st.RunRetention(); err != nil {
		t.Fatal(err)
	}
	// b.x: max-messages 500 from --retention-max-messages keeps all.
	for topic, earliest := range map[string]uint64{"a.x": 4, "b.x": 1} {
		if info, _, _ := st.Topic(topic); info.Earliest != earliest {
			t.Errorf("%s after retention: %+v, want earliest %d", topic, info, earliest)
		}
	}
}

// TestConfigPolicyErrors: a bad policy is refused with an error naming
// the policy and the field, at parse time and at startup.
func TestConfigPolicyErrors(t *testing.T) {
	for body, want := range map[string]string{
		"policies: {match: a}\n":                                     `policies: a list`,
		"policies: [a]\n":                                            `policies\[0\]: a mapping`,
		"policies: [{retention: {max-age: 1h}}]\n":                   `policies\[0\]: match: missing`,
		"policies: [{match: \"a..b\"}]\n":                            `policies\[0\] \(match "a..b"\): match: "a..b" is not`,
		"policies: [{match: a}, {match: a}]\n":                       `policies\[1\] \(match "a"\): match: another policy`,
		"policies: [{match: a, retention: {max-age: soon}}]\n":       `policies\[0\] \(match "a"\): retention.max-age: "soon"`,
		"policies: [{match: a, retention: {max-age: -1s}}]\n":        `retention.max-age: "-1s"`,
		"policies: [{match: a, retention: {max-bytes: 0}}]\n":        `retention.max-bytes: 0: a positive`,
		"policies: [{match: a, retention: {max-messages: x}}]\n":     `retention.max-messages: x`,
		"policies: [{match: a, retention: {max-msgs: 1}}]\n":         `retention: unknown field\(s\) max-msgs`,
		"policies: [{match: a, retention: 5}]\n":                     `retention: a mapping`,
		"policies: [{match: a, max-message-bytes: -1}]\n":            `max-message-bytes: -1`,
		"policies: [{match: a, max-topics: 0}]\n":                    `policies\[0\] \(match "a"\): max-topics: 0: a positive whole number`,
		"policies: [{match: a, max-message-bytes: 2000000}]\n":       `policies\[0\] \(match "a"\): max-message-bytes 2000000 is larger than --max-message-bytes`,
		"policies: [{match: a, publish-rate: fast}]\n":               `publish-rate: fast`,
		"policies: [{match: a, publish-burst: 0}]\n":                 `publish-burst: 0`,
		"policies: [{match: a, pattern-replay: maybe}]\n":            `pattern-replay: maybe: true or false`,
		"policies: [{match: a, storage: disk}]\n":                    `storage: "disk"`,
		"policies: [{match: a, name: default}]\n":                    `name: "default" is taken`,
		"policies: [{match: a, retention-max-age: 1h}]\n":            `unknown field\(s\) retention-max-age`,
		"policies: [{match: a}, {match: b, max-message-bytes: 0}]\n": `policies\[1\] \(match "b"\): max-message-bytes: 0`,
	} {
		file := writeConfig(t, body)
		_, err := parseConfig([]string{"--config", file}, func(string) string { return "" })
		if err == nil || !regexp.MustCompile(want).MatchString(err.Error()) {
			t.Errorf("config %q: err %v, want it to match %q", body, err, want)
		}
		if err != nil && !strings.Contains(err.Error(), file) {
			t.Errorf("config %q: err %v does not name the file", body, err)
		}
	}
	file := writeConfig(t, "policies: [{match: \"chat.*\", retention: {max-age: soon}}]\n")
	r := runBrokerd(t, 10*time.Second, nil, "--addr", "127.0.0.1:0", "--data", t.TempDir(), "--config", file)
	if r.code != 2 || !strings.Contains(r.stderr, `policies[0] (match "chat.*"): retention.max-age: "soon"`) {
		t.Fatalf("startup with a bad policy: exit %d, stderr:\n%s", r.code, r.stderr)
	}
}
