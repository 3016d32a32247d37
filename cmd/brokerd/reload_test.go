package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tokenFor signs a token allowing everything with the secret in
// secretFile, as brokerd token does.
func tokenFor(t *testing.T, secretFile string) string {
	t.Helper()
	tok, err := mintToken("", secretFile, "", "", "u", []string{">"}, []string{">"}, 0, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// postAs publishes over HTTP with a bearer token and an Origin.
func postAs(t *testing.T, d *daemon, topic, body, token, origin string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, d.url("/v1/topics/"+topic), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Origin", origin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReload: SIGHUP reads the config file again; policies, allowed
// origins and the JWT key change while a client stays connected; a bad
// file, or one that turns auth off, is refused with a log line, the
// running configuration stays, and brokerd_config_reloads_total counts
// both outcomes.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	secretA, secretB := filepath.Join(dir, "a.secret"), filepath.Join(dir, "b.secret")
	for f, s := range map[string]string{secretA: strings.Repeat("a", 40), secretB: strings.Repeat("b", 40)} {
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "brokerd.yaml")
	write := func(origin, secret string, maxBytes int, extra string) {
		t.Helper()
		body := "allowed-origins: [\"" + origin + "\"]\njwt-secret-file: " + secret +
			"\npolicies:\n  - match: \"small.>\"\n    max-message-bytes: " + itoa(maxBytes) + "\n" + extra
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("https://a.example", secretA, 10, "")
	d := startDaemon(t, t.TempDir(), "--config", file)
	tokA, tokB := tokenFor(t, secretA), tokenFor(t, secretB)

	c := mustDial(t, d.addr)
	defer c.close()
	if ev := c.request(t, 1, `{"op":"auth","id":1,"token":"`+tokA+`"}`); ev.Op != "ok" {
		t.Fatalf("auth: %s", ev)
	}
	pubSmall := func(id uint64, n int) *event {
		return c.request(t, id, pubCmd(id, "small.x", []byte(`"`+strings.Repeat("x", n-2)+`"`)))
	}
	if ev := pubSmall(2, 11); ev.Code != "message_too_large" {
		t.Fatalf("11 bytes under max-message-bytes 10: %s", ev)
	}
	if code := postAs(t, d, "o", "1", tokA, "https://b.example"); code != http.StatusForbidden {
		t.Fatalf("origin b before the reload: %d", code)
	}
	reloads := func(result string, n int) {
		t.Helper()
		want := `brokerd_config_reloads_total{result="` + result + `"} ` + itoa(n)
		eventually(t, 15*time.Second, want, func() bool {
			_, body := httpGet(t, d.url("/metrics"))
			return strings.Contains(body, want+"\n")
		})
	}

	write("https://b.example", secretB, 100, "")
	d.signal(syscall.SIGHUP)
	reloads("ok", 1)
	if ev := pubSmall(3, 11); ev.Op != "ok" {
		t.Fatalf("11 bytes after the reload to max-message-bytes 100: %s", ev)
	}
	if code := postAs(t, d, "o", "1", tokB, "https://b.example"); code != http.StatusOK {
		t.Fatalf("origin b with a token of the new key: %d", code)
	}
	if code := postAs(t, d, "o", "1", tokA, "https://b.example"); code != http.StatusUnauthorized {
		t.Fatalf("a token of the old key after the reload: %d", code)
	}
	if code := postAs(t, d, "o", "1", tokB, "https://a.example"); code != http.StatusForbidden {
		t.Fatalf("origin a after the reload: %d", code)
	}

	// A bad policy: refused, the running configuration stays.
	write("https://a.example", secretA, 10, "  - match: \"a..b\"\n")
	d.signal(syscall.SIGHUP)
	reloads("error", 1)
	eventually(t, 15*time.Second, "the refusal's log line", func() bool {
		s := d.stderr.String()
		return strings.Contains(s, "configuration reload refused") && strings.Contains(s, `policies[1] (match \"a..b\"): match:`)
	})
	if ev := pubSmall(4, 100); ev.Op != "ok" {
		t.Fatalf("100 bytes after a refused reload: %s", ev)
	}
	if ev := pubSmall(5, 101); ev.Code != "message_too_large" {
		t.Fatalf("101 bytes after a refused reload: %s", ev)
	}
	if code := postAs(t, d, "o", "1", tokB, "https://b.example"); code != http.StatusOK {
		t.Fatalf("after a refused reload: %d", code)
	}

	// Turning auth off takes a restart.
	if err := os.WriteFile(file, []byte("policies: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	reloads("error", 2)
	if code := postAs(t, d, "o", "1", tokA, ""); code != http.StatusUnauthorized {
		t.Fatalf("auth after a refused reload: %d", code)
	}
	if ev := c.request(t, 6, `{"op":"ping","id":6}`); ev.Op != "pong" {
		t.Fatalf("the client after the reloads: %s", ev)
	}
	d.stop(15 * time.Second)
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestReloadCommand: brokerd reload asks a running node to read its
// configuration again (POST /v1/admin/reload) and says what it applied,
// the options that need a restart included; a bad file is refused with its
// reason and exit status 1, and the running configuration stays; without
// the admin token nothing is reloaded.
func TestReloadCommand(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tokenFile, []byte("reload-test-admin-token-0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "brokerd.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	policy := func(maxBytes int) string {
		return "policies:\n  - match: \"small.>\"\n    max-message-bytes: " + itoa(maxBytes) + "\n"
	}
	write(policy(10))
	d := startDaemon(t, t.TempDir(), "--config", file, "--admin-token-file", tokenFile)
	c := mustDial(t, d.addr)
	defer c.close()
	var id uint64
	pub := func(n int) *event {
		t.Helper()
		id++
		return c.request(t, id, pubCmd(id, "small.x", []byte(`"`+strings.Repeat("x", n-2)+`"`)))
	}
	reload := func(env []string, args ...string) result {
		t.Helper()
		return runBrokerd(t, 30*time.Second, env, append([]string{"reload", "--url", "http://" + d.addr}, args...)...)
	}
	if ev := pub(11); ev.Code != "message_too_large" {
		t.Fatalf("11 bytes under max-message-bytes 10: %s", ev)
	}

	write(policy(100))
	r := reload(nil, "--admin-token-file", tokenFile)
	if r.code != 0 || !strings.Contains(r.stdout, "configuration reloaded: 1 policies from "+file) || strings.Contains(r.stdout, "restart") {
		t.Fatalf("reload: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if ev := pub(11); ev.Op != "ok" {
		t.Fatalf("11 bytes after the reload to max-message-bytes 100: %s", ev)
	}

	// A bad file: refused with its reason; the running configuration stays.
	write(policy(10) + "  - match: \"a..b\"\n")
	r = reload([]string{"BROKERD_ADMIN_TOKEN=reload-test-admin-token-0123"})
	if r.code != 1 || !strings.Contains(r.stderr, "400") || !strings.Contains(r.stderr, `match "a..b"`) || !strings.Contains(r.stderr, "the running one stays") {
		t.Fatalf("reload of a bad file: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if ev := pub(100); ev.Op != "ok" {
		t.Fatalf("100 bytes after a refused reload: %s", ev)
	}

	// An option that takes effect only at a restart is named.
	write(policy(10) + "max-connections: 77\n")
	r = reload(nil, "--admin-token-file", tokenFile)
	if r.code != 0 || !strings.Contains(r.stdout, "take effect only at a restart: --max-connections") {
		t.Fatalf("reload with a restart-only option: status %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if ev := pub(11); ev.Code != "message_too_large" {
		t.Fatalf("11 bytes after the reload back to max-message-bytes 10: %s", ev)
	}

	// A wrong token reloads nothing.
	write(policy(100))
	r = reload([]string{"BROKERD_ADMIN_TOKEN=not-the-admin-token-at-all"})
	if r.code != 1 || !strings.Contains(r.stderr, "401") {
		t.Fatalf("reload with a wrong token: status %d, stderr %q", r.code, r.stderr)
	}
	if ev := pub(11); ev.Code != "message_too_large" {
		t.Fatalf("a reload with a wrong token applied the file: %s", ev)
	}
	_, body := httpGet(t, d.url("/metrics"))
	for _, want := range []string{`brokerd_config_reloads_total{result="ok"} 2`, `brokerd_config_reloads_total{result="error"} 1`} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
	if r := reload(nil); r.code != 2 || !strings.Contains(r.stderr, "admin token is required") {
		t.Errorf("reload without a token: status %d, stderr %q", r.code, r.stderr)
	}
	d.stop(15 * time.Second)
}

// TestEphemeralRestart: an ephemeral topic's history is gone after a
// restart, in a new epoch, so a resume with the old epoch gets
// epoch_mismatch; a durable topic resumes where it was.
func TestEphemeralRestart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "brokerd.yaml")
	if err := os.WriteFile(file, []byte("policies:\n  - match: \"cursor.>\"\n    storage: ephemeral\n    retention: {max-messages: 100}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	d := startDaemon(t, data, "--config", file)
	c := mustDial(t, d.addr)
	epochs := map[string]string{}
	for i, topic := range []string{"cursor.a", "orders.a"} {
		for j := range 3 {
			id := uint64(10*i + j + 1)
			if ev := c.request(t, id, pubCmd(id, topic, []byte(`1`))); ev.Op != "ok" || ev.Offset != uint64(j+1) {
				t.Fatalf("pub %s: %s", topic, ev)
			}
		}
		id := uint64(100 + i)
		ev := c.request(t, id, subCmd(id, topic, "", ""))
		if ev.Op != "ok" || ev.Head != 3 {
			t.Fatalf("sub %s: %s", topic, ev)
		}
		epochs[topic] = ev.Epoch
	}
	// A durable consumer of the ephemeral topic, at offset 2.
	cc := mustDial(t, d.addr)
	if ev := cc.request(t, 1, `{"op":"sub","id":1,"topic":"cursor.a","consumer":"w","from":"latest"}`); ev.Op != "ok" {
		t.Fatalf("consumer sub: %s", ev)
	}
	if ev := cc.request(t, 2, `{"op":"ack","id":2,"topic":"cursor.a","consumer":"w","offset":2}`); ev.Op != "ok" {
		t.Fatalf("ack: %s", ev)
	}
	cc.close()
	c.close()
	d.stop(15 * time.Second)

	d = startDaemon(t, data, "--config", file)
	c = mustDial(t, d.addr)
	defer c.close()
	ev := c.request(t, 1, subCmd(1, "cursor.a", "2", epochs["cursor.a"]))
	if ev.Op != "err" || ev.Code != "epoch_mismatch" {
		t.Fatalf("resuming the ephemeral topic after a restart: %s, want epoch_mismatch", ev)
	}
	// The consumer's stored position belongs to the old epoch.
	ev = c.request(t, 2, `{"op":"sub","id":2,"topic":"cursor.a","consumer":"w"}`)
	if ev.Op != "err" || ev.Code != "epoch_mismatch" {
		t.Fatalf("the durable consumer after a restart: %s, want epoch_mismatch", ev)
	}
	ev = c.request(t, 3, pubCmd(3, "cursor.b", []byte(`2`)))
	if ev.Op != "ok" || ev.Offset != 1 {
		t.Fatalf("an ephemeral topic after a restart: %s, want offset 1", ev)
	}
	ev = c.request(t, 4, subCmd(4, "cursor.a", "", ""))
	if ev.Op != "ok" || ev.Epoch == epochs["cursor.a"] || ev.Epoch == "" || ev.Head != 0 {
		t.Fatalf("the ephemeral topic's epoch after a restart: %s (was %s)", ev, epochs["cursor.a"])
	}
	ev = c.request(t, 5, subCmd(5, "orders.a", "2", epochs["orders.a"]))
	if ev.Op != "ok" || ev.Epoch != epochs["orders.a"] || ev.Head != 3 {
		t.Fatalf("resuming the durable topic after a restart: %s", ev)
	}
	d.stop(15 * time.Second)
}
