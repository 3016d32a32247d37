package sim

import (
	"flag"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/brokerd/brokerd/cluster/core"
)

var (
	seeds    = flag.Int("sim.seeds", 300, "seeds of TestSimulate (make sim sets more)")
	first    = flag.Uint64("sim.first", 1, "the first seed of TestSimulate")
	replay   = flag.Uint64("sim.seed", 0, "replay this one seed with its trace")
	maxTeeth = flag.Int("sim.teeth", 10000, "seeds TestSimulateFindsEachDisabledRule may try per rule")
)

// shapes are the cluster shapes a seed may run.
func shape(seed uint64) Config {
	c := Config{Seed: seed}
	switch seed % 6 {
	case 0:
		c.Nodes, c.Partitions, c.Replicas = 3, 2, 2
	case 1:
		c.Nodes, c.Partitions, c.Replicas = 3, 3, 3
	case 2:
		c.Nodes, c.Partitions, c.Replicas = 4, 4, 2
	case 3:
		c.Nodes, c.Partitions, c.Replicas = 5, 4, 3
	case 4:
		c.Nodes, c.Partitions, c.Auto = 3, 3, true
	case 5:
		c.Nodes, c.Partitions, c.Auto = 2, 2, true
	}
	return c
}

// runSeeds runs seeds from first on, on every core, until n ran or stop
// says so; it returns the failing result with the lowest seed, if any.
func runSeeds(first uint64, n int, rules core.Rules) (fail *Result, ran int) {
	var (
		next   atomic.Uint64
		mu     sync.Mutex
		count  atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
	)
	next.Store(first)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				s := next.Add(1) - 1
				if s >= first+uint64(n) {
					return
				}
				c := shape(s)
				c.Rules = rules
				r := Run(c)
				count.Add(1)
				if r.Violation != "" {
					mu.Lock()
					if fail == nil || r.Seed < fail.Seed {
						fail = &r
					}
					mu.Unlock()
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return fail, int(count.Load())
}

// TestSimulate runs many seeds with every safety rule on: no invariant
// may break. A failing seed prints itself; go test -run TestSimulate
// -sim.seed=N replays it with its trace.
func TestSimulate(t *testing.T) {
	if *replay != 0 {
		c := shape(*replay)
		c.Trace = true
		r := Run(c)
		t.Log(strings.Join(r.Trace, "\n"))
		t.Log(r)
		if r.Violation != "" {
			t.Fatal(r.Violation)
		}
		return
	}
	fail, ran := runSeeds(*first, *seeds, core.Safe())
	if fail != nil {
		t.Fatalf("%v\nreplay: go test ./cluster/sim/ -run 'TestSimulate$' -sim.seed=%d -v", fail, fail.Seed)
	}
	t.Logf("%d seeds from %d, no invariant broken", ran, *first)
}

// TestSimulateFindsEachDisabledRule turns each safety rule off in turn:
// the simulator must find the violation it prevents within -sim.teeth
// seeds.
func TestSimulateFindsEachDisabledRule(t *testing.T) {
	for _, rule := range core.AllRules() {
		t.Run(strings.ReplaceAll(rule.String(), " ", "_"), func(t *testing.T) {
			fail, ran := runSeeds(1, *maxTeeth, core.Safe().Without(rule))
			if fail == nil {
				t.Fatalf("without the %s no violation in %d seeds", rule, ran)
			}
			t.Logf("without the %s: seed %d broke an invariant (%d seeds run): %s", rule, fail.Seed, ran, fail.Violation)
		})
	}
}

// TestSimulateReplays checks that a seed replays exactly.
func TestSimulateReplays(t *testing.T) {
	for s := uint64(1); s <= 20; s++ {
		c := shape(s)
		c.Trace = true
		a, b := Run(c), Run(c)
		if strings.Join(a.Trace, "\n") != strings.Join(b.Trace, "\n") || a.Steps != b.Steps {
			t.Fatalf("seed %d ran differently twice", s)
		}
	}
}
