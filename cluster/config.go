package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/brokerd/brokerd/store"
)

// Config configures a Node. Local and Node are required, and one of
// NATSURLs and Conn; everything else has a default.
type Config struct {
	// NATSURLs are the NATS servers to connect to. The Node opens its own
	// connection (with NoEcho) and closes it in Close.
	NATSURLs []string
	// Conn is an established connection to use instead of NATSURLs. The
	// Node does not close it.
	Conn *nats.Conn
	// Cluster namespaces the NATS subjects (brokerd.<Cluster>.…) and the
	// KV buckets (brokerd_<Cluster>_…), so that clusters can share a NATS.
	// Default "brokerd".
	Cluster string
	// Node is this node's name, unique in the cluster: letters, digits,
	// '-' and '_'.
	Node string
	// Local is this node's store. The Node installs its own commit hook on
	// it, so it must not have seen an append yet.
	Local *store.DB
	// Partitions is the number of partitions topics are hashed into; each
	// has one owner at a time. Every node of a cluster must use the same
	// number. Default 64.
	Partitions int
	// LeaseTTL is how long a partition lease lasts without renewal; an
	// owner renews every LeaseTTL/3, and a dead owner's partitions move
	// after about LeaseTTL. Default 5s.
	LeaseTTL time.Duration
	// RequestTimeout bounds one request to another node, and how long an
	// operation waits for its partition to get an owner. Default
	// 2×LeaseTTL.
	RequestTimeout time.Duration
	// Replicas is how many nodes hold each record (and each consumer
	// offset) before it is answered ok: the owner and Replicas-1
	// followers. 1 is no replication. With 2 or more, as many nodes must be
	// alive for a publish to succeed. 0, the default, is ReplicasAuto.
	// Every node of a cluster must use the same value.
	Replicas int
	// UncleanTakeoverAfter, when positive, lets a node that does not hold
	// a partition's history take the partition over, its topics starting a
	// new epoch, once the partition's lease has gone unrenewed (as this
	// node watched it) for this long and none of the nodes that hold the
	// history (its owner and the followers named in the lease) has taken
	// it. It trades the history for availability when those nodes are
	// gone for good. 0, the default, never does: the partition stays
	// unavailable until a node holding its history comes back. Without
	// replication (Replicas = 1) it has no effect.
	UncleanTakeoverAfter time.Duration
	// ObserveRenewLateness, when set, is called after each renewal of a
	// lease this node holds with how late it was: from when the renewal was
	// due (a third of the TTL after the last one was sent) to its answer.
	ObserveRenewLateness func(time.Duration)
	Logger               *slog.Logger
}

// ReplicasAuto, as Config.Replicas, keeps two copies of each record while
// two or more nodes are alive and one when a node is alone: a cluster
// of one node keeps working, and once a second node holds a partition's
// history (a node joining, or replacing a dead follower, is first sent
// it) every record is acknowledged only once both hold it. While it is
// being sent the history, the owner acknowledges with its own copy, as
// when alone: a copy on a node without the history could not take the
// partition over, so waiting for it would only hold publishes up.
const ReplicasAuto = 0

// followerCount returns how many followers a partition has among the
// live members: Replicas-1, or with ReplicasAuto one when another node is
// alive.
func (c Config) followerCount(members int) int {
	if c.Replicas == ReplicasAuto {
		return min(1, max(members-1, 0))
	}
	return c.Replicas - 1
}

// replicated tells whether records are copied to followers at all.
func (c Config) replicated() bool { return c.Replicas != 1 }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func (c Config) withDefaults() Config {
	if c.Cluster == "" {
		c.Cluster = "brokerd"
	}
	if c.Partitions == 0 {
		c.Partitions = 64
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 2 * c.LeaseTTL
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if !nameRE.MatchString(c.Cluster) {
		errs = append(errs, fmt.Errorf("cluster: cluster name %q: want 1 to 64 letters, digits, '-' or '_'", c.Cluster))
	}
	if !nameRE.MatchString(c.Node) {
		errs = append(errs, fmt.Errorf("cluster: node name %q: want 1 to 64 letters, digits, '-' or '_'", c.Node))
	}
	if c.Local == nil {
		errs = append(errs, errors.New("cluster: Config.Local is required"))
	}
	if c.Conn == nil && len(c.NATSURLs) == 0 {
		errs = append(errs, errors.New("cluster: give NATSURLs or Conn"))
	}
	if c.Partitions < 1 || c.Partitions > 4096 {
		errs = append(errs, fmt.Errorf("cluster: partitions %d: want 1 to 4096", c.Partitions))
	}
	if c.LeaseTTL < 300*time.Millisecond {
		errs = append(errs, fmt.Errorf("cluster: lease TTL %v: want at least 300ms", c.LeaseTTL))
	}
	if c.Replicas < 0 || c.Replicas > 16 {
		errs = append(errs, fmt.Errorf("cluster: replicas %d: want 0 (automatic) or 1 to 16", c.Replicas))
	}
	if c.UncleanTakeoverAfter < 0 {
		errs = append(errs, fmt.Errorf("cluster: unclean takeover after %v: want 0 (never) or a positive duration", c.UncleanTakeoverAfter))
	}
	if c.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("cluster: request timeout %v must be positive", c.RequestTimeout))
	}
	return errors.Join(errs...)
}
