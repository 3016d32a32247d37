package server_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/brokerd/brokerd/internal/server"
)

// postReload sends method /v1/admin/reload with token ("" for none); it
// returns the status and the body.
func postReload(t *testing.T, ts *testServer, method, token string) (int, string) {
	t.Helper()
	resp, body := adminDo(t, ts, method, "/v1/admin/reload", token)
	return resp.StatusCode, string(body)
}

// TestReloadEndpoint: POST /v1/admin/reload calls the node's reload only
// with the admin token, answers what it applied, and a refusal as 400 with
// its reason.
func TestReloadEndpoint(t *testing.T) {
	var calls atomic.Int32
	var refuse atomic.Bool
	reload := func() (server.ReloadResult, error) {
		calls.Add(1)
		if refuse.Load() {
			return server.ReloadResult{}, errors.New(`policies[1] (match "a..b"): match: bad pattern`)
		}
		return server.ReloadResult{File: "brokerd.yaml", Policies: 2, NeedsRestart: []string{"--max-connections"}}, nil
	}
	ts := startServer(t, func(c *serverConfig) {
		c.Server.AdminToken = adminToken
		c.Server.Reload = reload
	})
	if code, _ := postReload(t, ts, http.MethodPost, ""); code != http.StatusUnauthorized {
		t.Errorf("without a token: %d, want 401", code)
	}
	if code, _ := postReload(t, ts, http.MethodPost, "wrong-token-wrong-token"); code != http.StatusUnauthorized {
		t.Errorf("with a wrong token: %d, want 401", code)
	}
	if code, _ := postReload(t, ts, http.MethodGet, adminToken); code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", code)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("reload called %d times before a request with the admin token", n)
	}
	code, body := postReload(t, ts, http.MethodPost, adminToken)
	var got server.ReloadResult
	if err := json.Unmarshal([]byte(body), &got); code != http.StatusOK || err != nil ||
		got.File != "brokerd.yaml" || got.Policies != 2 || len(got.NeedsRestart) != 1 || got.NeedsRestart[0] != "--max-connections" {
		t.Fatalf("reload: %d %s (%v)", code, body, err)
	}
	refuse.Store(true)
	code, body = postReload(t, ts, http.MethodPost, adminToken)
	if code != http.StatusBadRequest || !strings.Contains(body, `"code":"bad_request"`) || !strings.Contains(body, `a..b`) || !strings.Contains(body, "the running one stays") {
		t.Fatalf("refused reload: %d %s", code, body)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("reload called %d times, want 2", n)
	}

	// Without an admin token the endpoint is off; without a reload it is
	// not found.
	off := startServer(t, func(c *serverConfig) { c.Server.Reload = reload })
	if code, body := postReload(t, off, http.MethodPost, adminToken); code != http.StatusForbidden || !strings.Contains(body, "--admin-token-file") {
		t.Errorf("without an admin token on the node: %d %s, want 403", code, body)
	}
	none := startServer(t, func(c *serverConfig) { c.Server.AdminToken = adminToken })
	if code, _ := postReload(t, none, http.MethodPost, adminToken); code != http.StatusNotFound {
		t.Errorf("without a reload: %d, want 404", code)
	}
}
