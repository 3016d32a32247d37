package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/internal/auth"
	"github.com/golang-jwt/jwt/v5"
)

const tokenAbout = `Mints a JWT that brokerd accepts, signed with the HMAC secret the broker
verifies with (--jwt-secret, --jwt-secret-file, or BROKERD_JWT_SECRET /
BROKERD_JWT_SECRET_FILE as the daemon reads them) or with the private key
matching the broker's --jwt-public-key (--private-key: RSA signs RS256, EC
P-256 ES256, P-384 ES384, P-521 ES512, Ed25519 EdDSA). The token is checked
with the broker's own verifier, then printed on stdout.

Example:
  brokerd token --jwt-secret-file jwt.secret --sub alice --publish 'chat.>' --subscribe 'chat.>' --ttl 24h`

func runToken(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("token", "", tokenAbout)
	var secret, secretFile, keyFile, sub, alg string
	var pub, subs listFlag
	var ttl time.Duration
	var maxTopics int
	fs.StringVar(&secret, "jwt-secret", "", "HMAC secret (at least 32 bytes), as given to the broker")
	fs.StringVar(&secretFile, "jwt-secret-file", "", "file holding the HMAC secret (surrounding whitespace trimmed), as given to the broker")
	fs.StringVar(&keyFile, "private-key", "", "PEM private key (PKCS#8, PKCS#1 RSA or SEC 1 EC) whose public key the broker has in --jwt-public-key")
	fs.StringVar(&alg, "alg", "", "signing algorithm; default HS256 with a secret, else the key's (RS256, ES256/384/512, EdDSA)")
	fs.StringVar(&sub, "sub", "", "the token's subject: the user (durable consumers belong to it); required")
	fs.Var(&pub, "publish", "topic patterns the token may publish to ('*' one segment, '>' the rest); comma-separated or repeated")
	fs.Var(&subs, "subscribe", "topic patterns the token may subscribe to; comma-separated or repeated")
	fs.DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid (its exp claim)")
	fs.IntVar(&maxTopics, "max-topics", 0, "the most topics the token's user may create through a broker (its max_topics claim); 0: the broker's --max-topics-per-user")
	if code, done := parseFlags(fs, args, 0, 0, stdout, stderr); done {
		return code
	}
	envOr(fs, "jwt-secret", envName("jwt-secret"), &secret)
	envOr(fs, "jwt-secret-file", envName("jwt-secret-file"), &secretFile)
	tok, err := mintToken(secret, secretFile, keyFile, alg, sub, pub, subs, maxTopics, ttl, time.Now())
	if err != nil {
		fmt.Fprintln(stderr, "brokerd token:", err)
		return 2
	}
	fmt.Fprintln(stdout, tok)
	return 0
}

// mintToken signs the claims and verifies the result as the broker would.
func mintToken(secret, secretFile, keyFile, alg, sub string, pub, subs []string, maxTopics int, ttl time.Duration, now time.Time) (string, error) {
	if sub == "" {
		return "", errors.New("--sub is required: the user the token is for")
	}
	if len(sub) > broker.MaxSubjectBytes {
		return "", fmt.Errorf("--sub is %d bytes; at most %d", len(sub), broker.MaxSubjectBytes)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("--ttl must be positive, got %v", ttl)
	}
	if maxTopics < 0 {
		return "", fmt.Errorf("--max-topics must not be negative, got %d", maxTopics)
	}
	if len(pub) == 0 && len(subs) == 0 {
		return "", errors.New("give --publish and/or --subscribe patterns: a token without either may do nothing")
	}
	n := 0
	for _, v := range []string{secret, secretFile, keyFile} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return "", errors.New("give exactly one of --jwt-secret, --jwt-secret-file and --private-key")
	}
	var signKey any
	var verifier *auth.Verifier
	var err error
	switch {
	case secret != "" || secretFile != "":
		if secretFile != "" {
			b, err := os.ReadFile(secretFile)
			if err != nil {
				return "", fmt.Errorf("--jwt-secret-file: %w", err)
			}
			secret = strings.TrimSpace(string(b))
		}
		if verifier, err = auth.NewHMAC([]byte(secret)); err != nil {
			return "", err
		}
		signKey = []byte(secret)
		if alg == "" {
			alg = "HS256"
		}
	default:
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return "", fmt.Errorf("--private-key: %w", err)
		}
		var pubKey crypto.PublicKey
		var keyAlg string
		if signKey, pubKey, keyAlg, err = parsePrivateKey(b); err != nil {
			return "", fmt.Errorf("--private-key %s: %w", keyFile, err)
		}
		der, err := x509.MarshalPKIXPublicKey(pubKey)
		if err != nil {
			return "", fmt.Errorf("--private-key %s: %w", keyFile, err)
		}
		if verifier, err = auth.NewPublicKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err != nil {
			return "", err
		}
		if alg == "" {
			alg = keyAlg
		}
	}
	method := jwt.GetSigningMethod(alg)
	if method == nil {
		return "", fmt.Errorf("--alg %q: unknown algorithm", alg)
	}
	claims := auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sub,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Publish:   pub,
		Subscribe: subs,
		MaxTopics: int64(maxTopics),
	}
	tok, err := jwt.NewWithClaims(method, claims).SignedString(signKey)
	if err != nil {
		return "", fmt.Errorf("signing with %s: %w", alg, err)
	}
	// The broker's own verifier: a pattern it rejects, or an algorithm its
	// key does not allow, fails here rather than at connect time.
	if _, err := verifier.Verify(tok); err != nil {
		return "", fmt.Errorf("the broker would reject this token: %w", err)
	}
	return tok, nil
}

// parsePrivateKey reads a PEM private key and names its algorithm.
func parsePrivateKey(b []byte) (key any, pub crypto.PublicKey, alg string, err error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, nil, "", errors.New("no PEM block")
	}
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, nil, "", fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, nil, "", err
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return k, k.Public(), "RS256", nil
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return k, k.Public(), "ES256", nil
		case elliptic.P384():
			return k, k.Public(), "ES384", nil
		case elliptic.P521():
			return k, k.Public(), "ES512", nil
		}
		return nil, nil, "", errors.New("unsupported EC curve (P-256, P-384 or P-521)")
	case ed25519.PrivateKey:
		return k, k.Public(), "EdDSA", nil
	}
	return nil, nil, "", fmt.Errorf("unsupported key type %T", key)
}
