package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

const healthAbout = `Asks the brokerd on this machine whether it is ready (GET /readyz) and exits
0 when it answers 200, 1 otherwise, printing why. Made for container health
checks: it needs no curl in the image. The address is --addr, else
BROKERD_ADDR (the daemon's own setting), else :8080; an unspecified host
means 127.0.0.1. With BROKERD_TLS_CERT set it speaks HTTPS without
verifying the certificate (it only talks to the local node).`

func runHealth(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("health", "", healthAbout)
	addr := ":8080"
	var timeout time.Duration
	var useTLS bool
	fs.StringVar(&addr, "addr", addr, "the daemon's listen address (env BROKERD_ADDR)")
	fs.DurationVar(&timeout, "timeout", 3*time.Second, "how long the answer may take")
	fs.BoolVar(&useTLS, "tls", false, "speak HTTPS (the default when BROKERD_TLS_CERT is set)")
	if code, done := parseFlags(fs, args, 0, 0, stdout, stderr); done {
		return code
	}
	envOr(fs, "addr", envName("addr"), &addr)
	var cert string
	envOr(fs, "tls", envName("tls-cert"), &cert)
	useTLS = useTLS || cert != ""
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintf(stderr, "brokerd health: address %q: %v\n", addr, err)
		return 2
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	scheme := "http"
	hc := &http.Client{Timeout: timeout}
	if useTLS {
		scheme = "https"
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the local node only
	}
	url := scheme + "://" + net.JoinHostPort(host, port) + "/readyz"
	resp, err := hc.Get(url)
	if err != nil {
		fmt.Fprintf(stderr, "brokerd health: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "brokerd health: %s answered %s: %s\n", url, resp.Status, body)
		return 1
	}
	fmt.Fprintf(stdout, "ready: %s\n", url)
	return 0
}

// insecureTransport speaks HTTPS without verifying the certificate.
func insecureTransport() *http.Transport {
	return &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // asked for with --insecure
}
