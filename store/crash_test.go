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
	"syscall"
	"testing"
	"time"
)

var crashCycles = flag.Int("crash.cycles", 20, "kill -9 cycles of TestCrash")

// crashDirEnv names the directory TestCrashChild appends to; unset, the
// child test skips. crashPointEnv, when set, is "point n": the child kills
// itself the n-th time it reaches that crash point of the store (see
// crashHook), after printing "crash point".
const (
	crashDirEnv   = "BROKERD_STORE_CRASH_DIR"
	crashPointEnv = "BROKERD_STORE_CRASH_POINT"
)

// crashPoints are the points TestCrash kills its child at, besides at a
// random moment: in the log's write, with part of an entry written, in the
// applier's transaction, after it and between segment removals (the
// checkpoint), and in the replay of the log when the store opens.
var crashPoints = []string{crashLogWrite, crashLogTorn, crashApply, crashApplied, crashSegment, crashReplay}

// setCrashPoint installs the crash hook the environment asks for.
func setCrashPoint(out *bufio.Writer, mu *sync.Mutex) (point string) {
	f := strings.Fields(os.Getenv(crashPointEnv))
	if len(f) != 2 {
		return ""
	}
	n, _ := strconv.Atoi(f[1])
	var seen int
	crashHook = func(p string) {
		if p != f[0] {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if seen++; seen == n {
			fmt.Fprintf(out, "crash %s\n", p)
			_ = out.Flush()
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	// Small segments and recovery transactions, so that segments are
	// closed and removed, and replays take several transactions.
	walSegment, replayBudget = 32<<10, 1
	return f[0]
}

// TestCrashChild is the process TestCrash kills: it appends from 32
// goroutines and prints "offset topic sha256(data)" for each append only
// after Append returned.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run by TestCrash")
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	point := setCrashPoint(out, &mu)
	db, err := Open(dir, &Options{RetentionInterval: -1, LockTimeout: 5 * time.Second, MaxTailBytes: 1 << 20})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	if point == crashReplay {
		// Only the replay was to be interrupted, and there was none.
		_ = db.Close()
		return
	}
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
	points := map[string]int{} // crash points reached
	for cycle := range *crashCycles {
		want := 50 + r.IntN(1950)
		// Every other cycle kills the child at a crash point of the
		// store (if it gets there before want acknowledgements), the
		// others at a random moment.
		point := ""
		if cycle%2 == 1 {
			// The replay is below; the applier runs a few times a
			// cycle, the log's write hundreds of times.
			switch point = crashPoints[r.IntN(len(crashPoints)-1)]; point {
			case crashLogWrite, crashLogTorn:
				point = fmt.Sprintf("%s %d", point, 1+r.IntN(30))
			default:
				point = fmt.Sprintf("%s %d", point, 1+r.IntN(2))
			}
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashPointEnv+"="+point)
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
		crashed := false
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && f[0] == "crash" {
				points[f[1]]++
				crashed = true
				continue
			}
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
		if n < want && !crashed {
			t.Fatalf("cycle %d: child stopped after %d acks", cycle, n)
		}
		total += n
		if cycle%4 == 3 {
			// Interrupt the replay of what the child logged.
			point := fmt.Sprintf("%s %d", crashReplay, 1+r.IntN(20))
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashPointEnv+"="+point)
			cmd.Stderr = os.Stderr
			out, _ := cmd.Output()
			if strings.Contains(string(out), "crash "+crashReplay) {
				points[crashReplay]++
			}
		}

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
	t.Logf("%d cycles, %d acknowledged appends checked; crash points reached: %v", *crashCycles, total, points)
}
