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
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/server"
	"github.com/brokerd/brokerd/store"
)

func main() {
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
	st, err := store.Open(cfg.Data, &store.Options{Logger: log})
	if err != nil {
		return fmt.Errorf("data directory %s: %w", cfg.Data, err)
	}
	defer st.Close()

	b, err := broker.New(cfg.brokerConfig(log), st)
	if err != nil {
		return err
	}
	edge, err := server.New(cfg.serverConfig(log), b)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	hs := &http.Server{
		Handler:           edge.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	log.Info("brokerd listening", "addr", ln.Addr().String(), "data", cfg.Data, "node", cfg.Node,
		"auth", "off: every client may publish and subscribe to every topic")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case s := <-sig:
		log.Info("draining", "signal", s.String(), "timeout", cfg.ShutdownTimeout)
	}
	signal.Stop(sig)

	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Shutdown(ctx) }()
	if err := b.Shutdown(ctx); err != nil {
		log.Warn("closing connections did not finish", "err", err)
	}
	if err := <-httpDone; err != nil {
		log.Warn("http shutdown did not finish", "err", err)
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("closing the store: %w", err)
	}
	log.Info("stopped")
	return nil
}
