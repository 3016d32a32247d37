package store

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var crashCycles = flag.Int("crash.cycles", 20, "kill -9 cycles of TestCrash")

// crashDirEnv names the directory TestCrashChild appends to; unset, the
// child test skips.
const crashDirEnv = "BROKERD_STORE_CRASH_DIR"

// TestCrashChild is the process TestCrash kills: it appends from 32
// goroutines and prints "offset topic sha256(data)" for each append only
// after Append returned.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run by TestCrash")
	}
	db, err := Open(dir, &Options{RetentionInterval: -1, LockTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(os.Getpid()), uint64(g)))
			buf := make([]byte, 4096)
			for i := 0; ; i++ {
				topic := fmt.Sprintf("crash.%d", r.IntN(4))
				data := buf[:1+r.IntN(len(buf))]
				for j := range data {
					data[j] = byte(r.Uint32())
				}
				key := ""
				if i%2 == 0 {
					key = fmt.Sprintf("%d-%d-%d", os.Getpid(), g, i)
				}
				a, err := db.Append(t.Context(), topic, data, key)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child append:", err)
					os.Exit(4)
				}
				sum := sha256.Sum256(data)
				mu.Lock()
				fmt.Fprintf(out, "%d %s %s\n", a.Offset, topic, hex.EncodeToString(sum[:]))
				_ = out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestCrash kills a child appending to the store with SIGKILL at a random
// moment, reopens the store and checks that every acknowledged record is
// there, unchanged and at its offset, that offsets are gap-free and that the
// file is consistent; then again, on the same directory.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	acked := map[string]map[uint64]string{} // topic → offset → sha256
	seed := time.Now().UnixNano()
	r := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d", seed)
	total := 0
	for cycle := range *crashCycles {
		want := 50 + r.IntN(1950)
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
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
				continue // a partial line cut by the kill
			}
			off, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				continue
			}
			if acked[f[1]] == nil {
				acked[f[1]] = map[uint64]string{}
			}
			if prev, ok := acked[f[1]][off]; ok && prev != f[2] {
				t.Fatalf("cycle %d: offset %s/%d acknowledged twice with different data", cycle, f[1], off)
			}
			acked[f[1]][off] = f[2]
			if n++; n == want {
				_ = cmd.Process.Kill()
				break
			}
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if n < want {
			t.Fatalf("cycle %d: child stopped after %d acks", cycle, n)
		}
		total += n

		db, err := Open(dir, &Options{RetentionInterval: -1})
		if err != nil {
			t.Fatalf("cycle %d: reopen after kill: %v", cycle, err)
		}
		if err := db.Check(); err != nil {
			t.Fatalf("cycle %d: %v", cycle, err)
		}
		for topic, offs := range acked {
			info, ok, err := db.Topic(topic)
			if err != nil || !ok || info.Earliest != 1 || info.Count != int64(info.Head) {
				t.Fatalf("cycle %d: topic %s: %+v, %v, %v", cycle, topic, info, ok, err)
			}
			for from := uint64(1); from <= info.Head; {
				recs, err := db.Read(topic, from, 1000, 1<<22)
				if err != nil {
					t.Fatal(err)
				}
				for _, rec := range recs {
					if rec.Offset != from {
						t.Fatalf("cycle %d: %s: offset %d where %d was expected", cycle, topic, rec.Offset, from)
					}
					sum := sha256.Sum256(rec.Data)
					if want, ok := offs[rec.Offset]; ok && want != hex.EncodeToString(sum[:]) {
						t.Fatalf("cycle %d: %s/%d differs from what was acknowledged", cycle, topic, rec.Offset)
					}
					from++
				}
			}
			for off := range offs {
				if off > info.Head {
					t.Fatalf("cycle %d: acknowledged %s/%d lost (head %d)", cycle, topic, off, info.Head)
				}
			}
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d cycles, %d acknowledged appends checked", *crashCycles, total)
}
