package server

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestClientIP(t *testing.T) {
	a := newAdmission(0, 1, 1, 8)
	a.trusted = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}
	cases := []struct {
		remote, xff, want string
	}{
		{"192.0.2.1:5000", "203.0.113.7", "192.0.2.1"},                 // untrusted peer: its header is ignored
		{"127.0.0.1:5000", "203.0.113.7", "203.0.113.7"},               // trusted proxy
		{"127.0.0.1:5000", "198.51.100.1, 203.0.113.7", "203.0.113.7"}, // rightmost untrusted hop
		{"127.0.0.1:5000", "203.0.113.7, 10.1.2.3", "203.0.113.7"},     // skip trusted hops
		{"127.0.0.1:5000", "", "127.0.0.1"},
		{"[::ffff:127.0.0.1]:5000", "203.0.113.9", "203.0.113.9"},
	}
	for _, c := range cases {
		r := &http.Request{RemoteAddr: c.remote, Header: http.Header{}}
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := a.clientIP(r); got != c.want {
			t.Errorf("clientIP(%s, %q) = %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
}

func TestIPTableBounded(t *testing.T) {
	a := newAdmission(0, 1000, 10, 8)
	for i := 0; i < 100; i++ {
		r := &http.Request{RemoteAddr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 1).String(), Header: http.Header{}}
		a.allowIP(r)
		if len(a.ips) > 8 {
			t.Fatalf("table holds %d addresses, bound 8", len(a.ips))
		}
	}
}

// Issue 15 row 7: the per-IP limit keyed on the whole IPv6 address, so a
// host with a /64 had no limit.
func TestIPv6KeyedOnSlash64(t *testing.T) {
	a := newAdmission(0, 0.001, 2, 8)
	for i, remote := range []string{"[2001:db8:1:2::1]:1000", "[2001:db8:1:2::ffff:1]:1000"} {
		if !a.allowIP(&http.Request{RemoteAddr: remote, Header: http.Header{}}) {
			t.Fatalf("connection %d refused within the burst", i)
		}
	}
	if a.allowIP(&http.Request{RemoteAddr: "[2001:db8:1:2:aaaa::1]:1000", Header: http.Header{}}) {
		t.Fatal("a third address of the same /64 was let past the burst of 2")
	}
	if !a.allowIP(&http.Request{RemoteAddr: "[2001:db8:1:3::1]:1000", Header: http.Header{}}) {
		t.Fatal("another /64 was refused")
	}
	if !a.allowIP(&http.Request{RemoteAddr: "192.0.2.1:1000", Header: http.Header{}}) {
		t.Fatal("an IPv4 address was refused")
	}
}
