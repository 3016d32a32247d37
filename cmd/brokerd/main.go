// Command brokerd is the brokerd WebSocket pub/sub broker.
//
// It serves the brokerd.v1.json subprotocol on /ws and keeps every topic
// as a durable log in a bbolt file under --data. Run `brokerd --help` for
// the options; each flag can also be set as an environment variable
// BROKERD_<FLAG> (upper case, dashes as underscores). Flags win over the
// environment.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster"
	"github.com/brokerd/brokerd/internal/metrics"
	"github.com/brokerd/brokerd/internal/server"
	"github.com/brokerd/brokerd/store"
)

func main() {
	// A first argument naming a tool runs it (brokerd help lists them);
	// otherwise brokerd is the daemon.
	if len(os.Args) > 1 {
		if code, ok := runSubcommand(os.Args[1], os.Args[2:]); ok {
			os.Exit(code)
		}
	}
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if err != nil {
		if errors.Is(err, errHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		os.Exit(1)
	}
}

func run(cfg *config) error {
	log := cfg.logger()
	// Catch SIGTERM before anything is announced: a signal sent as soon as
	// the listening line appears must drain, not kill the process.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	// SIGHUP reloads the configuration (once the server runs: until then
	// it waits here, instead of killing the process).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	authn, err := cfg.authenticator()
	if err != nil {
		return err
	}
	var live *liveAuth // a reload changes the keys inside
	if authn != nil {
		live = newLiveAuth(authn)
		authn = live
	}
	adminTok, err := cfg.adminToken()
	if err != nil {
		return err
	}
	var tlsCfg *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	policies, err := cfg.policies()
	if err != nil {
		return err
	}
	// The store's retention pass asks for each topic's policy: it reads
	// the current set, which a reload replaces.
	var curPolicies atomic.Pointer[broker.Policies]
	curPolicies.Store(policies)
	m := metrics.New()
	m.SetBuildInfo(version)
	so := cfg.storeOptions(log, m)
	so.RetentionOf = retentionOf(curPolicies.Load)
	st, err := store.Open(cfg.Data, so)
	if err != nil {
		return fmt.Errorf("data directory %s: %w", cfg.Data, err)
	}
	defer st.Close()

	var bst broker.Store = st
	var node *cluster.Node
	if cfg.NATS != "" {
		if node, err = joinCluster(cfg, log, st, m.ObserveRenewLateness); err != nil {
			return err
		}
		defer node.Close()
		bst = node
	}
	bc := cfg.brokerConfig(log, authn, m)
	bc.Policies = policies
	b, err := broker.New(bc, bst)
	if err != nil {
		return err
	}
	sc := cfg.serverConfig(log)
	sc.AdminToken = adminTok
	sc.Backup = st.Backup // this node's own store, in a cluster too
	var rl *reloader      // set before the server serves
	sc.Reload = func() (server.ReloadResult, error) { return rl.reload() }
	edge, err := server.New(sc, b)
	if err != nil {
		return err
	}
	rl = &reloader{args: cfg.args, getenv: cfg.getenv, log: log, boot: cfg, observe: m.ObserveReload,
		policies: &curPolicies, broker: b, edge: edge, auth: live}
	src := metrics.Sources{Broker: b, StoreBytes: st.Size, Topics: st.TopicCount, ReadPanics: edge.ReadPanics, Rejected: edge.Rejected, Edge: edge}
	if node != nil {
		src.Cluster = node.Stats
	}
	m.Register(src)
	m.RegisterReady(func() bool { // as /readyz answers
		_, _, err := b.Store().Topic("_readyz")
		return !b.Draining() && err == nil && b.StorageFailing() == nil
	})
	edge.Mux().Handle("GET /metrics", m.Handler())

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	ln = edge.Listener(ln)
	scheme := "http"
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
		scheme = "https"
	}
	hs := edge.HTTPServer()
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	authMode := "off: every client may publish and subscribe to every topic"
	if authn != nil {
		authMode = "on: JWT bearer tokens required"
	}
	log.Info("brokerd listening", "addr", ln.Addr().String(), "scheme", scheme, "data", cfg.Data, "auth", authMode, "version", version)

wait:
	for {
		select {
		case err := <-serveErr:
			return fmt.Errorf("serve: %w", err)
		case <-hup:
			_, _ = rl.reload() // logged and counted
		case s := <-sig:
			log.Info("draining", "signal", s.String(), "timeout", cfg.ShutdownTimeout)
			break wait
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if node != nil {
		// Hand the partitions over first: clients still connected are
		// served by forwarding until they are closed.
		drainCluster(ctx, node, log)
	}
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Shutdown(ctx) }()
	// Shutdown returns once every client has been handed its 1001 close.
	if err := b.Shutdown(ctx); err != nil {
		log.Warn("closing connections did not finish", "err", err, "open", b.Stats().Connections.Load())
	}
	if err := <-httpDone; err != nil {
		log.Warn("http shutdown did not finish", "err", err)
	}
	if node != nil {
		_ = node.Close()
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("closing the store: %w", err)
	}
	log.Info("stopped")
	return nil
}
