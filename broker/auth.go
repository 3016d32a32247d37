package broker

import (
	"errors"
	"strings"
	"time"
)

// Errors an Authenticator returns; implementations wrap them with %w.
var (
	// ErrTokenInvalid: the token is malformed, badly signed, of another
	// algorithm, or lacks a required claim. Closes with 4001.
	ErrTokenInvalid = errors.New("broker: invalid token")
	// ErrTokenExpired: the token was valid but has expired. Closes with 4003.
	ErrTokenExpired = errors.New("broker: token expired")
)

// Authenticator verifies a bearer token and returns what it grants.
// Verify is called concurrently and must not block on I/O for long.
type Authenticator interface {
	Verify(token string) (*Grant, error)
}

// Grant is what a verified token allows.
type Grant struct {
	// Subject is the user; durable consumers belong to it.
	Subject string
	// Expires is when the grant ends; the connection then closes with 4003
	// unless a fresh token arrived first.
	Expires time.Time
	// Publish and Subscribe are topic patterns ('*' one segment, '>' the
	// rest) the holder may publish to and subscribe to.
	Publish   []string
	Subscribe []string
	// MaxTopics bounds the topics the holder's user may create through
	// a server (the max_topics claim); 0: the server's MaxTopicsPerUser.
	MaxTopics int
}

// CanPublish reports whether the grant allows publishing to topic.
func (g *Grant) CanPublish(topic string) bool { return coveredBy(g.Publish, topic) }

// CanSubscribe reports whether the grant allows subscribing to topic, or,
// for a pattern, whether one subscribe pattern covers the pattern whole.
// Acknowledging a durable consumer's offsets needs the same right.
func (g *Grant) CanSubscribe(topicOrPattern string) bool {
	return coveredBy(g.Subscribe, topicOrPattern)
}

func coveredBy(grants []string, s string) bool {
	for _, p := range grants {
		if Covers(p, s) {
			return true
		}
	}
	return false
}

// Covers reports whether every topic matched by s (a topic or a pattern)
// is matched by pattern p.
func Covers(p, s string) bool {
	for {
		ph, pt, pmore := strings.Cut(p, ".")
		sh, st, smore := strings.Cut(s, ".")
		switch {
		case ph == ">":
			return true // covers one or more remaining segments, whatever they are
		case sh == ">":
			return false // s matches more segments than p can, p's head is not '>'
		case ph == "*":
			// covers any single segment, literal or '*'
		case ph != sh:
			return false
		}
		if !pmore || !smore {
			return pmore == smore
		}
		p, s = pt, st
	}
}
