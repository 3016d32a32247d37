package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and a pool trusting the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "brokerd test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	kder, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}

type closeRecorder struct {
	gws.BuiltinEventHandler
	msgs   chan string
	closed chan uint16
}

func (r *closeRecorder) OnMessage(_ *gws.Conn, m *gws.Message) {
	for _, line := range strings.Split(string(m.Bytes()), "\n") {
		select {
		case r.msgs <- line:
		default:
		}
	}
	m.Close()
}

func (r *closeRecorder) OnClose(_ *gws.Conn, err error) {
	var code uint16
	if ce, ok := err.(*gws.CloseError); ok {
		code = ce.Code
	}
	r.closed <- code
}

func wssDial(t *testing.T, addr, query string, pool *x509.CertPool) (*gws.Conn, *closeRecorder) {
	t.Helper()
	rec := &closeRecorder{msgs: make(chan string, 64), closed: make(chan uint16, 1)}
	h := http.Header{}
	h.Set("Sec-WebSocket-Protocol", subprotocol)
	conn, _, err := gws.NewClient(rec, &gws.ClientOption{
		Addr:          "wss://" + addr + "/ws" + query,
		RequestHeader: h,
		TlsConfig:     &tls.Config{RootCAs: pool},
	})
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	go conn.ReadLoop()
	t.Cleanup(func() { _ = conn.NetConn().Close() })
	return conn, rec
}

func nextLine(t *testing.T, rec *closeRecorder, want string) string {
	t.Helper()
	select {
	case line := <-rec.msgs:
		if !strings.Contains(line, want) {
			t.Fatalf("got %s, want it to contain %s", line, want)
		}
		return line
	case <-time.After(10 * time.Second):
		t.Fatalf("no event; want %s", want)
	}
	return ""
}

func TestTLSAndJWT(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	secret := "an HMAC secret of at least thirty-two bytes"
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, t.TempDir(), "--tls-cert", certFile, "--tls-key", keyFile,
		"--jwt-secret-file", secretFile, "--auth-timeout", "300ms")
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "svc", "exp": time.Now().Add(time.Hour).Unix(),
		"publish": []string{"ops.>"}, "subscribe": []string{"ops.>"},
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}

	// wss with the token in the query: authenticated from the start.
	conn, rec := wssDial(t, d.addr, "?token="+token, pool)
	nextLine(t, rec, `"op":"welcome"`)
	if err := conn.WriteString(`{"op":"pub","id":1,"topic":"ops.a","data":1}` + "\n" + `{"op":"pub","id":2,"topic":"other","data":1}`); err != nil {
		t.Fatal(err)
	}
	// Replies are matched by id: the forbidden one needs no fsync and may
	// come first.
	got := nextLine(t, rec, `"id":`) + nextLine(t, rec, `"id":`)
	if !strings.Contains(got, `"op":"ok","id":1`) || !strings.Contains(got, `"id":2,"code":"forbidden"`) {
		t.Fatalf("replies %s", got)
	}

	// No token: welcome, then 4001 after the auth timeout.
	_, rec2 := wssDial(t, d.addr, "", pool)
	nextLine(t, rec2, `"op":"welcome"`)
	select {
	case code := <-rec2.closed:
		if code != 4001 {
			t.Fatalf("unauthenticated connection closed with %d, want 4001", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("unauthenticated connection not closed")
	}

	// https: health without a token, the API with one.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("https://" + d.addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("https healthz: %v %v", err, resp)
	}
	resp.Body.Close()
	post := func(tok string) int {
		req, _ := http.NewRequest("POST", "https://"+d.addr+"/v1/topics/ops.b", strings.NewReader(`{"x":1}`))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(""); code != 401 {
		t.Fatalf("POST without a token: %d, want 401", code)
	}
	if code := post(token); code != 200 {
		t.Fatalf("POST with a token: %d, want 200", code)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	resp, err := http.Post(d.url("/v1/topics/m.x"), "application/json", strings.NewReader(`{"n":1}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("publish: %v %v", err, resp)
	}
	resp.Body.Close()
	code, body := httpGet(t, d.url("/metrics"))
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{"brokerd_published_total 1", "brokerd_publish_ack_seconds_count 1", "brokerd_store_bytes", "brokerd_connections 0"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
