package server_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/brokerd/brokerd/store"
)

const adminToken = "admin-token-for-the-backup-test"

// adminDo sends method path to ts with the admin token token ("" for
// none); it returns the response and its body.
func adminDo(t *testing.T, ts *testServer, method, path, token string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, ts.HTTP.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := ts.HTTP.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer to %s %s: %v", method, path, err)
	}
	return resp, body
}

// getBackup asks for a backup with token ("" for none).
func getBackup(t *testing.T, ts *testServer, token string) (*http.Response, []byte) {
	t.Helper()
	return adminDo(t, ts, http.MethodGet, "/v1/admin/backup", token)
}

// TestBackupEndpoint: GET /v1/admin/backup streams a copy of the store that
// opens as a store holding what was published, only with the admin token,
// one at a time.
func TestBackupEndpoint(t *testing.T) {
	var st *store.DB
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	var block atomic.Bool
	ts := startServer(t, func(c *serverConfig) {
		c.Server.AdminToken = adminToken
		c.Server.Backup = func(w io.Writer, size func(int64)) (int64, error) {
			if block.Load() {
				entered <- struct{}{}
				<-release
			}
			return st.Backup(w, size)
		}
	})
	st = ts.Store
	for i := 1; i <= 20; i++ {
		if code, m := ts.post("/v1/topics/bk.t", fmt.Sprintf(`{"i":%d}`, i), nil); code != 200 {
			t.Fatalf("publish %d: %d %v", i, code, m)
		}
	}

	for _, tok := range []string{"", "wrong"} {
		resp, body := getBackup(t, ts, tok)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("backup with token %q: %d %s, want 401", tok, resp.StatusCode, body)
		}
	}

	resp, body := getBackup(t, ts, adminToken)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("backup: %d %s", resp.StatusCode, resp.Header)
	}
	if n, _ := strconv.Atoi(resp.Header.Get("Content-Length")); n != len(body) || n == 0 {
		t.Fatalf("Content-Length %q, body %d bytes", resp.Header.Get("Content-Length"), len(body))
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, store.FileName), body, 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := store.Open(dir, &store.Options{Logger: discard, RetentionInterval: -1})
	if err != nil {
		t.Fatalf("opening the copy: %v", err)
	}
	defer cp.Close()
	if err := cp.Check(); err != nil {
		t.Fatalf("Check of the copy: %v", err)
	}
	if info, ok, err := cp.Topic("bk.t"); err != nil || !ok || info.Head != 20 {
		t.Fatalf("the copy's bk.t: %+v %v %v, want head 20", info, ok, err)
	}

	// One at a time: a second backup while one runs is refused.
	block.Store(true)
	first := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, ts.HTTP.URL+"/v1/admin/backup", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := ts.HTTP.Client().Do(req)
		if err != nil {
			first <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-entered
	resp, body = getBackup(t, ts, adminToken)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("a second backup at once: %d %s, want 429", resp.StatusCode, body)
	}
	close(release)
	if code := <-first; code != 200 {
		t.Fatalf("the first backup: %d", code)
	}
}

// TestBackupEndpointOff: without an admin token the endpoint says how to
// turn it on; without a store to copy it is not found.
func TestBackupEndpointOff(t *testing.T) {
	var st *store.DB
	ts := startServer(t, func(c *serverConfig) {
		c.Server.Backup = func(w io.Writer, size func(int64)) (int64, error) { return st.Backup(w, size) }
	})
	st = ts.Store
	resp, body := getBackup(t, ts, adminToken)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "--admin-token-file") {
		t.Fatalf("backup with the admin endpoints off: %d %s, want 403 naming --admin-token-file", resp.StatusCode, body)
	}
	ts2 := startServer(t, func(c *serverConfig) { c.Server.AdminToken = adminToken })
	if resp, body := getBackup(t, ts2, adminToken); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("backup without a store: %d %s, want 404", resp.StatusCode, body)
	}
}
