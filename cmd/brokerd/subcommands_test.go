package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	client "github.com/brokerd/brokerd/clients/go"
	"github.com/brokerd/brokerd/store"
	"go.etcd.io/bbolt"
)

func TestVersionOf(t *testing.T) {
	for _, c := range []struct {
		main     string
		settings map[string]string
		want     string
	}{
		{"v1.2.3", map[string]string{"vcs.revision": "0123456789abcdef0123"}, "v1.2.3"},
		{"v0.0.0-20261207143000-7c45cbd1234a+dirty", nil, "v0.0.0-20261207143000-7c45cbd1234a+dirty"},
		{"(devel)", map[string]string{"vcs.revision": "0123456789abcdef0123", "vcs.modified": "false"}, "0123456789ab"},
		{"(devel)", map[string]string{"vcs.revision": "0123456789abcdef0123", "vcs.modified": "true"}, "0123456789ab+dirty"},
		{"(devel)", nil, "dev"},
		{"", nil, "dev"},
	} {
		bi := &debug.BuildInfo{Main: debug.Module{Version: c.main}}
		for k, v := range c.settings {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: k, Value: v})
		}
		if got := versionOf(bi); got != c.want {
			t.Errorf("versionOf(%q, %v) = %q, want %q", c.main, c.settings, got, c.want)
		}
	}
}

// TestVersionEverywhere: `brokerd version`, welcome and brokerd_build_info
// name the same version, and -ldflags -X main.version sets it.
func TestVersionEverywhere(t *testing.T) {
	r := runBrokerd(t, 10*time.Second, nil, "version")
	f := strings.Fields(r.stdout)
	if r.code != 0 || len(f) < 3 || f[0] != "brokerd" {
		t.Fatalf("brokerd version: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	v := f[1]
	d := startDaemon(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, "ws://"+d.addr+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if got := cl.Info().Version; got != v {
		t.Errorf("welcome says version %q, brokerd version %q", got, v)
	}
	_, metrics := httpGet(t, d.url("/metrics"))
	re := regexp.MustCompile(`(?m)^brokerd_build_info\{goversion="go[^"]+",version="([^"]*)"\} 1$`)
	if m := re.FindStringSubmatch(metrics); m == nil || m[1] != v {
		t.Errorf("/metrics: brokerd_build_info %v, want version %q; lines:\n%s", m, v, grepLines(metrics, "build_info"))
	}

	bin := filepath.Join(t.TempDir(), "brokerd")
	args := []string{"build", "-o", bin, "-ldflags", "-X main.version=v9.8.7-test"}
	if raceBuild {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "brokerd v9.8.7-test ") {
		t.Fatalf("brokerd version with -ldflags: %q, %v", out, err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestSubcommandHelp(t *testing.T) {
	for _, name := range []string{"version", "token", "check", "pub", "sub", "health", "backup", "reload"} {
		r := runBrokerd(t, 10*time.Second, nil, name, "--help")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: brokerd "+name+" ") {
			t.Errorf("brokerd %s --help: status %d, stdout %q, stderr %q", name, r.code, r.stdout, r.stderr)
		}
		r = runBrokerd(t, 10*time.Second, nil, name, "--no-such-flag")
		if r.code != 2 || !strings.Contains(r.stderr, "--help") {
			t.Errorf("brokerd %s --no-such-flag: status %d, stderr %q", name, r.code, r.stderr)
		}
	}
	r := runBrokerd(t, 10*time.Second, nil, "help")
	if r.code != 0 || !strings.Contains(r.stdout, "token") || !strings.Contains(r.stdout, "check") {
		t.Errorf("brokerd help: status %d, stdout %q", r.code, r.stdout)
	}
}

// TestTokenAcceptedByBroker: tokens minted by brokerd token, with a secret
// and with a private key, are accepted by a running broker and grant
// exactly what they name.
func TestTokenAcceptedByBroker(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "jwt.secret")
	if err := os.WriteFile(secretFile, []byte("0123456789abcdef0123456789abcdef-token-test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	privFile := filepath.Join(dir, "key.pem")
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubFile := filepath.Join(dir, "pub.pem")
	if err := os.WriteFile(privFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name      string
		daemon    []string
		tokenArgs []string
		env       []string
	}{
		{"secret file", []string{"--jwt-secret-file", secretFile}, []string{"--jwt-secret-file", secretFile}, nil},
		{"secret from the environment", []string{"--jwt-secret-file", secretFile}, nil, []string{"BROKERD_JWT_SECRET_FILE=" + secretFile}},
		{"EC private key", []string{"--jwt-public-key", pubFile}, []string{"--private-key", privFile}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := startDaemon(t, t.TempDir(), c.daemon...)
			r := runBrokerd(t, 10*time.Second, c.env, append([]string{"token", "--sub", "alice", "--publish", "chat.>", "--subscribe", "chat.>,news.*", "--ttl", "10m"}, c.tokenArgs...)...)
			if r.code != 0 {
				t.Fatalf("brokerd token: status %d, stderr %q", r.code, r.stderr)
			}
			tok := strings.TrimSpace(r.stdout)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cl, err := client.Dial(ctx, "ws://"+d.addr+"/ws", client.WithToken(tok), client.WithLogger(slog.New(slog.DiscardHandler)))
			if err != nil {
				t.Fatalf("dial with the minted token: %v", err)
			}
			defer cl.Close()
			if res, err := cl.Publish(ctx, "chat.room1", []byte(`"hi"`)); err != nil || res.Offset != 1 {
				t.Fatalf("publish to chat.room1: %+v, %v", res, err)
			}
			if _, err := cl.Publish(ctx, "news.today", []byte(`1`)); !errors.Is(err, client.ErrForbidden) {
				t.Fatalf("publish to news.today: %v, want forbidden", err)
			}
			if _, err := cl.Subscribe(ctx, "news.today", func(*client.Message) {}, client.SubOptions{}); err != nil {
				t.Fatalf("subscribe to news.today: %v", err)
			}
			if _, err := cl.Subscribe(ctx, "other.x", func(*client.Message) {}, client.SubOptions{}); !errors.Is(err, client.ErrForbidden) {
				t.Fatalf("subscribe to other.x: %v, want forbidden", err)
			}
		})
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--jwt-secret-file", secretFile, "--publish", "a"}, "--sub is required"},
		{[]string{"--jwt-secret", "short", "--sub", "a", "--publish", "a"}, "at least 32"},
		{[]string{"--jwt-secret-file", secretFile, "--sub", "a", "--publish", "bad topic"}, "would reject"},
		{[]string{"--jwt-secret-file", secretFile, "--sub", "a"}, "--publish and/or --subscribe"},
		{[]string{"--jwt-secret-file", secretFile, "--private-key", privFile, "--sub", "a", "--publish", "a"}, "exactly one"},
		{[]string{"--private-key", pubFile, "--sub", "a", "--publish", "a"}, "not a private key"},
		{[]string{"--jwt-secret-file", secretFile, "--sub", "a", "--publish", "a", "--ttl", "-1s"}, "--ttl"},
	} {
		r := runBrokerd(t, 10*time.Second, nil, append([]string{"token"}, c.args...)...)
		if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, c.want) {
			t.Errorf("brokerd token %q: status %d, stdout %q, stderr %q; want status 2 and %q", c.args, r.code, r.stdout, r.stderr, c.want)
		}
	}
}

func TestCheckStore(t *testing.T) {
	dataDir := t.TempDir()
	d := startDaemon(t, dataDir)
	for i, topic := range []string{"check.a", "check.a", "check.a", "check.b", "check.b"} {
		if _, _, err := httpPublish(d.addr, topic, fmt.Sprintf("k%d", i), []byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	r := runBrokerd(t, 20*time.Second, nil, "check", "--data", dataDir)
	if r.code != 2 || !strings.Contains(r.stderr, "held by a running brokerd") {
		t.Fatalf("check of a running node's store: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	d.stop(15 * time.Second)

	r = runBrokerd(t, 20*time.Second, nil, "check", "--data", dataDir)
	if r.code != 0 || !strings.Contains(r.stdout, "topics 2, retained records 5") || !strings.Contains(r.stdout, "\nok: ") {
		t.Fatalf("check of a sound store: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runBrokerd(t, 20*time.Second, []string{"BROKERD_DATA=" + dataDir}, "check")
	if r.code != 0 {
		t.Fatalf("check with BROKERD_DATA: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// Remove a record from the middle of check.a's log: a gap.
	db, err := bbolt.Open(filepath.Join(dataDir, store.FileName), 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("records"))
		if b == nil {
			return errors.New("no records bucket")
		}
		c := b.Cursor()
		c.First()
		c.Next()
		return c.Delete()
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	r = runBrokerd(t, 20*time.Second, nil, "check", "--data", dataDir)
	if r.code != 1 || !strings.Contains(r.stdout, "FAILED") || !strings.Contains(r.stdout, `topic "check.a"`) {
		t.Fatalf("check of a store with a gap: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	if err := os.WriteFile(filepath.Join(dataDir, store.FileName), []byte(strings.Repeat("not a store ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runBrokerd(t, 20*time.Second, nil, "check", "--data", dataDir)
	if r.code != 1 || !strings.Contains(r.stdout, "FAILED") {
		t.Fatalf("check of a file that is no store: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runBrokerd(t, 20*time.Second, nil, "check", "--data", filepath.Join(dataDir, "missing"))
	if r.code != 2 || !strings.Contains(r.stderr, "no store at") {
		t.Fatalf("check of a missing directory: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// subLine is one line brokerd sub prints.
type subLine struct {
	Topic  string          `json:"topic"`
	Offset uint64          `json:"offset"`
	Time   string          `json:"time"`
	Data   json.RawMessage `json:"data"`
}

// TestPubSub: brokerd sub prints what brokerd pub publishes, as JSON lines
// with offsets, and resumes after its broker restarts with no gap or
// duplicate.
func TestPubSub(t *testing.T) {
	dataDir := t.TempDir()
	d := startDaemon(t, dataDir)
	wsURL := "ws://" + d.addr + "/ws"

	r := runBrokerd(t, 20*time.Second, nil, "pub", "--url", wsURL, "cli.t", `{"a":1}`)
	if r.code != 0 || strings.TrimSpace(r.stdout) != `{"topic":"cli.t","offset":1}` {
		t.Fatalf("pub one value: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	sub := exec.Command(daemonBin, "sub", "--from", "earliest", "--count", "5", "cli.t")
	sub.Env = daemonEnv("BROKERD_URL=" + wsURL)
	stdout, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	subErr := &lineWriter{}
	sub.Stderr = subErr
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var mu sync.Mutex
	var lines []subLine
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l subLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Errorf("sub printed %q: %v", sc.Text(), err)
				continue
			}
			mu.Lock()
			lines = append(lines, l)
			mu.Unlock()
		}
	}()
	go func() { <-readDone; exited <- sub.Wait() }()
	t.Cleanup(func() {
		_ = sub.Process.Kill()
		<-readDone
	})
	got := func() int { mu.Lock(); defer mu.Unlock(); return len(lines) }

	pub := exec.Command(daemonBin, "pub", "--url", wsURL, "cli.t")
	pub.Env = daemonEnv()
	pub.Stdin = strings.NewReader("plain text\n\n{\"b\":2}\n")
	out, err := pub.Output()
	if err != nil || string(out) != "{\"topic\":\"cli.t\",\"offset\":2}\n{\"topic\":\"cli.t\",\"offset\":3}\n" {
		t.Fatalf("pub from stdin: %q, %v", out, err)
	}
	eventually(t, 20*time.Second, "sub printed 3 messages", func() bool { return got() >= 3 })

	// Restart the broker on the same address: sub reconnects and resumes.
	d.stop(15 * time.Second)
	d = startDaemon(t, dataDir, "--addr", d.addr)
	r = runBrokerd(t, 20*time.Second, nil, "pub", "--url", wsURL, "cli.t", "4")
	if r.code != 0 {
		t.Fatalf("pub after the restart: status %d, stderr %q", r.code, r.stderr)
	}
	r = runBrokerd(t, 20*time.Second, nil, "pub", "--url", wsURL, "cli.t", "5")
	if r.code != 0 {
		t.Fatalf("pub after the restart: status %d, stderr %q", r.code, r.stderr)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("sub --count 5 exited with %v; stderr:\n%s", err, subErr)
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("sub did not exit after 5 messages; printed %d; stderr:\n%s", got(), subErr)
	}
	want := []string{`{"a":1}`, `"plain text"`, `{"b":2}`, `4`, `5`}
	mu.Lock()
	defer mu.Unlock()
	if len(lines) != len(want) {
		t.Fatalf("sub printed %d lines, want %d: %+v", len(lines), len(want), lines)
	}
	for i, l := range lines {
		if l.Topic != "cli.t" || l.Offset != uint64(i+1) || string(l.Data) != want[i] || l.Time == "" {
			t.Errorf("line %d: %+v, want offset %d data %s", i, l, i+1, want[i])
		}
	}
	if !strings.Contains(subErr.String(), "reconnected") {
		t.Errorf("sub's stderr does not report the reconnect:\n%s", subErr)
	}

	// Errors: a pattern is no topic to publish to; a broker that is gone.
	r = runBrokerd(t, 10*time.Second, nil, "pub", "--url", wsURL, "cli.*", "1")
	if r.code != 2 || !strings.Contains(r.stderr, "it is a pattern") {
		t.Errorf("pub to a pattern: status %d, stderr %q", r.code, r.stderr)
	}
	r = runBrokerd(t, 10*time.Second, nil, "pub", "--url", wsURL, "bad topic", "1")
	if r.code != 2 || !strings.Contains(r.stderr, "segments of letters") {
		t.Errorf("pub to an invalid topic: status %d, stderr %q", r.code, r.stderr)
	}
	d.stop(15 * time.Second)
	r = runBrokerd(t, 20*time.Second, nil, "pub", "--url", wsURL, "--connect-timeout", "2s", "cli.t", "1")
	if r.code != 1 || !strings.Contains(r.stderr, "connecting to") {
		t.Errorf("pub to a stopped broker: status %d, stderr %q", r.code, r.stderr)
	}
}

func TestHealth(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	r := runBrokerd(t, 10*time.Second, nil, "health", "--addr", d.addr)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "ready: ") {
		t.Fatalf("health of a ready node: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runBrokerd(t, 10*time.Second, []string{"BROKERD_ADDR=" + d.addr}, "health")
	if r.code != 0 {
		t.Fatalf("health with BROKERD_ADDR: status %d, stderr %q", r.code, r.stderr)
	}
	d.signal(syscall.SIGTERM)
	if !d.waitExit(15 * time.Second) {
		t.Fatal("brokerd did not stop")
	}
	r = runBrokerd(t, 10*time.Second, nil, "health", "--addr", d.addr)
	if r.code != 1 || r.stderr == "" {
		t.Fatalf("health of a stopped node: status %d, stderr %q", r.code, r.stderr)
	}
}

// TestSubLastSince: brokerd sub starts a topic at --last, and topics and
// patterns at --since (a time or a duration before now); the flags exclude
// each other, and a pattern refuses the topic-only ones.
func TestSubLastSince(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	wsURL := "ws://" + d.addr + "/ws"
	pub := func(topic string, lines ...string) {
		t.Helper()
		c := exec.Command(daemonBin, "pub", "--url", wsURL, topic)
		c.Env = daemonEnv()
		c.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("pub to %s: %v\n%s", topic, err, out)
		}
	}
	sub := func(args ...string) []subLine {
		t.Helper()
		r := runBrokerd(t, 30*time.Second, []string{"BROKERD_URL=" + wsURL}, append([]string{"sub"}, args...)...)
		if r.code != 0 {
			t.Fatalf("sub %q: status %d, stderr %q", args, r.code, r.stderr)
		}
		var lines []subLine
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			var sl subLine
			if err := json.Unmarshal([]byte(l), &sl); err != nil {
				t.Fatalf("sub %q printed %q: %v", args, l, err)
			}
			lines = append(lines, sl)
		}
		return lines
	}
	pub("ls.a", "1", "2", "3", "4", "5")
	pub("ls.b", "1", "2", "3")

	got := sub("--last", "2", "--count", "2", "ls.a")
	if len(got) != 2 || got[0].Offset != 4 || got[1].Offset != 5 || string(got[1].Data) != "5" {
		t.Fatalf("sub --last 2: %+v, want offsets 4 and 5", got)
	}

	// A pattern since an hour ago: every message of both topics, each
	// topic in order.
	got = sub("--since", "1h", "--count", "8", "ls.*")
	next := map[string]uint64{"ls.a": 1, "ls.b": 1}
	for _, l := range got {
		if l.Offset != next[l.Topic] {
			t.Fatalf("sub --since 1h ls.*: %+v: offset %d of %s, want %d", got, l.Offset, l.Topic, next[l.Topic])
		}
		next[l.Topic]++
	}
	if next["ls.a"] != 6 || next["ls.b"] != 4 {
		t.Fatalf("sub --since 1h ls.*: %+v, want ls.a 1-5 and ls.b 1-3", got)
	}

	// Since a time: only what was stored from then on, for a topic and
	// for a pattern.
	cut := time.Now().Add(2 * time.Millisecond)
	for !time.Now().After(cut.Add(time.Millisecond)) {
		time.Sleep(time.Millisecond)
	}
	pub("ls.b", "4", "5")
	got = sub("--since", cut.UTC().Format(time.RFC3339Nano), "--count", "2", "ls.*")
	if len(got) != 2 || got[0].Topic != "ls.b" || got[0].Offset != 4 || got[1].Offset != 5 {
		t.Fatalf("sub --since %s ls.*: %+v, want ls.b 4 and 5", cut.Format(time.RFC3339Nano), got)
	}
	got = sub("--since", cut.UTC().Format(time.RFC3339Nano), "--count", "1", "ls.b")
	if len(got) != 1 || got[0].Offset != 4 {
		t.Fatalf("sub --since %s ls.b: %+v, want offset 4", cut.Format(time.RFC3339Nano), got)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--from", "earliest", "--last", "2", "ls.a"}, "exclude each other"},
		{[]string{"--last", "3", "--since", "1m", "ls.a"}, "exclude each other"},
		{[]string{"--last", "10001", "ls.a"}, "want 1 to 10000"},
		{[]string{"--since", "yesterday", "ls.a"}, "want a time"},
		{[]string{"--since", "-5m", "ls.a"}, "must be positive"},
		{[]string{"--last", "2", "ls.*"}, "is a pattern"},
		{[]string{"--from", "1", "ls.>"}, "is a pattern"},
	} {
		r := runBrokerd(t, 20*time.Second, []string{"BROKERD_URL=" + wsURL}, append([]string{"sub"}, c.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("sub %q: status %d, stderr %q, want 2 and %q", c.args, r.code, r.stderr, c.want)
		}
	}
}

// TestBackup: brokerd backup copies a running node's store, which goes on
// serving; brokerd check passes on the copy, which holds what was
// published; a wrong token fails and leaves no file behind.
func TestBackup(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte("backup-test-admin-token-0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, t.TempDir(), "--admin-token-file", tokenFile)
	httpURL := "http://" + d.addr
	post := func(i int) uint64 {
		t.Helper()
		resp, err := http.Post(httpURL+"/v1/topics/bk.t", "application/json", strings.NewReader(fmt.Sprintf(`{"i":%d}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r struct{ Offset uint64 }
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 {
			t.Fatalf("publish %d: %d %v", i, resp.StatusCode, err)
		}
		return r.Offset
	}
	for i := 1; i <= 50; i++ {
		post(i)
	}

	out := filepath.Join(t.TempDir(), "copy", "brokerd.db")
	r := runBrokerd(t, 30*time.Second, nil, "backup", "--url", "ws://"+d.addr+"/ws", "--admin-token-file", tokenFile, "--out", out)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "wrote ") {
		t.Fatalf("backup: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if off := post(51); off != 51 {
		t.Fatalf("publish after the backup: offset %d, want 51", off)
	}
	r = runBrokerd(t, 30*time.Second, nil, "check", "--data", filepath.Dir(out))
	if r.code != 0 {
		t.Fatalf("check of the copy: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// The copy is a store: a broker on it serves what was published.
	c := startDaemon(t, filepath.Dir(out))
	resp, err := http.Get("http://" + c.addr + "/v1/topics/bk.t/messages?from=1&limit=100")
	if err != nil {
		t.Fatal(err)
	}
	var page struct {
		Head     uint64
		Messages []struct{ Offset uint64 }
	}
	err = json.NewDecoder(resp.Body).Decode(&page)
	resp.Body.Close()
	if err != nil || page.Head != 50 || len(page.Messages) != 50 {
		t.Fatalf("the copy's bk.t: head %d, %d messages (%v), want 50", page.Head, len(page.Messages), err)
	}

	bad := filepath.Join(t.TempDir(), "bad.db")
	r = runBrokerd(t, 30*time.Second, []string{"BROKERD_ADMIN_TOKEN=not-the-admin-token-at-all"}, "backup", "--url", httpURL, "--out", bad)
	if r.code != 1 || !strings.Contains(r.stderr, "401") {
		t.Errorf("backup with a wrong token: status %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("a failed backup left %s behind (%v)", bad, err)
	}
	if _, err := os.Stat(bad + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("a failed backup left %s.tmp behind (%v)", bad, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--admin-token-file", tokenFile}, "--out is required"},
		{[]string{"--out", bad}, "admin token is required"},
		{[]string{"--url", "ftp://x", "--admin-token-file", tokenFile, "--out", bad}, "want http or https"},
	} {
		r := runBrokerd(t, 10*time.Second, nil, append([]string{"backup"}, c.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("backup %q: status %d, stderr %q, want 2 and %q", c.args, r.code, r.stderr, c.want)
		}
	}
}
