package main

import (
	"bytes"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestStartupErrors runs brokerd with bad flags, environment and data
// directories: each must exit with the documented status (2 for usage, 1
// for a run that cannot start) and a message naming the problem.
func TestStartupErrors(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, []byte("not a directory\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  []string
		code int
		want []string // each a regexp the stderr must match
	}{
		{name: "unknown flag", args: []string{"--no-such-flag"}, code: 2,
			want: []string{`no-such-flag`, `--help`}},
		{name: "stray argument", args: []string{"--addr", "127.0.0.1:0", "serve"}, code: 2,
			want: []string{`unexpected argument "serve"`}},
		{name: "bad duration", args: []string{"--heartbeat=abc"}, code: 2,
			want: []string{`"abc"`, `heartbeat`}},
		{name: "heartbeat under a second", args: []string{"--heartbeat=10ms"}, code: 2,
			want: []string{`--heartbeat must be at least 1s`}},
		{name: "bad log format", args: []string{"--log-format=xml"}, code: 2,
			want: []string{`--log-format must be text or json, got "xml"`}},
		{name: "bad log level", args: []string{"--log-level=loud"}, code: 2,
			want: []string{`--log-level must be .*"loud"`}},
		{name: "zero max subscriptions", args: []string{"--max-subscriptions=0"}, code: 2,
			want: []string{`--max-subscriptions must be positive, got 0`}},
		{name: "bad integer", args: []string{"--queue-bytes=lots"}, code: 2,
			want: []string{`"lots"`, `queue-bytes`}},
		{name: "two errors", args: []string{"--max-subscriptions=0", "--shutdown-timeout=-1s"}, code: 2,
			want: []string{`--max-subscriptions must be positive`, `--shutdown-timeout must be positive`}},
		{name: "bad env duration", env: []string{"BROKERD_HEARTBEAT=abc"}, code: 2,
			want: []string{`BROKERD_HEARTBEAT="abc"`}},
		{name: "bad env value", env: []string{"BROKERD_MAX_SUBSCRIPTIONS=0"}, code: 2,
			want: []string{`BROKERD_MAX_SUBSCRIPTIONS must be positive, got 0`}},
		{name: "bad env log format", env: []string{"BROKERD_LOG_FORMAT=xml"}, code: 2,
			want: []string{`BROKERD_LOG_FORMAT must be text or json, got "xml"`}},
		{name: "data is a regular file", args: []string{"--addr", "127.0.0.1:0", "--data", file}, code: 1,
			want: []string{regexp.QuoteMeta(file), `not a directory`}},
		{name: "env data is a regular file", args: []string{"--addr", "127.0.0.1:0"}, env: []string{"BROKERD_DATA=" + file}, code: 1,
			want: []string{regexp.QuoteMeta(file), `not a directory`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := runBrokerd(t, 10*time.Second, tt.env, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit status %d, want %d; stderr:\n%s", r.code, tt.code, r.stderr)
			}
			for _, w := range tt.want {
				if !regexp.MustCompile(w).MatchString(r.stderr) {
					t.Errorf("stderr does not match %q:\n%s", w, r.stderr)
				}
			}
			if !strings.HasPrefix(r.stderr, "brokerd: ") {
				t.Errorf("stderr should start with \"brokerd: \":\n%s", r.stderr)
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 3 {
				t.Errorf("a startup error should be a short message, got %d lines:\n%s", n+1, r.stderr)
			}
		})
	}
}

// TestFlagsWinOverEnv: with BROKERD_ADDR on a busy port, the env alone
// makes brokerd fail, and a flag overrides it.
func TestFlagsWinOverEnv(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	env := []string{"BROKERD_ADDR=" + busy.Addr().String(), "BROKERD_LOG_FORMAT=xml"}

	r := runBrokerd(t, 10*time.Second, env[:1], "--data", t.TempDir())
	if r.code != 1 || !strings.Contains(r.stderr, "listen on "+busy.Addr().String()) {
		t.Errorf("with only BROKERD_ADDR on a busy port: exit %d, stderr:\n%s\nwant exit 1 naming the address", r.code, r.stderr)
	}

	// startDaemonWith passes --addr, --data and --log-format: they win.
	d := startDaemonWith(t, t.TempDir(), append(env, "BROKERD_DATA="+busyFile(t)))
	if d.addr == busy.Addr().String() {
		t.Fatalf("listening on %s, the address from the environment", d.addr)
	}
	if code, body := httpGet(t, d.url("/healthz")); code != 200 {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	d.stop(10 * time.Second)
}

// busyFile returns a regular file, unusable as a data directory.
func busyFile(t *testing.T) string {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestDataDirInUse: a second brokerd on the data directory of a running
// one gives up within a few seconds, saying the directory is in use.
func TestDataDirInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := startDaemon(t, dir)
	r := runBrokerd(t, 10*time.Second, nil, "--addr", "127.0.0.1:0", "--data", dir)
	if r.code != 1 {
		t.Errorf("second brokerd: exit %d, want 1; stderr:\n%s", r.code, r.stderr)
	}
	if !regexp.MustCompile(`(?i)another brokerd|in use|locked`).MatchString(r.stderr) || !strings.Contains(r.stderr, dir) {
		t.Errorf("second brokerd should say that %s is in use; stderr:\n%s", dir, r.stderr)
	}
	if r.took > 5*time.Second {
		t.Errorf("second brokerd took %v to give up", r.took)
	}
	// The first one is unharmed.
	c := mustDial(t, first.addr)
	if ev := c.request(t, 1, pubCmd(1, "inuse.t", []byte(`1`))); ev.Op != "ok" {
		t.Fatalf("first brokerd after the second gave up: pub got %s", ev)
	}
	first.stop(10 * time.Second)
}

// TestNotAStore: a data directory whose brokerd.db is something else is
// refused, and the file is left as it was.
func TestNotAStore(t *testing.T) {
	t.Parallel()
	random := make([]byte, 64<<10)
	_, _ = rand.Read(random)
	for name, content := range map[string][]byte{
		"random":     random,
		"short text": []byte("hello\n"),
		"zeros":      make([]byte, 16<<10),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "brokerd.db")
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			r := runBrokerd(t, 10*time.Second, nil, "--addr", "127.0.0.1:0", "--data", dir)
			if r.code != 1 {
				t.Errorf("exit %d, want 1; stderr:\n%s", r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, "not a brokerd") || !strings.Contains(r.stderr, path) {
				t.Errorf("stderr should say %s is not a brokerd store:\n%s", path, r.stderr)
			}
			if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, content) {
				t.Errorf("the file was changed (err %v)", err)
			}
		})
	}
}

// helpFlags lists every flag with its default as --help must show it.
// The node's default is the host name.
var helpFlags = map[string]string{
	"addr":                   ":8080",
	"data":                   "./data",
	"allowed-origins":        "",
	"node":                   defaultNode(),
	"log-format":             "text",
	"log-level":              "info",
	"shutdown-timeout":       "10s",
	"heartbeat":              "25s",
	"pong-timeout":           "10s",
	"write-timeout":          "10s",
	"max-frame-bytes":        "1048576",
	"max-message-bytes":      "1048576",
	"max-subscriptions":      "512",
	"max-pattern-topics":     "10000",
	"max-topics":             "1000000",
	"max-topics-per-user":    "0",
	"topic-idle":             "10m0s",
	"max-commands-per-frame": "1000",
	"queue-messages":         "1024",
	"queue-bytes":            "4194304",
	"max-pending-publishes":  "1024",
	"max-page-bytes":         "4194304",
	"max-pending-bytes":      "8388608",
	"pending-bytes":          "268435456",
	"http-max-header-bytes":  "16384",
	"http-header-timeout":    "5s",
	"http-read-timeout":      "30s",
	"http-write-timeout":     "10s",
	"http-idle-timeout":      "2m0s",
	"max-http-connections":   "2048",
	"max-http-requests":      "64",
	"config":                 "",
	"tls-cert":               "",
	"tls-key":                "",
	"jwt-secret":             "",
	"jwt-secret-file":        "",
	"jwt-public-key":         "",
	"admin-token":            "",
	"admin-token-file":       "",
	"auth-timeout":           "5s",
	"max-unauth-connections": "1000",
	"max-connections":        "10000",
	"conn-rate-per-ip":       "1000",
	"conn-burst-per-ip":      "2000",
	"trusted-proxies":        "",
	"command-rate":           "50000",
	"command-burst":          "100000",
	"compression":            "false",
	"retention-max-age":      "168h0m0s",
	"retention-max-bytes":    "1073741824",
	"retention-max-messages": "10000000",
	"dedup-window":           "2m0s",
	"nats":                   "",
	"cluster":                "brokerd",
	"partitions":             "64",
	"lease-ttl":              "5s",
	"unclean-takeover-after": "0s",
	"replicas":               "0",
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"--help", "-h"} {
		r := runBrokerd(t, 10*time.Second, nil, arg)
		if r.code != 0 {
			t.Errorf("%s: exit %d, want 0; stderr:\n%s", arg, r.code, r.stderr)
		}
		line := regexp.MustCompile(`(?m)^  --([a-z-]+) \(env (BROKERD_[A-Z_]+), default "(.*)"\)\n {6}\S`)
		listed := map[string]bool{}
		for _, m := range line.FindAllStringSubmatch(r.stdout, -1) {
			name, env, def := m[1], m[2], m[3]
			listed[name] = true
			want, ok := helpFlags[name]
			switch {
			case !ok:
				t.Errorf("%s lists --%s, which this test does not know: add it to helpFlags", arg, name)
			case def != want:
				t.Errorf("%s: --%s default %q, want %q", arg, name, def, want)
			}
			if wantEnv := "BROKERD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")); env != wantEnv {
				t.Errorf("%s: --%s env %s, want %s", arg, name, env, wantEnv)
			}
		}
		for name := range helpFlags {
			if !listed[name] {
				t.Errorf("%s does not list --%s with its env name, default and a description:\n%s", arg, name, r.stdout)
			}
		}
	}
}

func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir())
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, d.url(path)); code != 200 {
			t.Errorf("GET %s: %d %q, want 200", path, code, body)
		}
	}
	c := mustDial(t, d.addr)
	if c.welcome.Node != "test-node" || c.welcome.Heartbeat != 25 {
		t.Errorf("welcome %s, want node test-node and heartbeat 25", c.welcome)
	}
	if ev := c.request(t, 7, `{"op":"ping","id":7}`); ev.Op != "pong" {
		t.Errorf("ping: got %s", ev)
	}
	d.stop(10 * time.Second)
}
