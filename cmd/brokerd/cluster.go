package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/brokerd/brokerd/cluster"
	"github.com/brokerd/brokerd/store"
)

var clusterNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// validateCluster checks the cluster flags; only called with --nats.
func (c *config) validateCluster() []error {
	var errs []error
	if !clusterNameRE.MatchString(c.Cluster) {
		errs = append(errs, fmt.Errorf("%s must be 1 to 64 letters, digits, '-' or '_', got %q", c.optName("cluster"), c.Cluster))
	}
	if !clusterNameRE.MatchString(c.Node) {
		errs = append(errs, fmt.Errorf("in a cluster, %s must be 1 to 64 letters, digits, '-' or '_', got %q", c.optName("node"), c.Node))
	}
	if c.Partitions < 1 || c.Partitions > 4096 {
		errs = append(errs, fmt.Errorf("%s must be 1 to 4096, got %d", c.optName("partitions"), c.Partitions))
	}
	if c.LeaseTTL < 300*time.Millisecond {
		errs = append(errs, fmt.Errorf("%s must be at least 300ms, got %v", c.optName("lease-ttl"), c.LeaseTTL))
	}
	if c.Unclean < 0 {
		errs = append(errs, fmt.Errorf("%s must be 0 (never) or a positive duration, got %v", c.optName("unclean-takeover-after"), c.Unclean))
	}
	if c.Replicas < 0 || c.Replicas > 16 {
		errs = append(errs, fmt.Errorf("%s must be 0 (automatic) or 1 to 16, got %d", c.optName("replicas"), c.Replicas))
	}
	return errs
}

// joinCluster connects to --nats and joins --cluster; the Node it returns
// is the broker's store, in front of st.
func joinCluster(c *config, log *slog.Logger, st *store.DB, renewLateness func(time.Duration)) (*cluster.Node, error) {
	if c.Unclean > 0 {
		log.Warn("unclean takeovers are on: a partition whose history no live node holds starts a new epoch after --unclean-takeover-after", "after", c.Unclean)
	}
	n, err := cluster.New(cluster.Config{
		NATSURLs:   splitList(c.NATS),
		Cluster:    c.Cluster,
		Node:       c.Node,
		Local:      st,
		Partitions: c.Partitions,
		LeaseTTL:   c.LeaseTTL,
		Replicas:   c.Replicas,
		Logger:     log,

		UncleanTakeoverAfter: c.Unclean,
		ObserveRenewLateness: renewLateness,
	})
	if err != nil {
		return nil, fmt.Errorf("--nats %s: %w", c.NATS, err)
	}
	return n, nil
}

// drainCluster hands this node's partitions to the other nodes.
func drainCluster(ctx context.Context, n *cluster.Node, log *slog.Logger) {
	if err := n.Drain(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("handing partitions over did not finish", "err", err)
	}
}
