package main

import (
	"errors"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/server"
)

// reloadable are the options a reload (SIGHUP) applies to the running
// server; a change to any other is logged as needing a restart. The
// retention flags are the default policy's retention.
var reloadable = map[string]bool{
	"allowed-origins": true, "jwt-secret": true, "jwt-secret-file": true, "jwt-public-key": true,
	"retention-max-age": true, "retention-max-bytes": true, "retention-max-messages": true,
}

// reloader reads the configuration again, from the same command line and
// environment (so the config file and the key files are read afresh), and
// applies what may change while the server runs: the policies, the
// allowed origins and the JWT keys. Connections stay open. A
// configuration that does not pass the checks of a start is refused as a
// whole: the running one stays.
type reloader struct {
	args    []string
	getenv  func(string) string
	log     *slog.Logger
	boot    *config // the configuration the process started with
	observe func(error)

	policies *atomic.Pointer[broker.Policies] // read by the store's retention pass
	broker   *broker.Server
	edge     *server.Server
	auth     *liveAuth // nil when auth is off

	mu sync.Mutex // one reload at a time
}

// reload is called on SIGHUP and by POST /v1/admin/reload (brokerd
// reload).
func (r *reloader) reload() (server.ReloadResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res, err := r.apply()
	if r.observe != nil {
		r.observe(err)
	}
	if err != nil {
		r.log.Error("configuration reload refused: the running configuration stays", "file", r.boot.ConfigFile, "err", err)
	}
	return res, err
}

func (r *reloader) apply() (server.ReloadResult, error) {
	var none server.ReloadResult
	c, err := parseConfig(r.args, r.getenv)
	if err != nil {
		return none, err
	}
	ps, err := c.policies()
	if err != nil {
		return none, err
	}
	a, err := c.authenticator()
	if err != nil {
		return none, err
	}
	if (a == nil) != (r.auth == nil) {
		return none, errors.New("turning auth on or off takes a restart: the JWT options may change keys, not be added or removed")
	}
	if err := r.broker.CheckPolicies(ps); err != nil {
		return none, err
	}
	// Applied in this order, the first step is the only one that may fail.
	if err := r.edge.SetAllowedOrigins(splitList(c.AllowedOrigins)); err != nil {
		return none, err
	}
	r.policies.Store(ps)
	if err := r.broker.SetPolicies(ps); err != nil {
		return none, err // checked above: not reached
	}
	if a != nil {
		r.auth.set(a)
	}
	var restart []string
	for name, v := range c.values {
		if !reloadable[name] && r.boot.values[name] != v {
			restart = append(restart, "--"+name)
		}
	}
	sort.Strings(restart)
	res := server.ReloadResult{File: c.ConfigFile, Policies: len(ps.List()) - 1, NeedsRestart: restart}
	attrs := []any{"file", c.ConfigFile, "policies", res.Policies}
	if len(restart) > 0 {
		attrs = append(attrs, "needs_restart", strings.Join(restart, ","))
		r.log.Warn("configuration reloaded; changed options that take effect only at a restart", attrs...)
		return res, nil
	}
	r.log.Info("configuration reloaded", attrs...)
	return res, nil
}

// liveAuth is the broker's Authenticator when auth is on: a reload
// replaces the verifier inside (new keys) while connections stay.
// Connections keep what their token granted until it expires or they
// send another; new tokens are checked with the new keys.
type liveAuth struct {
	cur atomic.Pointer[authBox]
}

type authBox struct{ a broker.Authenticator }

func newLiveAuth(a broker.Authenticator) *liveAuth {
	l := &liveAuth{}
	l.set(a)
	return l
}

func (l *liveAuth) set(a broker.Authenticator) { l.cur.Store(&authBox{a}) }

// Verify checks token with the current keys.
func (l *liveAuth) Verify(token string) (*broker.Grant, error) {
	return l.cur.Load().a.Verify(token)
}
