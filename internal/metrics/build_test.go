package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestBuildInfoAndReady(t *testing.T) {
	m := New()
	m.SetBuildInfo("v1.2.3-test")
	var ready atomic.Bool
	m.RegisterReady(ready.Load)
	out := scrape(t, m)
	if !strings.Contains(out, `brokerd_build_info{goversion="go`) || !strings.Contains(out, `version="v1.2.3-test"} 1`) {
		t.Errorf("no brokerd_build_info with the version:\n%s", out)
	}
	if !strings.Contains(out, "\nbrokerd_ready 0\n") {
		t.Errorf("brokerd_ready is not 0 while not ready")
	}
	ready.Store(true)
	if out := scrape(t, m); !strings.Contains(out, "\nbrokerd_ready 1\n") {
		t.Errorf("brokerd_ready is not 1 while ready")
	}
}
