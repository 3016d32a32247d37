package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// adminClient is what the subcommands that call a running node's admin
// endpoints (backup, reload) share: the node's address, its admin token,
// and whether to skip verifying its certificate.
type adminClient struct {
	base, token, tokenFile string
	insecure               bool
}

func (a *adminClient) register(fs *cmdFlags) {
	fs.StringVar(&a.base, "url", "http://127.0.0.1:8080", "the node's HTTP address (http:// or https://; ws:// and wss:// are taken as their HTTP twins) (env BROKERD_ADMIN_URL)")
	fs.StringVar(&a.token, "admin-token", "", "the node's admin token (env BROKERD_ADMIN_TOKEN; prefer --admin-token-file: flags show in process lists)")
	fs.StringVar(&a.tokenFile, "admin-token-file", "", "file holding the admin token (env BROKERD_ADMIN_TOKEN_FILE)")
	fs.BoolVar(&a.insecure, "insecure", false, "with https, do not verify the node's certificate")
}

// resolve reads the flags' environment fallbacks and the token file, and
// returns the URL of the admin endpoint at path.
func (a *adminClient) resolve(fs *cmdFlags, path string) (string, error) {
	envOr(fs, "url", "BROKERD_ADMIN_URL", &a.base)
	envOr(fs, "admin-token", envName("admin-token"), &a.token)
	envOr(fs, "admin-token-file", envName("admin-token-file"), &a.tokenFile)
	if a.tokenFile != "" {
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--admin-token-file: %w", err)
		}
		a.token = strings.TrimSpace(string(b))
	}
	if a.token == "" {
		return "", errors.New("the node's admin token is required: --admin-token-file or BROKERD_ADMIN_TOKEN")
	}
	u, err := url.Parse(a.base)
	if err == nil && u.Host == "" {
		err = errors.New("no host")
	}
	if err == nil {
		switch u.Scheme {
		case "ws":
			u.Scheme = "http"
		case "wss":
			u.Scheme = "https"
		case "http", "https":
		default:
			err = fmt.Errorf("scheme %q: want http or https", u.Scheme)
		}
	}
	if err != nil {
		return "", fmt.Errorf("--url %q: %w", a.base, err)
	}
	u.Path, u.RawQuery, u.Fragment = path, "", ""
	return u.String(), nil
}

func (a *adminClient) client() *http.Client {
	hc := &http.Client{}
	if a.insecure {
		hc.Transport = insecureTransport()
	}
	return hc
}

const reloadAbout = `Asks a running brokerd to read its configuration again (POST
/v1/admin/reload), as SIGHUP does, and says whether it took it: the config
file's policies, the allowed origins and the JWT keys change while
connections stay open. A file that does not pass the checks of a start is
refused as a whole, with the reason, and the running configuration stays.
Options that take effect only at a restart are named. The node must be
started with an admin token (--admin-token-file or BROKERD_ADMIN_TOKEN);
give the same one here. In a cluster, reload each node.

Exit status: 0 reloaded, 1 refused or the node could not be asked, 2 bad
usage.

Example:
  brokerd reload --url http://127.0.0.1:8080 --admin-token-file admin.token`

func runReload(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("reload", "", reloadAbout)
	var ac adminClient
	ac.register(fs)
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	if code, done := parseFlags(fs, args, 0, 0, stdout, stderr); done {
		return code
	}
	endpoint, err := ac.resolve(fs, "/v1/admin/reload")
	if err != nil {
		fmt.Fprintln(stderr, "brokerd reload:", err)
		return 2
	}
	ctx, stop := signalContext()
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	msg, err := askReload(ctx, ac.client(), endpoint, ac.token)
	if err != nil {
		fmt.Fprintln(stderr, "brokerd reload:", err)
		return 1
	}
	fmt.Fprintln(stdout, msg)
	return 0
}

// askReload posts to the reload endpoint and returns what to print, or why
// the node refused the configuration.
func askReload(ctx context.Context, hc *http.Client, endpoint, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Message string }
		if json.Unmarshal(body, &e) == nil && e.Message != "" {
			return "", fmt.Errorf("%s answered %s: %s", endpoint, resp.Status, e.Message)
		}
		return "", fmt.Errorf("%s answered %s: %s", endpoint, resp.Status, strings.TrimSpace(string(body)))
	}
	var r struct {
		File         string   `json:"file"`
		Policies     int      `json:"policies"`
		NeedsRestart []string `json:"needs_restart"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return "", fmt.Errorf("%s answered 200 with %q: %w", endpoint, body, err)
	}
	msg := fmt.Sprintf("configuration reloaded: %d policies", r.Policies)
	if r.File != "" {
		msg += " from " + r.File
	}
	if len(r.NeedsRestart) > 0 {
		msg += "; changed options that take effect only at a restart: " + strings.Join(r.NeedsRestart, ", ")
	}
	return msg, nil
}
