package cluster_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/brokerd/brokerd/broker"
)

// TestListingCompleteOrUnavailable: a listing of the cluster's topics or
// consumers holds all of them or fails with ErrUnavailable. A node that
// does not answer, or a partition nobody serves for a moment, is never
// passed off as a complete list.
func TestListingCompleteOrUnavailable(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nodes := startCluster(t, url, "list", 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	var want []string
	for i, tn := range nodes {
		topic := topicOwnedBy(t, tn, fmt.Sprintf("list%d.", i))
		if _, err := a.Node.Append(t.Context(), topic, []byte("1"), ""); err != nil {
			t.Fatal(err)
		}
		want = append(want, topic)
	}
	ofB := want[1]
	slices.Sort(want)
	list := func() ([]string, error) {
		infos, err := a.Node.Topics("", 100)
		var out []string
		for _, ti := range infos {
			out = append(out, ti.Topic)
		}
		return out, err
	}
	if got, err := list(); err != nil || !slices.Equal(got, want) {
		t.Fatalf("listing: %v %v, want %v", got, err, want)
	}

	// A node that answers no request.
	resume := c.Node.PauseRPC()
	_, err := list()
	if !errors.Is(err, broker.ErrUnavailable) || !strings.Contains(err.Error(), "n3") {
		t.Fatalf("listing without n3's answer: %v, want unavailable naming n3", err)
	}
	if _, err := a.Node.Consumers("w"); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("consumers without n3's answer: %v, want unavailable", err)
	}
	resume()
	if got, err := list(); err != nil || !slices.Equal(got, want) {
		t.Fatalf("listing after n3 answers again: %v %v, want %v", got, err, want)
	}

	// A partition its owner stops serving until its next lease pass
	// claims it back: each listing is whole or unavailable.
	unavailable := 0
	for range 20 {
		b.Node.RefuseRenewal(ofB)
		got, err := list()
		switch {
		case errors.Is(err, broker.ErrUnavailable):
			unavailable++
		case err != nil:
			t.Fatal(err)
		case !slices.Equal(got, want):
			t.Fatalf("a partial listing passed off as complete: %v, want %v", got, want)
		}
		waitFor(t, "the partition served again", func() bool { return b.Node.Serving(ofB) })
	}
	if unavailable == 0 {
		t.Fatal("no listing saw the partition unserved")
	}
	t.Logf("%d of 20 listings made while a partition was unserved answered unavailable", unavailable)
}
