// Package testscale scales the time bounds of brokerd's tests by one
// factor, so that a slow or busy machine can run the suite without
// changing any test: BROKERD_TEST_SCALE=2 doubles every bound and every
// timing knob the tests derive from it (lease TTLs, waits, deadlines).
//
// Tests wait on conditions, never on sleeps being long enough; the factor
// only moves how long they wait before they give up, and how patient the
// cluster's timers are under test.
package testscale

import (
	"os"
	"strconv"
	"time"
)

// Factor is BROKERD_TEST_SCALE, at least 1 (1 when unset or invalid).
var Factor = func() float64 {
	f, err := strconv.ParseFloat(os.Getenv("BROKERD_TEST_SCALE"), 64)
	if err != nil || f < 1 {
		return 1
	}
	return f
}()

// D returns d scaled by Factor.
func D(d time.Duration) time.Duration { return time.Duration(float64(d) * Factor) }
