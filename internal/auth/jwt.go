// Package auth verifies brokerd's bearer tokens: JWTs signed with a
// configured HMAC secret or public key, the algorithm pinned by the key so
// that neither "none" nor a key-confusion attack gets through.
//
// Claims: "sub" (the user, at most broker.MaxSubjectBytes; durable
// consumers belong to it), "exp" (required, a JSON number), and the arrays "publish" and "subscribe" of topic patterns
// ('*' one segment, '>' the rest).
package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/subproto"
	"github.com/golang-jwt/jwt/v5"
)

// Claims are the claims brokerd reads from a token.
type Claims struct {
	jwt.RegisteredClaims
	Publish   []string `json:"publish,omitempty"`
	Subscribe []string `json:"subscribe,omitempty"`
	// MaxTopics bounds the topics the token's user may create through a
	// server (broker.Grant.MaxTopics); 0 or absent: the server's
	// --max-topics-per-user.
	MaxTopics int64 `json:"max_topics,omitempty"`
}

// Verifier verifies tokens with one key and its pinned algorithms.
type Verifier struct {
	key     any
	methods []string
	leeway  time.Duration
}

var _ broker.Authenticator = (*Verifier)(nil)

// NewHMAC returns a Verifier for tokens signed with secret using HS256,
// HS384 or HS512. The secret must be at least 32 bytes.
func NewHMAC(secret []byte) (*Verifier, error) {
	if len(secret) < 32 {
		return nil, fmt.Errorf("auth: the HMAC secret is %d bytes; use at least 32 random bytes", len(secret))
	}
	return &Verifier{key: secret, methods: []string{"HS256", "HS384", "HS512"}}, nil
}

// NewPublicKey returns a Verifier for a PEM public key (PKIX "PUBLIC KEY",
// or an RSA "RSA PUBLIC KEY", or a certificate): RSA verifies RS256, an EC
// P-256 key ES256 (P-384 ES384, P-521 ES512), Ed25519 EdDSA.
func NewPublicKey(pemBytes []byte) (*Verifier, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("auth: the public key file holds no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		cert, err = x509.ParseCertificate(block.Bytes)
		if err == nil {
			key = cert.PublicKey
		}
	default:
		return nil, fmt.Errorf("auth: PEM block %q is not a public key (a private key must never be given to the broker)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("auth: parsing the public key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("auth: the RSA key has %d bits; use at least 2048", k.N.BitLen())
		}
		return &Verifier{key: k, methods: []string{"RS256"}}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return &Verifier{key: k, methods: []string{"ES256"}}, nil
		case elliptic.P384():
			return &Verifier{key: k, methods: []string{"ES384"}}, nil
		case elliptic.P521():
			return &Verifier{key: k, methods: []string{"ES512"}}, nil
		}
		return nil, errors.New("auth: unsupported EC curve; use P-256")
	case ed25519.PublicKey:
		return &Verifier{key: k, methods: []string{"EdDSA"}}, nil
	}
	return nil, fmt.Errorf("auth: unsupported public key type %T", key)
}

// numericDates refuses a token whose exp, nbf or iat is not a JSON number
// (RFC 7519 NumericDate): the JWT library also takes a string such as
// "9999999999". The token's signature has been checked already.
func numericDates(token string) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return errors.New("the token is not three parts")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return fmt.Errorf("the payload is not base64url: %v", err)
	}
	var dates struct {
		Exp json.RawMessage `json:"exp"`
		Nbf json.RawMessage `json:"nbf"`
		Iat json.RawMessage `json:"iat"`
	}
	if err := json.Unmarshal(payload, &dates); err != nil {
		return fmt.Errorf("the payload is not a JSON object: %v", err)
	}
	for _, d := range []struct {
		name string
		v    json.RawMessage
	}{{"exp", dates.Exp}, {"nbf", dates.Nbf}, {"iat", dates.Iat}} {
		if len(d.v) > 0 && !bytes.Equal(d.v, []byte("null")) && d.v[0] != '-' && (d.v[0] < '0' || d.v[0] > '9') {
			return fmt.Errorf("the %s claim is not a number of seconds: %s", d.name, d.v)
		}
	}
	return nil
}

// Methods returns the signing algorithms the verifier accepts.
func (v *Verifier) Methods() []string { return append([]string(nil), v.methods...) }

// Verify checks token's signature, algorithm and claims and returns its
// grant. Errors wrap broker.ErrTokenExpired or broker.ErrTokenInvalid.
func (v *Verifier) Verify(token string) (*broker.Grant, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.key, nil },
		jwt.WithValidMethods(v.methods),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(v.leeway),
	)
	if err == nil {
		err = numericDates(token)
	}
	if err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return nil, fmt.Errorf("%w: %v", broker.ErrTokenExpired, err)
		}
		return nil, fmt.Errorf("%w: %v", broker.ErrTokenInvalid, err)
	}
	if c.Subject == "" {
		return nil, fmt.Errorf("%w: the token has no sub claim", broker.ErrTokenInvalid)
	}
	if len(c.Subject) > broker.MaxSubjectBytes {
		return nil, broker.ErrSubjectTooLong
	}
	for _, list := range [][]string{c.Publish, c.Subscribe} {
		for _, p := range list {
			if !subproto.ValidPattern(p) {
				return nil, fmt.Errorf("%w: %q is not a topic pattern", broker.ErrTokenInvalid, p)
			}
		}
	}
	if c.MaxTopics < 0 || c.MaxTopics > math.MaxInt32 {
		return nil, fmt.Errorf("%w: max_topics %d: a whole number from 0 to %d is expected", broker.ErrTokenInvalid, c.MaxTopics, math.MaxInt32)
	}
	return &broker.Grant{
		Subject:   c.Subject,
		Expires:   c.ExpiresAt.Time,
		Publish:   c.Publish,
		Subscribe: c.Subscribe,
		MaxTopics: int(c.MaxTopics),
	}, nil
}
