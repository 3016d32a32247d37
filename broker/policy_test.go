package broker

import (
	"strings"
	"testing"
	"time"
)

// TestPolicyMatchOrder: a topic gets the most specific matching policy,
// whatever the order of the list, and the default one when none matches.
func TestPolicyMatchOrder(t *testing.T) {
	list := []Policy{
		{Match: ">"},
		{Match: "chat.>"},
		{Match: "chat.*"},
		{Match: "chat.room.*"},
		{Match: "chat.*.admin"},
		{Match: "chat.room.lobby", Name: "lobby"},
		{Match: "*.room.>"},
		{Match: "orders.>"},
	}
	cases := map[string]string{
		"chat.room.lobby":    "lobby",
		"chat.room.x":        "chat.room.*",
		"chat.room.admin":    "chat.room.*", // a literal before '*' at the first difference
		"chat.hall.admin":    "chat.*.admin",
		"chat.hall":          "chat.*",
		"chat.room":          "chat.*",
		"chat.hall.x.y":      "chat.>",
		"chat.room.x.y":      "chat.>",
		"game.room.x":        "*.room.>",
		"orders.eu.1":        "orders.>",
		"orders":             ">",
		"x":                  ">",
		"chat.room.lobby.go": "chat.>",
	}
	for _, order := range [][]int{{0, 1, 2, 3, 4, 5, 6, 7}, {7, 6, 5, 4, 3, 2, 1, 0}, {3, 0, 6, 1, 5, 2, 7, 4}} {
		var l []Policy
		for _, i := range order {
			l = append(l, list[i])
		}
		ps, err := NewPolicies(Policy{}, l)
		if err != nil {
			t.Fatal(err)
		}
		for topic, want := range cases {
			if got := ps.For(topic).Name; got != want {
				t.Errorf("order %v: For(%q) = %q, want %q", order, topic, got, want)
			}
		}
	}
	ps, err := NewPolicies(Policy{Retention: Retention{MaxAge: time.Hour}}, []Policy{{Match: "a.*"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := ps.For("b"); p.Name != DefaultPolicyName || p.Retention.MaxAge != time.Hour {
		t.Fatalf("default policy: %+v", p)
	}
	if l := ps.List(); len(l) != 2 || l[0].Match != "a.*" || l[1].Name != DefaultPolicyName {
		t.Fatalf("List: %+v", l)
	}
}

// TestPolicyValidation: every bad field is refused, named, together.
func TestPolicyValidation(t *testing.T) {
	cases := []struct {
		p    []Policy
		want string
	}{
		{[]Policy{{Match: "a..b"}}, `policies[0] (match "a..b"): match:`},
		{[]Policy{{Match: "a.>.b"}}, `match: "a.>.b" is not`},
		{[]Policy{{Match: ""}}, `match: "" is not`},
		{[]Policy{{Match: "a.*"}, {Match: "a.*"}}, `policies[1] (match "a.*"): match: another policy`},
		{[]Policy{{Match: "a.*", Name: "x"}, {Match: "b.*", Name: "x"}}, `name: "x" is taken`},
		{[]Policy{{Match: "a.*", Name: DefaultPolicyName}}, `name: "default" is taken`},
		{[]Policy{{Match: "a", Retention: Retention{MaxAge: -1}}}, "retention max-age"},
		{[]Policy{{Match: "a", Retention: Retention{MaxBytes: -1}}}, "retention max-bytes"},
		{[]Policy{{Match: "a", Retention: Retention{MaxMessages: -1}}}, "retention max-messages"},
		{[]Policy{{Match: "a", MaxMessageBytes: -1}}, "max-message-bytes"},
		{[]Policy{{Match: "a", PublishRate: -1}}, "publish-rate"},
		{[]Policy{{Match: "a", PublishBurst: -1}}, "publish-burst"},
		{make([]Policy, MaxPolicies+1), "more than"},
	}
	for _, c := range cases {
		_, err := NewPolicies(Policy{}, c.p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want it to say %q", c.p, err, c.want)
		}
	}
	ps, err := NewPolicies(Policy{}, []Policy{{Match: "a", PublishRate: 2.5}})
	if err != nil {
		t.Fatal(err)
	}
	if p := ps.For("a"); p.PublishBurst != 2 {
		t.Fatalf("default burst %d, want the rate (2)", p.PublishBurst)
	}
}
