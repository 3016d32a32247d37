package server

import (
	"crypto/subtle"
	"net/http"

	"github.com/brokerd/brokerd/subproto"
)

// admin reports whether r carries the node's admin token, and answers it
// when not: 403 when the node has none (the admin endpoints are off), 401
// when the token is missing or wrong.
func (s *Server) admin(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.AdminToken == "" {
		s.writeErr(w, subproto.CodeForbidden, "the admin endpoints are off: start brokerd with --admin-token-file (or BROKERD_ADMIN_TOKEN)", nil)
		return false
	}
	tok := bearer(r)
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) != 1 {
		s.writeErr(w, subproto.CodeUnauthorized, "the admin token is missing or wrong (Authorization: Bearer <admin token>)", nil)
		return false
	}
	return true
}

// serveReload reads the node's configuration again (POST
// /v1/admin/reload), for brokerd reload: 200 with what was applied, or 400
// bad_request with why the configuration was refused (the running one
// stays). It needs the admin token. The request body is not read.
func (s *Server) serveReload(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Reload == nil {
		s.writeErr(w, subproto.CodeNotFound, "this node has no configuration to reload", nil)
		return
	}
	if !s.admin(w, r) {
		return
	}
	res, err := s.cfg.Reload()
	if err != nil {
		s.writeErr(w, subproto.CodeBadRequest, "configuration refused, the running one stays: "+err.Error(), nil)
		return
	}
	s.log.Info("configuration reloaded on request", "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, res)
}
