package main

// Process-level tests: TestMain builds the real binary once, and the tests
// run it as a child process on 127.0.0.1:0, learning the address from the
// "brokerd listening" line it logs (JSON) on stderr.

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// daemonBin is the brokerd binary built by TestMain.
var daemonBin string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "brokerd-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	daemonBin = filepath.Join(dir, "brokerd")
	args := []string{"build", "-o", daemonBin}
	if raceBuild {
		// The daemon runs under the race detector too; every test checks
		// its stderr for reports.
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building brokerd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemonEnv is the test process's environment without any BROKERD_
// variable, plus extra.
func daemonEnv(extra ...string) []string {
	var env []string
	gorace := "atexit_sleep_ms=100" // a race-enabled binary sleeps 1s at exit by default
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "BROKERD_"):
		case strings.HasPrefix(kv, "GORACE="):
			gorace = strings.TrimPrefix(kv, "GORACE=") + " " + gorace
		default:
			env = append(env, kv)
		}
	}
	env = append(env, "GORACE="+gorace)
	return append(env, extra...)
}

// lineWriter collects a child's output and hands every complete line to fn.
type lineWriter struct {
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	fn      func(line []byte)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		if w.fn != nil {
			w.fn(w.partial[:i])
		}
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// daemon is a running brokerd child process.
type daemon struct {
	t       testing.TB
	cmd     *exec.Cmd
	addr    string // host:port it listens on
	dataDir string
	stderr  *lineWriter
	exited  chan struct{} // closed once the process has exited
	state   *os.ProcessState
}

// startDaemon starts brokerd on dataDir, listening on a port of its choice,
// and waits until it has logged its address. The process is killed at the
// end of the test if it still runs; its stderr is checked for race reports
// and logged when the test failed.
func startDaemon(t testing.TB, dataDir string, extraArgs ...string) *daemon {
	t.Helper()
	return startDaemonWith(t, dataDir, nil, extraArgs...)
}

// startDaemonWith is startDaemon with extra environment variables.
func startDaemonWith(t testing.TB, dataDir string, env []string, extraArgs ...string) *daemon {
	t.Helper()
	args := append([]string{
		"--addr", "127.0.0.1:0", "--data", dataDir,
		"--log-format", "json", "--node", "test-node",
		// Every test client comes from 127.0.0.1: no per-IP limit.
		"--conn-rate-per-ip", "0",
	}, extraArgs...)
	d := &daemon{t: t, dataDir: dataDir, exited: make(chan struct{})}
	listening := make(chan string, 1)
	d.stderr = &lineWriter{fn: func(line []byte) {
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "brokerd listening" && rec.Addr != "" {
			select {
			case listening <- rec.Addr:
			default:
			}
		}
	}}
	d.cmd = exec.Command(daemonBin, args...)
	d.cmd.Dir = t.TempDir()
	d.cmd.Env = daemonEnv(env...)
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting brokerd: %v", err)
	}
	go func() {
		_ = d.cmd.Wait()
		d.state = d.cmd.ProcessState
		close(d.exited)
	}()
	t.Cleanup(d.cleanup)
	select {
	case d.addr = <-listening:
	case <-d.exited:
		t.Fatalf("brokerd exited before listening (%v); stderr:\n%s", d.state, d.stderr)
	case <-time.After(15 * time.Second):
		t.Fatalf("brokerd did not log its listen address within 15s; stderr:\n%s", d.stderr)
	}
	return d
}

func (d *daemon) cleanup() {
	select {
	case <-d.exited:
	default:
		// A failed test's daemons dump their goroutines (SIGQUIT) and
		// their whole stderr into BROKERD_TEST_DUMPS, when set.
		if d.t.Failed() && os.Getenv("BROKERD_TEST_DUMPS") != "" {
			_ = d.cmd.Process.Signal(syscall.SIGQUIT)
			<-d.exited
			_ = os.WriteFile(filepath.Join(os.Getenv("BROKERD_TEST_DUMPS"), filepath.Base(d.dataDir)+".log"), []byte(d.stderr.String()), 0o644)
		}
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	d.checkRaces()
	if d.t.Failed() {
		d.t.Logf("brokerd stderr (%s):\n%s", d.dataDir, tail(d.stderr.String(), 8000))
	}
}

// checkRaces fails the test when the (race-enabled) daemon reported a race.
func (d *daemon) checkRaces() {
	if s := d.stderr.String(); strings.Contains(s, "WARNING: DATA RACE") {
		d.t.Errorf("the race detector reported a race in brokerd:\n%s", tail(s, 20000))
	}
}

// signal sends sig to the process.
func (d *daemon) signal(sig os.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("signal %v: %v", sig, err)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (d *daemon) kill() {
	d.t.Helper()
	d.signal(syscall.SIGKILL)
	if !d.waitExit(10 * time.Second) {
		d.t.Fatal("brokerd still runs 10s after SIGKILL")
	}
	d.checkRaces()
}

// waitExit waits up to timeout for the process to exit.
func (d *daemon) waitExit(timeout time.Duration) bool {
	select {
	case <-d.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

// stop sends SIGTERM and requires a clean exit within timeout.
func (d *daemon) stop(timeout time.Duration) {
	d.t.Helper()
	d.signal(syscall.SIGTERM)
	if !d.waitExit(timeout) {
		d.t.Fatalf("brokerd did not exit within %v of SIGTERM", timeout)
	}
	if code := d.state.ExitCode(); code != 0 {
		d.t.Fatalf("brokerd exited with %v after SIGTERM, want status 0; stderr:\n%s", d.state, tail(d.stderr.String(), 8000))
	}
}

// url returns the http URL of path on the daemon.
func (d *daemon) url(path string) string { return "http://" + d.addr + path }

// result is the outcome of a brokerd run that is expected to end by itself.
type result struct {
	code   int // exit status; -1 when killed by a signal
	stdout string
	stderr string
	took   time.Duration
}

// runBrokerd runs brokerd with args and env (on top of a BROKERD_-free
// environment) in a temporary working directory and waits up to timeout
// for it to exit; it fails the test when it does not.
func runBrokerd(t testing.TB, timeout time.Duration, env []string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(daemonBin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = daemonEnv(env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting brokerd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("running brokerd %q: %v", args, err)
		}
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("brokerd %q still runs after %v; stderr:\n%s", args, timeout, stderr.String())
	}
	r := result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	if strings.Contains(r.stderr, "WARNING: DATA RACE") {
		t.Errorf("the race detector reported a race in brokerd:\n%s", r.stderr)
	}
	return r
}

// httpGet fetches url with a short timeout and returns status and body.
func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// eventually polls cond every few milliseconds until it holds or timeout
// passes, then fails the test with msg.
func eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
