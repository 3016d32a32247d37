package server

import (
	"net/http"
	"strconv"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// serveBackup streams a consistent copy of this node's store file (GET
// /v1/admin/backup), for brokerd backup. It needs the admin token; one
// backup runs at a time per node. The copy comes from one read transaction
// of the store, so publishing goes on meanwhile. Content-Length is the
// copy's size: a copy cut short (the node stopped, the network failed) is
// seen as such by the client. A client that stops reading for the HTTP
// write timeout is cut off, so a backup cannot hold the store open
// forever.
func (s *Server) serveBackup(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Backup == nil {
		s.writeErr(w, subproto.CodeNotFound, "this node has no store to back up", nil)
		return
	}
	if !s.admin(w, r) {
		return
	}
	if !s.backupBusy.CompareAndSwap(false, true) {
		w.Header().Set("Retry-After", "10")
		s.writeErr(w, subproto.CodeRateLimited, "a backup of this node is under way already", nil)
		return
	}
	defer s.backupBusy.Store(false)

	started := false
	start := time.Now()
	rc := http.NewResponseController(w)
	n, err := s.cfg.Backup(deadlineWriter{w, rc, s.cfg.HTTPWriteTimeout}, func(size int64) {
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		h.Set("Content-Disposition", `attachment; filename="brokerd.db"`)
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		started = true
	})
	if err != nil {
		if !started {
			s.writeErr(w, subproto.CodeUnavailable, "the store cannot be copied now: "+err.Error(), nil)
			return
		}
		s.log.Warn("backup cut short", "bytes", n, "err", err, "remote", r.RemoteAddr)
		// The status line is out: end the connection, so the client sees
		// fewer bytes than Content-Length said.
		panic(http.ErrAbortHandler)
	}
	s.log.Info("backup streamed", "bytes", n, "took", time.Since(start).Round(time.Millisecond), "remote", r.RemoteAddr)
}

// deadlineWriter gives each write of a long answer its own deadline: the
// answer may take as long as it needs while it makes progress.
type deadlineWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(d.timeout))
	return d.w.Write(p)
}
