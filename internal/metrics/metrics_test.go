package metrics

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster"
	"github.com/brokerd/brokerd/store"
)

func TestScrape(t *testing.T) {
	m := New()
	log := slog.New(slog.DiscardHandler)
	st, err := store.Open(t.TempDir(), &store.Options{Logger: log, OnCommit: m.ObserveCommit})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ps, err := broker.NewPolicies(broker.Policy{}, []broker.Policy{{Match: "e.*", Ephemeral: true}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{Logger: log, OnPublish: m.ObservePublish, Policies: ps}, st)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(context.Background())
	m.Register(Sources{Broker: b, StoreBytes: st.Size, ReadPanics: func() int64 { return 3 }, Rejected: func() (int64, int64) { return 4, 5 },
		Cluster: func() cluster.Stats {
			return cluster.Stats{Members: 3, Owned: 21, UnderReplicated: 2, Syncing: 1, Takeovers: 5, EpochResets: 7, Resends: 9}
		}})
	for i := 0; i < 3; i++ {
		if _, err := b.Publish(t.Context(), "m.t", []byte(`1`), ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Publish(t.Context(), "e.x", []byte(`"ephemeral"`), ""); err != nil {
		t.Fatal(err)
	}
	b.Stats().CountError("forbidden")

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		"brokerd_published_total 4",
		"brokerd_ephemeral_topics 1",
		"brokerd_ephemeral_bytes 91",
		"brokerd_connections 0",
		`brokerd_errors_total{code="forbidden"} 1`,
		`brokerd_errors_total{code="bad_request"} 0`,
		"brokerd_store_commit_batch_records_count",
		"brokerd_store_commit_seconds_bucket",
		"brokerd_store_bytes ",
		"brokerd_ws_reader_panics_total 3",
		"brokerd_connections_rejected_limit_total 4",
		"brokerd_connections_rejected_rate_total 5",
		"brokerd_delivered_total",
		"brokerd_slow_consumer_closes_total",
		"brokerd_cluster_members 3",
		"brokerd_cluster_partitions_owned 21",
		"brokerd_cluster_partitions_under_replicated 2",
		"brokerd_cluster_followers_syncing 1",
		"brokerd_cluster_takeovers_total 5",
		"brokerd_cluster_epoch_resets_total 7",
		"brokerd_cluster_resends_total 9",
		"go_goroutines",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if strings.Contains(text, "brokerd_store_commit_batch_records_count 0") {
		t.Error("the commit hook observed no transaction")
	}
}
