package store

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var powerCuts = flag.Int("powercut.cycles", 10, "power cuts of TestPowerCut")

// lazyFS returns the LazyFS binary ($LAZYFS, else lazyfs on PATH), or
// skips the test when there is none or FUSE is not usable.
func lazyFS(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("LAZYFS")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("lazyfs"); err != nil {
			t.Skip("LazyFS is not installed (set LAZYFS to its binary, or put lazyfs on PATH; see make powercut)")
		}
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("LazyFS binary %s: %v", bin, err)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE: %v", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Skip("fusermount3 (fuse3) is not installed")
	}
	return bin
}

// mountLazyFS mounts LazyFS over a new directory and returns the mount
// point and a function that drops every write not synced (what a power
// cut loses). The mount is removed at Cleanup.
func mountLazyFS(t *testing.T, bin string) (mnt string, cut func()) {
	t.Helper()
	base := t.TempDir()
	root, mnt := filepath.Join(base, "root"), filepath.Join(base, "mnt")
	fifo, done := filepath.Join(base, "faults.fifo"), filepath.Join(base, "done.fifo")
	for _, d := range []string{root, mnt} {
		if err := os.Mkdir(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(base, "lazyfs.toml")
	conf := fmt.Sprintf(`[faults]
fifo_path=%q
fifo_path_completed=%q
[cache]
apply_eviction=false
[cache.simple]
custom_size="1gb"
blocks_per_page=1
[filesystem]
log_all_operations=false
logfile=""
`, fifo, done)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, mnt, "--config-path", cfg, "-o", "modules=subdir", "-o", "subdir="+root, "-f")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var answers *os.File // LazyFS's completion FIFO, open while it runs
	t.Cleanup(func() {
		// A store left open by a failed test keeps the mount busy: then
		// detach it lazily.
		if err := exec.Command("fusermount3", "-u", mnt).Run(); err != nil {
			_ = exec.Command("fusermount3", "-uz", mnt).Run()
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if answers != nil {
			_ = answers.Close()
		}
	})
	mounted := func() bool {
		b, _ := os.ReadFile("/proc/self/mountinfo")
		return bytes.Contains(b, []byte(" "+mnt+" "))
	}
	for deadline := time.Now().Add(30 * time.Second); !mounted(); {
		select {
		case err := <-exited:
			t.Skipf("LazyFS did not mount (%v): %s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("LazyFS not mounted after 30s: %s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range []string{fifo, done} {
		for deadline := time.Now().Add(30 * time.Second); ; {
			if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeNamedPipe != 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("LazyFS made no FIFO %s", p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// LazyFS opens the completion FIFO once, for writing, and writes to it
	// after each clear-cache: it needs a reader all along. Opened read and
	// write, the open does not wait for LazyFS.
	answers, err := os.OpenFile(done, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		r := bufio.NewReader(answers)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				close(lines)
				return
			}
			lines <- line
		}
	}()
	cut = func() {
		t.Helper()
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("lazyfs::clear-cache\n"); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
		select {
		case line := <-lines:
			if !strings.Contains(line, "clear-cache") {
				t.Fatalf("LazyFS answered %q to clear-cache", line)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("LazyFS did not finish clear-cache within 60s")
		}
	}
	return mnt, cut
}

// TestPowerCut runs the crash test's appending child on LazyFS, a FUSE file
// system that keeps every write in its own cache until it is synced, kills
// the child with SIGKILL at a random moment and then drops every write that
// was not synced (LazyFS's clear-cache): the disk as a power cut leaves it,
// with the log entry being written, the applier's bbolt transaction and
// the segment removals cut wherever they were. Every acknowledged record
// must be there after the reopen, gap-free, and the file consistent. It
// skips when LazyFS is not installed; make powercut builds and runs it.
func TestPowerCut(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	bin := lazyFS(t)
	mnt, cut := mountLazyFS(t, bin)
	dir := filepath.Join(mnt, "data")
	acked := map[string]map[uint64]string{}
	seed := time.Now().UnixNano()
	r := rand.New(rand.NewPCG(uint64(seed), 1))
	t.Logf("seed %d", seed)
	total := 0
	for cycle := range *powerCuts {
		want := 50 + r.IntN(1950)
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashPointEnv+"=")
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		n := 0
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 || len(f[2]) != 64 {
				continue
			}
			off, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				continue
			}
			if acked[f[1]] == nil {
				acked[f[1]] = map[uint64]string{}
			}
			if prev, ok := acked[f[1]][off]; ok && prev != f[2] {
				t.Fatalf("cut %d: offset %s/%d acknowledged twice with different data", cycle, f[1], off)
			}
			acked[f[1]][off] = f[2]
			if n++; n == want {
				break
			}
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if n < want {
			t.Fatalf("cut %d: child stopped after %d acks", cycle, n)
		}
		total += n
		cut()

		db, err := Open(dir, &Options{RetentionInterval: -1})
		if err != nil {
			t.Fatalf("cut %d: reopen after the power cut: %v", cycle, err)
		}
		closed := false
		t.Cleanup(func() {
			if !closed {
				_ = db.Close()
			}
		})
		if err := db.Check(); err != nil {
			t.Fatalf("cut %d: %v", cycle, err)
		}
		for topic, offs := range acked {
			info, ok, err := db.Topic(topic)
			if err != nil || !ok || info.Earliest != 1 || info.Count != int64(info.Head) {
				t.Fatalf("cut %d: topic %s: %+v, %v, %v", cycle, topic, info, ok, err)
			}
			for from := uint64(1); from <= info.Head; {
				recs, err := db.Read(topic, from, 1000, 1<<22)
				if err != nil {
					t.Fatal(err)
				}
				for _, rec := range recs {
					if rec.Offset != from {
						t.Fatalf("cut %d: %s: offset %d where %d was expected", cycle, topic, rec.Offset, from)
					}
					sum := sha256.Sum256(rec.Data)
					if want, ok := offs[rec.Offset]; ok && want != hex.EncodeToString(sum[:]) {
						t.Fatalf("cut %d: %s/%d differs from what was acknowledged", cycle, topic, rec.Offset)
					}
					from++
				}
			}
			for off := range offs {
				if off > info.Head {
					t.Fatalf("cut %d: acknowledged %s/%d lost (head %d)", cycle, topic, off, info.Head)
				}
			}
		}
		closed = true
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		// The reopen's writes (the replay, the new segment) are synced:
		// nothing to lose, but cut again so that the next cycle starts
		// from a disk that holds only synced data.
		cut()
	}
	t.Logf("%d power cuts, %d acknowledged appends checked", *powerCuts, total)
}
