package broker

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/brokerd/brokerd/subproto"
	"golang.org/x/time/rate"
)

// MaxPolicies bounds the policies of one Policies: a topic's policy is
// found by trying them in turn.
const MaxPolicies = 1000

// DefaultPolicyName names the policy of topics no other policy matches.
const DefaultPolicyName = "default"

// Retention bounds a topic's retained history (see store.Retention): the
// oldest records go first until every limit holds. Zero fields inherit the
// default policy's.
type Retention struct {
	MaxAge      time.Duration
	MaxBytes    int64
	MaxMessages int64
}

// Policy is how the broker treats the topics matching a pattern.
type Policy struct {
	// Name is shown in topic listings (default: Match; the default
	// policy's is DefaultPolicyName).
	Name string
	// Match is the topic pattern ('*' one segment, '>' one or more
	// trailing segments); "" for the default policy.
	Match string
	// Retention of these topics; zero fields inherit the default policy's.
	Retention Retention
	// MaxMessageBytes bounds the data of one publish to these topics; 0
	// (or more than Config.MaxMessageBytes) leaves Config.MaxMessageBytes.
	MaxMessageBytes int
	// PublishRate bounds the publishes per second one connection may make
	// to the topics of this policy (all together), with bursts up to
	// PublishBurst (default: the rate, at least 1); past it a pub gets err
	// rate_limited. 0: no limit.
	PublishRate  float64
	PublishBurst int
	// NoPatternReplay: pattern subscriptions deliver these topics live
	// only: their positions and since are ignored for them.
	NoPatternReplay bool
	// NoPresence: a sub of these topics with presence is refused
	// (forbidden), and the presence command lists nobody.
	NoPresence bool
	// Ephemeral topics keep a bounded log in memory only (see
	// ephemeralStore): Retention bounds it, with the DefaultEphemeral
	// values for what it leaves out (not the default policy's).
	Ephemeral bool
	// MaxTopics bounds the topics of this policy held at once (0: no
	// bound beyond the store's): a pub or sub that would create one more
	// gets ErrTooManyTopics and creates nothing. Durable topics are
	// counted by the store (a TopicBounder; in a cluster, each owner's),
	// ephemeral ones in memory.
	MaxTopics int
}

// TopicClass names the class of a topic and the most topics of that class
// a store may hold (0 or less: no bound).
type TopicClass func(topic string) (class string, max int)

// TopicBounder is implemented by a Store that bounds the topics of classes
// of names: the server makes each policy with MaxTopics a class.
// SetTopicClasses replaces the classes (nil: none) and counts the topics
// each holds, once per call.
type TopicBounder interface {
	SetTopicClasses(fn TopicClass) error
}

// topicClass is ps's TopicClass for durable topics: a policy with
// MaxTopics is a class, named by the policy.
func (ps *Policies) topicClass(topic string) (string, int) {
	p := ps.For(topic)
	if p.Ephemeral || p.MaxTopics <= 0 {
		return "", 0
	}
	return "policy " + strconv.Quote(p.Name), p.MaxTopics
}

// classes describes which class each topic falls in under ps (every
// pattern, and which policies bound their topics), not the bounds: two
// Policies with the same description put every topic in the same class.
// "" when no durable policy bounds its topics.
func (ps *Policies) classes() string {
	var b strings.Builder
	bounded := false
	for _, p := range append(ps.list, ps.def) {
		cls := !p.Ephemeral && p.MaxTopics > 0
		bounded = bounded || cls
		fmt.Fprintf(&b, "%q %q %t\n", p.Match, p.Name, cls)
	}
	if !bounded {
		return ""
	}
	return b.String()
}

// boundTopics hands ps's topic bounds to the durable store. When the
// topics fall in the same classes as under the policies before (only
// bounds changed), the store's counts stay good and are not taken again.
// A store that cannot bound topics refuses policies with MaxTopics.
// reloadMu is held, or the server is being made.
func (srv *Server) boundTopics(ps *Policies) error {
	st := srv.store
	if srv.eph != nil {
		st = srv.eph.Store
	}
	b, ok := st.(TopicBounder)
	classes := ps.classes()
	switch {
	case classes == srv.classes:
		srv.classPolicies.Store(ps) // the bounds the store reads
		return nil
	case classes != "" && !ok:
		return errors.New("broker: policies with max-topics need a store that bounds topics")
	case classes == "":
		if err := b.SetTopicClasses(nil); err != nil {
			return err
		}
	default:
		cp := &srv.classPolicies
		prev := cp.Swap(ps)
		err := b.SetTopicClasses(func(topic string) (string, int) { return cp.Load().topicClass(topic) })
		if err != nil {
			cp.Store(prev) // the store keeps the classes it had, and their bounds
			return err
		}
	}
	srv.classes = classes
	return nil
}

// Policies is an immutable set of policies: For finds a topic's.
type Policies struct {
	list []*Policy // most specific first
	def  *Policy
}

// NewPolicies checks list and returns the set; def is the default policy
// (its Match is ignored). Errors name the policy (policies[i], counted
// from 0 in list) and the field, for an operator to read. The order of list does not matter: a topic gets
// the most specific policy that matches it (see For).
func NewPolicies(def Policy, list []Policy) (*Policies, error) {
	if len(list) > MaxPolicies {
		return nil, fmt.Errorf("policies: %d of them, more than %d", len(list), MaxPolicies)
	}
	def.Match = ""
	if def.Name == "" {
		def.Name = DefaultPolicyName
	}
	var errs []error
	if err := def.check(); err != nil {
		errs = append(errs, fmt.Errorf("default policy: %w", err))
	}
	ps := &Policies{def: &def, list: make([]*Policy, 0, len(list))}
	names := map[string]bool{def.Name: true}
	matches := map[string]bool{}
	for i := range list {
		p := list[i]
		if p.Name == "" {
			p.Name = p.Match
		}
		where := fmt.Sprintf("policies[%d] (match %q)", i, p.Match)
		switch {
		case !subproto.ValidPattern(p.Match):
			errs = append(errs, fmt.Errorf("%s: match: %q is not a topic or pattern", where, p.Match))
			continue
		case matches[p.Match]:
			errs = append(errs, fmt.Errorf("%s: match: another policy matches %q already", where, p.Match))
			continue
		case names[p.Name]:
			errs = append(errs, fmt.Errorf("%s: name: %q is taken", where, p.Name))
			continue
		}
		if err := p.check(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		matches[p.Match], names[p.Name] = true, true
		ps.list = append(ps.list, &p)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.SortStableFunc(ps.list, func(a, b *Policy) int { return compareSpecific(a.Match, b.Match) })
	return ps, nil
}

func (p *Policy) check() error {
	switch {
	case len(p.Name) > subproto.MaxTopicLen:
		return fmt.Errorf("name is longer than %d bytes", subproto.MaxTopicLen)
	case p.Retention.MaxAge < 0:
		return fmt.Errorf("retention max-age must be positive, got %v", p.Retention.MaxAge)
	case p.Retention.MaxBytes < 0:
		return fmt.Errorf("retention max-bytes must be positive, got %d", p.Retention.MaxBytes)
	case p.Retention.MaxMessages < 0:
		return fmt.Errorf("retention max-messages must be positive, got %d", p.Retention.MaxMessages)
	case p.MaxMessageBytes < 0:
		return fmt.Errorf("max-message-bytes must be positive, got %d", p.MaxMessageBytes)
	case p.PublishRate < 0:
		return fmt.Errorf("publish-rate must not be negative (0 turns it off), got %v", p.PublishRate)
	case p.PublishBurst < 0:
		return fmt.Errorf("publish-burst must be positive, got %d", p.PublishBurst)
	case p.MaxTopics < 0:
		return fmt.Errorf("max-topics must not be negative (0 turns it off), got %d", p.MaxTopics)
	}
	if p.PublishRate > 0 && p.PublishBurst == 0 {
		p.PublishBurst = max(1, int(p.PublishRate))
	}
	return nil
}

// compareSpecific orders patterns most specific first: segment by segment
// from the left, a literal before '*', and '*' before '>'; at the first
// difference in kind the more specific wins. Patterns of the same kinds
// throughout: the longer first, then by name, so the order is total.
func compareSpecific(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if d := segKind(as[i]) - segKind(bs[i]); d != 0 {
			return d
		}
	}
	if d := len(bs) - len(as); d != 0 {
		return d
	}
	return strings.Compare(a, b)
}

func segKind(s string) int {
	switch s {
	case ">":
		return 2
	case "*":
		return 1
	}
	return 0
}

// For returns the policy of topic: the most specific policy whose pattern
// matches it, else the default policy. Never nil.
func (ps *Policies) For(topic string) *Policy {
	for _, p := range ps.list {
		if subproto.Match(p.Match, topic) {
			return p
		}
	}
	return ps.def
}

// Default returns the default policy.
func (ps *Policies) Default() *Policy { return ps.def }

// List returns the policies, most specific first, the default one last.
func (ps *Policies) List() []Policy {
	out := make([]Policy, 0, len(ps.list)+1)
	for _, p := range ps.list {
		out = append(out, *p)
	}
	return append(out, *ps.def)
}

// SetPolicies replaces the server's policies; publishes and subscriptions
// from then on follow them. Connections stay open; a connection's publish
// rate limits start afresh. Which topics are ephemeral is fixed at New:
// when the server's policies or ps have an ephemeral policy, ps must have
// the same patterns, each with the same storage, or SetPolicies refuses
// it with an error and changes nothing.
func (srv *Server) SetPolicies(ps *Policies) error {
	if ps == nil {
		return errors.New("broker: nil policies")
	}
	srv.reloadMu.Lock()
	defer srv.reloadMu.Unlock()
	if err := srv.CheckPolicies(ps); err != nil {
		return err
	}
	if err := srv.boundTopics(ps); err != nil {
		return err
	}
	srv.policies.Store(ps)
	return nil
}

// CheckPolicies returns the error SetPolicies(ps) would return, and
// changes nothing.
func (srv *Server) CheckPolicies(ps *Policies) error {
	if ps == nil {
		return errors.New("broker: nil policies")
	}
	return sameStorage(srv.policies.Load(), ps)
}

// HasEphemeral reports whether one of the policies is ephemeral.
func (ps *Policies) HasEphemeral() bool {
	for _, p := range ps.list {
		if p.Ephemeral {
			return true
		}
	}
	return false
}

// sameStorage checks that going from old to ps changes no topic's
// storage.
func sameStorage(old, ps *Policies) error {
	if !old.HasEphemeral() && !ps.HasEphemeral() {
		return nil
	}
	if len(old.list) != len(ps.list) {
		return errors.New("broker: with ephemeral policies, adding or removing a policy takes a restart (it may change which topics are ephemeral)")
	}
	for i, p := range ps.list {
		o := old.list[i] // both sorted the same way: the same patterns match alike
		if o.Match != p.Match {
			return fmt.Errorf("broker: with ephemeral policies, changing the pattern %q takes a restart", o.Match)
		}
		if o.Ephemeral != p.Ephemeral {
			return fmt.Errorf("broker: changing the storage of policy %q takes a restart", p.Name)
		}
	}
	return nil
}

// Policies returns the server's current policies.
func (srv *Server) Policies() *Policies { return srv.policies.Load() }

// Policy returns topic's policy.
func (srv *Server) Policy(topic string) *Policy { return srv.policies.Load().For(topic) }

// maxMessageBytes is the largest data a publish to a topic of p may carry.
func (srv *Server) maxMessageBytes(p *Policy) int {
	if p.MaxMessageBytes > 0 && p.MaxMessageBytes < srv.cfg.MaxMessageBytes {
		return p.MaxMessageBytes
	}
	return srv.cfg.MaxMessageBytes
}

// publishAllowed applies p's publish rate to this connection; when it
// refuses, it returns the error for the client. Called from the reader.
func (s *Session) publishAllowed(id uint64, p *Policy) (*subproto.Error, *subproto.ErrContext) {
	if p.PublishRate <= 0 {
		return nil, nil
	}
	if cur := s.srv.policies.Load(); s.pubGen != cur {
		// New policies: forget the limiters of the old ones, so the map
		// holds at most one per policy.
		s.pubGen, s.pubLimits = cur, nil
	}
	lim := s.pubLimits[p]
	if lim == nil {
		if s.pubLimits == nil {
			s.pubLimits = make(map[*Policy]*rate.Limiter)
		}
		lim = rate.NewLimiter(rate.Limit(p.PublishRate), p.PublishBurst)
		s.pubLimits[p] = lim
	}
	if lim.Allow() {
		return nil, nil
	}
	retry := int(1000/p.PublishRate) + 1
	return &subproto.Error{Code: subproto.CodeRateLimited, ID: id,
			Message: fmt.Sprintf("more than %g publishes per second to topics of policy %s from this connection", p.PublishRate, p.Name)},
		&subproto.ErrContext{RetryAfterMs: retry}
}
