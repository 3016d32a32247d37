package server

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// admission bounds connections: a global cap and a per-IP rate of new
// connections. The per-IP table is itself bounded.
type admission struct {
	max   int64
	conns atomic.Int64

	rejectedLimit atomic.Int64
	rejectedRate  atomic.Int64

	perIP   rate.Limit
	burst   int
	maxIPs  int
	mu      sync.Mutex
	ips     map[string]*ipEntry // guarded by mu
	lastGC  time.Time           // guarded by mu
	idleTTL time.Duration
}

type ipEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

func newAdmission(max int, perIP float64, burst, maxIPs int) *admission {
	return &admission{
		max:     int64(max),
		perIP:   rate.Limit(perIP),
		burst:   burst,
		maxIPs:  maxIPs,
		ips:     make(map[string]*ipEntry),
		idleTTL: time.Minute,
	}
}

// allowIP reports whether the peer may open a new connection now.
func (a *admission) allowIP(r *http.Request) bool {
	if a.perIP <= 0 {
		return true
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.ips[host]
	if e == nil {
		if len(a.ips) >= a.maxIPs {
			a.gcLocked(now)
		}
		e = &ipEntry{lim: rate.NewLimiter(a.perIP, a.burst)}
		a.ips[host] = e
	}
	e.seen = now
	if !e.lim.AllowN(now, 1) {
		a.rejectedRate.Add(1)
		return false
	}
	return true
}

// gcLocked drops idle entries; when the table is still full it drops
// arbitrary ones, so the table never exceeds maxIPs.
func (a *admission) gcLocked(now time.Time) {
	for ip, e := range a.ips {
		if now.Sub(e.seen) > a.idleTTL {
			delete(a.ips, ip)
		}
	}
	for ip := range a.ips {
		if len(a.ips) < a.maxIPs {
			break
		}
		delete(a.ips, ip)
	}
	a.lastGC = now
}

// acquire takes a connection slot; false when the server is full.
func (a *admission) acquire() bool {
	if a.max <= 0 {
		a.conns.Add(1)
		return true
	}
	if a.conns.Add(1) > a.max {
		a.conns.Add(-1)
		a.rejectedLimit.Add(1)
		return false
	}
	return true
}

func (a *admission) release() { a.conns.Add(-1) }
