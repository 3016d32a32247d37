package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/golang-jwt/jwt/v5"
)

func pemPublic(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func sign(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func good() jwt.MapClaims {
	return jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(),
		"publish": []string{"chat.>"}, "subscribe": []string{"chat.*", "news"}}
}

func TestVerify(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)

	hmacV, err := NewHMAC(secret)
	if err != nil {
		t.Fatal(err)
	}
	rsaV, err := NewPublicKey(pemPublic(t, &rsaKey.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	ecV, err := NewPublicKey(pemPublic(t, &ecKey.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	edV, err := NewPublicKey(pemPublic(t, edPub))
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pemPublic(t, &rsaKey.PublicKey)

	expired := good()
	expired["exp"] = time.Now().Add(-time.Minute).Unix()
	noExp := good()
	delete(noExp, "exp")
	noSub := good()
	delete(noSub, "sub")
	badPattern := good()
	badPattern["subscribe"] = []string{"a..b"}

	cases := []struct {
		name  string
		v     *Verifier
		token string
		want  error // nil: accepted
	}{
		{"hs256", hmacV, sign(t, jwt.SigningMethodHS256, secret, good()), nil},
		{"hs512", hmacV, sign(t, jwt.SigningMethodHS512, secret, good()), nil},
		{"rs256", rsaV, sign(t, jwt.SigningMethodRS256, rsaKey, good()), nil},
		{"es256", ecV, sign(t, jwt.SigningMethodES256, ecKey, good()), nil},
		{"eddsa", edV, sign(t, jwt.SigningMethodEdDSA, edPriv, good()), nil},
		{"wrong secret", hmacV, sign(t, jwt.SigningMethodHS256, []byte("another secret of thirty-two bytes!!"), good()), broker.ErrTokenInvalid},
		{"alg none", hmacV, sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, good()), broker.ErrTokenInvalid},
		// Key confusion: an HS256 token whose "secret" is the RSA public key.
		{"key confusion", rsaV, sign(t, jwt.SigningMethodHS256, rsaPEM, good()), broker.ErrTokenInvalid},
		{"rs384 on an RS256 key", rsaV, sign(t, jwt.SigningMethodRS384, rsaKey, good()), broker.ErrTokenInvalid},
		{"expired", hmacV, sign(t, jwt.SigningMethodHS256, secret, expired), broker.ErrTokenExpired},
		{"no exp", hmacV, sign(t, jwt.SigningMethodHS256, secret, noExp), broker.ErrTokenInvalid},
		{"no sub", hmacV, sign(t, jwt.SigningMethodHS256, secret, noSub), broker.ErrTokenInvalid},
		{"bad pattern", hmacV, sign(t, jwt.SigningMethodHS256, secret, badPattern), broker.ErrTokenInvalid},
		{"garbage", hmacV, "not.a.token", broker.ErrTokenInvalid},
		{"empty", hmacV, "", broker.ErrTokenInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g, err := c.v.Verify(c.token)
			if c.want == nil {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if g.Subject != "alice" || !g.CanPublish("chat.x.y") || g.CanPublish("news") ||
					!g.CanSubscribe("chat.a") || !g.CanSubscribe("chat.*") || g.CanSubscribe("chat.>") || !g.CanSubscribe("news") {
					t.Fatalf("grant %+v", g)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
}

func TestKeyErrors(t *testing.T) {
	if _, err := NewHMAC([]byte("short")); err == nil {
		t.Fatal("short secret accepted")
	}
	if _, err := NewPublicKey([]byte("no pem here")); err == nil {
		t.Fatal("garbage accepted")
	}
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	priv := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	if _, err := NewPublicKey(priv); err == nil {
		t.Fatal("private key accepted")
	}
}

// Issue 15: an exp given as a string was accepted, and a sub claim of
// kilobytes made every durable consumer command fail later.
func TestVerifyRefusesOddClaims(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	v, err := NewHMAC(secret)
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Unix()
	for _, tc := range []struct {
		name   string
		claims jwt.MapClaims
		want   error
	}{
		{"exp as a string", jwt.MapClaims{"sub": "a", "exp": fmt.Sprint(exp)}, broker.ErrTokenInvalid},
		{"nbf as a string", jwt.MapClaims{"sub": "a", "exp": exp, "nbf": "0"}, broker.ErrTokenInvalid},
		{"long sub", jwt.MapClaims{"sub": strings.Repeat("u", 2000), "exp": exp}, broker.ErrSubjectTooLong},
		{"sub at the limit", jwt.MapClaims{"sub": strings.Repeat("u", broker.MaxSubjectBytes), "exp": exp}, nil},
		{"max_topics", jwt.MapClaims{"sub": "a", "exp": exp, "max_topics": 100}, nil},
		{"negative max_topics", jwt.MapClaims{"sub": "a", "exp": exp, "max_topics": -1}, broker.ErrTokenInvalid},
		{"fractional max_topics", jwt.MapClaims{"sub": "a", "exp": exp, "max_topics": 1.5}, broker.ErrTokenInvalid},
		{"max_topics as a string", jwt.MapClaims{"sub": "a", "exp": exp, "max_topics": "100"}, broker.ErrTokenInvalid},
		{"huge max_topics", jwt.MapClaims{"sub": "a", "exp": exp, "max_topics": int64(1) << 40}, broker.ErrTokenInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := v.Verify(sign(t, jwt.SigningMethodHS256, secret, tc.claims))
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Verify: %v, want %v", err, tc.want)
			}
			if n, ok := tc.claims["max_topics"].(int); ok && err == nil && g.MaxTopics != n {
				t.Fatalf("MaxTopics %d, want %d", g.MaxTopics, n)
			}
		})
	}
}
