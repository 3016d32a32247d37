// Package console serves brokerd's console: a single page to connect to
// the broker, subscribe to topics, watch messages arrive with their
// offsets, and publish. The page loads the JavaScript client from the
// broker itself (under /client/), so it needs nothing from the network
// beyond the broker.
package console

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"

	jsclient "github.com/brokerd/brokerd/clients/js"
)

//go:embed static
var static embed.FS

// The page's own files, and the client's modules under /client/.
var (
	pageFS   = mustSub(static, "static")
	clientFS = jsclient.FS
)

// csp keeps the page to what the broker serves: its own scripts and
// styles, and WebSocket or HTTP connections to a broker the user names.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss: http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

type file struct {
	body  []byte
	ctype string
	etag  string
}

// Handler serves the console: the page at /, its script and style sheet,
// and the JavaScript client's modules at /client/. Other paths are 404,
// whatever the method; other methods than GET and HEAD are 405. It may be
// mounted at "/" for every method, so that it never conflicts with the
// method-less patterns of the mux (such as "/ws").
func Handler() http.Handler {
	files := make(map[string]*file)
	add := func(fsys fs.FS, prefix string) {
		err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := fs.ReadFile(fsys, p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			ctype := mime.TypeByExtension(path.Ext(p))
			if strings.HasSuffix(p, ".js") {
				ctype = "text/javascript; charset=utf-8"
			}
			if ctype == "" {
				ctype = "application/octet-stream"
			}
			files[prefix+p] = &file{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
			return nil
		})
		if err != nil {
			panic(err) // embedded files are readable
		}
	}
	add(pageFS, "/")
	add(clientFS, "/client/")
	files["/"] = files["/index.html"]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := files[r.URL.Path]
		if f == nil || r.URL.Path == "/index.html" {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.ctype)
		h.Set("ETag", f.etag)
		// Revalidate every time: a new broker version must not run with
		// an old client from the cache. The ETag keeps it cheap.
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		if strings.HasPrefix(f.ctype, "text/html") {
			h.Set("Content-Security-Policy", csp)
			h.Set("X-Frame-Options", "DENY")
		}
		if match := r.Header.Get("If-None-Match"); match != "" && etagMatch(match, f.etag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		h.Set("Content-Length", strconv.Itoa(len(f.body)))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(f.body)
		}
	})
}

func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return sub
}
