package server

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
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
	// Connections that may still authenticate (auth on, no handshake
	// token) have slots of their own.
	maxUnauthed int64
	unauthed    atomic.Int64

	rejectedLimit    atomic.Int64
	rejectedRate     atomic.Int64
	rejectedUnauthed atomic.Int64

	trusted []netip.Prefix // proxies whose X-Forwarded-For is believed

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
	host := ipKey(a.clientIP(r))
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

// ipKey is the key of the per-IP limit: the address, or for IPv6 its /64
// (one host usually holds a whole /64).
func ipKey(ip string) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	addr = addr.Unmap()
	if addr.Is4() {
		return addr.String()
	}
	p, _ := addr.Prefix(64)
	return p.String()
}

// clientIP is the peer's IP, or, when the peer is a trusted proxy, the
// rightmost address of X-Forwarded-For that is not a trusted proxy.
func (a *admission) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if len(a.trusted) == 0 || !a.isTrusted(host) {
		return host
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		h := strings.TrimSpace(hops[i])
		if h == "" {
			continue
		}
		if !a.isTrusted(h) {
			return h
		}
		host = h
	}
	return host
}

func (a *admission) isTrusted(ip string) bool {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	addr = addr.Unmap()
	for _, p := range a.trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
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

// acquireUnauthed takes a slot for a connection that is not yet
// authenticated; false when they are all taken.
func (a *admission) acquireUnauthed() bool {
	if a.maxUnauthed <= 0 {
		a.unauthed.Add(1)
		return true
	}
	if a.unauthed.Add(1) > a.maxUnauthed {
		a.unauthed.Add(-1)
		a.rejectedUnauthed.Add(1)
		return false
	}
	return true
}

func (a *admission) releaseUnauthed() { a.unauthed.Add(-1) }
