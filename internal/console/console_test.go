package console

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string, hdr map[string]string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, r *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestServesThePageAndTheClient(t *testing.T) {
	h := Handler()
	for _, c := range []struct {
		path, ctype, contains string
	}{
		{"/", "text/html", "<title>brokerd console</title>"},
		{"/console.js", "text/javascript", "from './client/index.js'"},
		{"/style.css", "text/css", ":root"},
		{"/client/index.js", "text/javascript", "export { BrokerClient }"},
		{"/client/client.js", "text/javascript", "class BrokerClient"},
		{"/client/codes.js", "text/javascript", "export const ErrorCodes"},
	} {
		r := get(t, h, "GET", c.path, nil)
		if r.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", c.path, r.StatusCode)
			continue
		}
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, c.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", c.path, ct, c.ctype)
		}
		if b := body(t, r); !strings.Contains(b, c.contains) {
			t.Errorf("GET %s: body lacks %q", c.path, c.contains)
		}
		if r.Header.Get("X-Content-Type-Options") != "nosniff" || r.Header.Get("ETag") == "" {
			t.Errorf("GET %s: headers %v", c.path, r.Header)
		}
	}
	if csp := get(t, h, "GET", "/", nil).Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("the page has no CSP: %q", csp)
	}
}

func TestNotFoundAndMethods(t *testing.T) {
	h := Handler()
	for _, p := range []string{"/index.html", "/nope", "/client/", "/client/nope.js", "/static/index.html", "/v1/topics/x"} {
		if r := get(t, h, "GET", p, nil); r.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, r.StatusCode)
		}
	}
	if r := get(t, h, "POST", "/unknown", nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("POST /unknown: %d, want 404", r.StatusCode)
	}
	r := get(t, h, "POST", "/", nil)
	if r.StatusCode != http.StatusMethodNotAllowed || r.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: %d, Allow %q", r.StatusCode, r.Header.Get("Allow"))
	}
	r = get(t, h, "HEAD", "/console.js", nil)
	if r.StatusCode != http.StatusOK || body(t, r) != "" || r.Header.Get("Content-Length") == "" {
		t.Errorf("HEAD /console.js: %d", r.StatusCode)
	}
}

func TestRevalidation(t *testing.T) {
	h := Handler()
	r := get(t, h, "GET", "/client/index.js", nil)
	etag := r.Header.Get("ETag")
	if r.Header.Get("Cache-Control") != "no-cache" {
		t.Errorf("Cache-Control %q", r.Header.Get("Cache-Control"))
	}
	if r := get(t, h, "GET", "/client/index.js", map[string]string{"If-None-Match": etag}); r.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", r.StatusCode)
	}
	if r := get(t, h, "GET", "/client/index.js", map[string]string{"If-None-Match": `"other"`}); r.StatusCode != http.StatusOK {
		t.Errorf("If-None-Match other: %d, want 200", r.StatusCode)
	}
}

// The page must work offline: nothing it references may come from
// elsewhere, and everything it references must be served.
func TestNoExternalResources(t *testing.T) {
	h := Handler()
	page := body(t, get(t, h, "GET", "/", nil))
	ref := regexp.MustCompile(`(?:src|href)="([^"]+)"`)
	for _, m := range ref.FindAllStringSubmatch(page, -1) {
		u := m[1]
		if strings.Contains(u, "//") {
			t.Errorf("the page references %s from elsewhere", u)
			continue
		}
		if r := get(t, h, "GET", "/"+strings.TrimPrefix(u, "./"), nil); r.StatusCode != http.StatusOK {
			t.Errorf("the page references %s, which is not served: %d", u, r.StatusCode)
		}
	}
	for _, p := range []string{"/console.js", "/style.css"} {
		b := body(t, get(t, h, "GET", p, nil))
		if regexp.MustCompile(`(?:import|url\()\s*['"(]?\s*(?:https?:)?//`).MatchString(b) {
			t.Errorf("%s loads something from elsewhere", p)
		}
	}
}

// TestFaviconAndPhoneStyles: the page names its icon (so browsers do not
// ask for a missing /favicon.ico), and the style sheet keeps the phone
// layout and typed values in the text colour rather than the labels' grey.
func TestFaviconAndPhoneStyles(t *testing.T) {
	h := Handler()
	page := body(t, get(t, h, "GET", "/", nil))
	if !strings.Contains(page, `<link rel="icon" href="favicon.svg"`) {
		t.Error("the page does not link its icon")
	}
	r := get(t, h, "GET", "/favicon.svg", nil)
	if r.StatusCode != http.StatusOK || r.Header.Get("Content-Type") != "image/svg+xml" || !strings.Contains(body(t, r), "<svg") {
		t.Errorf("/favicon.svg: %d %s", r.StatusCode, r.Header.Get("Content-Type"))
	}
	css := body(t, get(t, h, "GET", "/style.css", nil))
	if !strings.Contains(css, "@media (max-width: 600px)") {
		t.Error("style.css has no phone layout")
	}
	if regexp.MustCompile(`input, select, textarea, button \{[^}]*color: inherit`).MatchString(css) {
		t.Error("form controls inherit their colour: inside a label that is the placeholder grey")
	}
}

// TestPresenceControls: the page offers presence (a checkbox when
// subscribing, a toggle per subscription, a panel of members) and the
// script uses the client's presence; the browser test in clients/js
// drives them against a brokerd.
func TestPresenceControls(t *testing.T) {
	h := Handler()
	page := body(t, get(t, h, "GET", "/", nil))
	for _, id := range []string{`id="sub-presence"`, `id="presence-panel"`, `id="presence"`} {
		if !strings.Contains(page, id) {
			t.Errorf("the page lacks %s", id)
		}
	}
	js := body(t, get(t, h, "GET", "/console.js", nil))
	for _, s := range []string{"presence: true", ".presence(spec.topic)", "onJoin:", "onLeave:", "onPresenceMuted:", "presence-toggle"} {
		if !strings.Contains(js, s) {
			t.Errorf("console.js lacks %q", s)
		}
	}
	if css := body(t, get(t, h, "GET", "/style.css", nil)); !strings.Contains(css, ".presence-topic") {
		t.Error("style.css does not style the presence panel")
	}
}
