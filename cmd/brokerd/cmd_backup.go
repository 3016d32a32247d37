package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const backupAbout = `Copies the store of a running brokerd (GET /v1/admin/backup) into --out,
while the node goes on serving: the copy is the store as it was when the
copy began, from one read transaction. The node must be started with an
admin token (--admin-token-file or BROKERD_ADMIN_TOKEN); give the same one
here. The copy is written to --out.tmp, synced and renamed to --out only
when complete (as many bytes as the node announced), so --out is never a
partial copy. Check it with brokerd check on a directory holding it as
brokerd.db. In a cluster, each node copies its own store.

Example:
  brokerd backup --url http://127.0.0.1:8080 --admin-token-file admin.token --out backup/brokerd.db
  brokerd check --data backup`

func runBackup(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("backup", "", backupAbout)
	var ac adminClient
	var out string
	var timeout time.Duration
	ac.register(fs)
	fs.StringVar(&out, "out", "", "the file to write the copy to (required); replaced only by a complete copy")
	fs.DurationVar(&timeout, "timeout", 0, "give up after this long (0: no bound; a stalled transfer ends anyway after the node's --http-write-timeout)")
	if code, done := parseFlags(fs, args, 0, 0, stdout, stderr); done {
		return code
	}
	if out == "" {
		fmt.Fprintln(stderr, "brokerd backup: --out is required (see brokerd backup --help)")
		return 2
	}
	endpoint, err := ac.resolve(fs, "/v1/admin/backup")
	if err != nil {
		fmt.Fprintln(stderr, "brokerd backup:", err)
		return 2
	}

	ctx, stop := signalContext()
	defer stop()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	n, took, err := fetchBackup(ctx, ac.client(), endpoint, ac.token, out)
	if err != nil {
		fmt.Fprintln(stderr, "brokerd backup:", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %d bytes to %s in %v\n", n, out, took.Round(time.Millisecond))
	return 0
}

// fetchBackup downloads the copy into out+".tmp", checks its length against
// Content-Length, syncs it and renames it to out.
func fetchBackup(ctx context.Context, hc *http.Client, endpoint, token, out string) (int64, time.Duration, error) {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return 0, 0, fmt.Errorf("%s answered %s: %s", endpoint, resp.Status, strings.TrimSpace(string(body)))
	}
	want, err := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
	if err != nil || want <= 0 {
		return 0, 0, fmt.Errorf("%s gave no length for the copy (Content-Length %q)", endpoint, resp.Header.Get("Content-Length"))
	}
	if dir := filepath.Dir(out); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return 0, 0, err
		}
	}
	tmp := out + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, 0, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	n, err := io.Copy(f, resp.Body)
	if err != nil {
		return n, 0, fmt.Errorf("the copy was cut short after %d of %d bytes: %w", n, want, err)
	}
	if n != want {
		return n, 0, fmt.Errorf("the copy was cut short: %d of %d bytes", n, want)
	}
	if err := f.Sync(); err != nil {
		return n, 0, err
	}
	if err := f.Close(); err != nil {
		return n, 0, err
	}
	if err := os.Rename(tmp, out); err != nil {
		return n, 0, err
	}
	ok = true
	if d, err := os.Open(filepath.Dir(out)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return n, time.Since(start), nil
}
