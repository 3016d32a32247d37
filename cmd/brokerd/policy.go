package main

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/store"
)

// The policies key of the config file: a list of mappings, one per topic
// pattern. Every other key of the file is a flag name (see readConfigFile).
//
//	policies:
//	  - match: "orders.>"
//	    retention: {max-age: 720h}
//	  - match: "chat.room.*"
//	    retention: {max-age: 24h, max-messages: 1000}
//	    max-message-bytes: 4096
//	    max-topics: 10000
//	    publish-rate: 20
//	    pattern-replay: false
//	  - match: "cursor.>"
//	    presence: false

var (
	policyKeys    = []string{"match", "name", "storage", "retention", "max-message-bytes", "max-topics", "publish-rate", "publish-burst", "pattern-replay", "presence"}
	retentionKeys = []string{"max-age", "max-bytes", "max-messages"}
)

// parsePolicies turns the policies value of the config file into policies;
// errors name the policy and the field.
func parsePolicies(v any) ([]broker.Policy, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, errors.New("policies: a list of policies (- match: ...) is expected")
	}
	if len(list) > broker.MaxPolicies {
		return nil, fmt.Errorf("policies: %d policies, at most %d", len(list), broker.MaxPolicies)
	}
	var errs []error
	out := make([]broker.Policy, 0, len(list))
	for i, item := range list {
		p, err := parsePolicy(item)
		if err != nil {
			where := fmt.Sprintf("policies[%d]", i)
			if p.Match != "" {
				where += fmt.Sprintf(" (match %q)", p.Match)
			}
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

func parsePolicy(item any) (broker.Policy, error) {
	var p broker.Policy
	m, ok := item.(map[string]any)
	if !ok {
		return p, errors.New("a mapping (match: ..., retention: ...) is expected")
	}
	if s, ok := m["match"].(string); ok {
		p.Match = s
	}
	if err := unknownKeys(m, policyKeys, ""); err != nil {
		return p, err
	}
	var errs []error
	field := func(name string, f func(v any) error) {
		v, ok := m[name]
		if !ok {
			return
		}
		if err := f(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if _, ok := m["match"]; !ok {
		errs = append(errs, errors.New("match: missing (a topic pattern such as orders.>)"))
	}
	field("match", func(v any) error { return asString(v, &p.Match) })
	field("name", func(v any) error { return asString(v, &p.Name) })
	field("storage", func(v any) error {
		var s string
		if err := asString(v, &s); err != nil {
			return err
		}
		switch s {
		case "durable":
			return nil
		case "ephemeral":
			p.Ephemeral = true
			return nil
		}
		return fmt.Errorf("%q: durable or ephemeral is expected", s)
	})
	field("max-message-bytes", func(v any) error { return asPositive(v, &p.MaxMessageBytes) })
	field("max-topics", func(v any) error { return asPositive(v, &p.MaxTopics) })
	field("publish-rate", func(v any) error {
		f, ok := asFloat(v)
		if !ok || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
			return fmt.Errorf("%v: publishes per second (0 or more) is expected", v)
		}
		p.PublishRate = f
		return nil
	})
	field("publish-burst", func(v any) error { return asPositive(v, &p.PublishBurst) })
	field("pattern-replay", func(v any) error {
		b, ok := v.(bool)
		if !ok {
			return fmt.Errorf("%v: true or false is expected", v)
		}
		p.NoPatternReplay = !b
		return nil
	})
	field("presence", func(v any) error {
		b, ok := v.(bool)
		if !ok {
			return fmt.Errorf("%v: true or false is expected", v)
		}
		p.NoPresence = !b
		return nil
	})
	field("retention", func(v any) error {
		r, ok := v.(map[string]any)
		if !ok {
			return errors.New("a mapping {max-age, max-bytes, max-messages} is expected")
		}
		if err := unknownKeys(r, retentionKeys, ""); err != nil {
			return err
		}
		if v, ok := r["max-age"]; ok {
			s := fmt.Sprint(v)
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				errs = append(errs, fmt.Errorf("retention.max-age: %q: a positive duration such as 720h or 30s is expected", s))
			}
			p.Retention.MaxAge = d
		}
		for _, x := range []struct {
			name string
			dst  *int64
		}{{"max-bytes", &p.Retention.MaxBytes}, {"max-messages", &p.Retention.MaxMessages}} {
			if v, ok := r[x.name]; ok {
				var n int
				if err := asPositive(v, &n); err != nil {
					errs = append(errs, fmt.Errorf("retention.%s: %w", x.name, err))
				}
				*x.dst = int64(n)
			}
		}
		return nil
	})
	return p, errors.Join(errs...)
}

func unknownKeys(m map[string]any, known []string, prefix string) error {
	var bad []string
	for k := range m {
		found := false
		for _, x := range known {
			found = found || k == x
		}
		if !found {
			bad = append(bad, prefix+k)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return fmt.Errorf("unknown field(s) %s (known: %s)", strings.Join(bad, ", "), strings.Join(known, ", "))
}

func asString(v any, dst *string) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("%v: a string is expected", v)
	}
	*dst = s
	return nil
}

func asPositive(v any, dst *int) error {
	n, ok := v.(int)
	if !ok || n <= 0 {
		return fmt.Errorf("%v: a positive whole number is expected", v)
	}
	*dst = n
	return nil
}

func asFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// policies returns the configured policies, the global retention flags
// being the default policy's.
func (c *config) policies() (*broker.Policies, error) {
	def := broker.Policy{Retention: broker.Retention{MaxAge: c.RetentionAge, MaxBytes: c.RetentionBytes, MaxMessages: c.RetentionMsgs}}
	var errs []error
	for i, p := range c.policyList {
		if p.MaxMessageBytes > c.MaxMessageBytes {
			errs = append(errs, fmt.Errorf("policies[%d] (match %q): max-message-bytes %d is larger than %s %d", i, p.Match, p.MaxMessageBytes, c.optName("max-message-bytes"), c.MaxMessageBytes))
		}
	}
	if _, err := broker.NewPolicies(def, c.policyList); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("config file %s: %w", c.ConfigFile, err)
	}
	return broker.NewPolicies(def, c.policyList)
}

// retentionOf is the store's retention of a topic under the policies
// cur holds at the time of each call.
func retentionOf(cur func() *broker.Policies) func(topic string) store.Retention {
	return func(topic string) store.Retention {
		r := cur().For(topic).Retention
		return store.Retention{MaxAge: r.MaxAge, MaxBytes: r.MaxBytes, MaxMessages: r.MaxMessages}
	}
}
