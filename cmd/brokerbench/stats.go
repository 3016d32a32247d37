package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// hist is a log-linear latency histogram in microseconds: 16 buckets per
// power of two (about 6% resolution). One writer at a time; merge after.
type hist struct {
	counts [64 * 16]uint64
	n      uint64
	max    int64
}

func (h *hist) add(d time.Duration) {
	us := d.Microseconds()
	if us < 0 {
		us = 0
	}
	h.counts[bucket(us)]++
	h.n++
	if us > h.max {
		h.max = us
	}
}

func bucket(us int64) int {
	v := uint64(us) + 1
	e := bits.Len64(v) - 1 // v in [2^e, 2^(e+1))
	if e < 4 {
		return int(v) // exact below 16
	}
	sub := (v >> (e - 4)) & 15
	return e*16 + int(sub)
}

// bucketValue is the upper bound of bucket b, in microseconds.
func bucketValue(b int) int64 {
	if b < 64 {
		return int64(b) - 1
	}
	e, sub := b/16, b%16
	return int64((uint64(16+sub+1)<<(e-4))-1) - 1
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile in microseconds.
func (h *hist) quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if rank >= h.n {
		rank = h.n - 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen > rank {
			return min(bucketValue(i), h.max)
		}
	}
	return h.max
}

// counter is a per-goroutine counter on its own cache line.
type counter struct {
	n atomic.Int64
	_ [56]byte
}

func sum(cs []counter) int64 {
	var t int64
	for i := range cs {
		t += cs[i].n.Load()
	}
	return t
}

// rssOf reads VmRSS (bytes) of pid; 0 means this process.
func rssOf(pid int) (int64, error) {
	path := "/proc/self/status"
	if pid > 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/status"
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in %s", path)
}

// settle collects garbage and hands freed memory back to the OS, so that
// VmRSS reflects live memory.
func settle() {
	runtime.GC()
	debug.FreeOSMemory()
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	debug.FreeOSMemory()
}

// payload returns a JSON value of exactly size bytes (at least 40) that
// carries the send time: {"t":<unix ns>,"p":"xxx…"}.
func payload(size int, t time.Time) []byte {
	b := make([]byte, 0, size)
	b = append(b, `{"t":`...)
	b = strconv.AppendInt(b, t.UnixNano(), 10)
	b = append(b, `,"p":"`...)
	for len(b) < size-2 {
		b = append(b, 'x')
	}
	return append(b, `"}`...)
}

var tKey = []byte(`{"t":`)

// sentAt reads the send time out of a payload.
func sentAt(data []byte) (time.Time, bool) {
	i := bytes.Index(data, tKey)
	if i < 0 {
		return time.Time{}, false
	}
	var ns int64
	for _, c := range data[i+len(tKey):] {
		if c < '0' || c > '9' {
			break
		}
		ns = ns*10 + int64(c-'0')
	}
	return time.Unix(0, ns), ns > 0
}
