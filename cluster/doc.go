// Package cluster joins several brokerd nodes over NATS into one broker.
//
// A Node is the broker.Store (and broker.Interested) of its node's broker,
// in front of the node's local store, so the broker runs unchanged:
//
//   - Topics are hashed into a fixed number of partitions. Each partition
//     has one owner, which assigns its topics' offsets. Ownership is a
//     lease in the JetStream KV bucket brokerd_<cluster>_leases (key
//     p<partition>, value "<node> <term>"), taken with Create, renewed
//     with Update against the last revision every LeaseTTL/3, and deleted
//     on Drain. The term, the revision that created the lease, is the
//     fencing token. A lease whose revision has not changed for LeaseTTL,
//     as observed by the node itself, is stale and may be taken over with
//     Update against that revision; no clocks are compared. Live nodes
//     heartbeat in brokerd_<cluster>_nodes (entries expire after LeaseTTL),
//     read whole in one stream-info request (the subjects holding an
//     entry), never by a key lister a deadline could cut short; each node takes at most its share, ceil(partitions/nodes), and hands
//     back what is over it.
//   - Writes and reads of a topic go to its owner: locally, or by NATS
//     request-reply on brokerd.<cluster>.rpc.<node>. Listings (Topics,
//     Consumers) ask every live node for the partitions it owns.
//   - The owner publishes each committed record on
//     brokerd.<cluster>.live.<topic>; a node subscribes there only to the
//     topics and patterns its own clients want (Interest).
//   - With replication (Config.Replicas ≥ 2, or ReplicasAuto, the default,
//     with two or more live nodes) the owner sends each committed batch
//     to the partition's followers (brokerd.<cluster>.repl.<node>), which
//     store it at the same offsets; a record is answered ok, handed to
//     subscribers and published live only once they hold it durably, and
//     a consumer position is answered ok once they hold it too. The lease
//     names the followers that hold every acknowledged record; only one of
//     them (or the node that handed the lease back, with its own data)
//     takes the partition over, keeping its history and epochs, when the
//     owner dies or drains; a node joining is made a follower first and
//     handed partitions for balance only once named. See repl.go. With
//     Replicas = 1 a topic's log lives only on its owner.
//   - A node that takes a partition under a term its local data does not
//     belong to (and is not such a follower) starts every local topic of
//     it in a new epoch, so clients see epoch_mismatch rather than a gap
//     or a reused offset. The term the local data belongs to, and the term
//     this node last followed, are kept in cluster-<cluster>.json beside
//     the store.
//   - A publish answered unavailable may still be stored (the owner
//     committed it, or with replication it had not all its copies in
//     time): publishers retry with the same key, which deduplicates.
//
// Where things are:
//
//   - core/: the decisions, with no I/O: a lease's value, when it is
//     stale, who takes it and with which data (core.Rules.Pass and
//     Decide), the followers' term check (Admit), the followers a
//     partition has and which the lease names (FollowersFor, Want,
//     Listing), how far a topic is acknowledged (Acked).
//   - sim/: a deterministic simulator that runs core's decisions for many
//     nodes over a fake lease bucket and network, with faults, and checks
//     the invariants (make sim).
//   - node.go: Node and its life (start, Drain, Close); config.go.
//   - lease.go: the lease pass (who holds what, take-over, claim,
//     acquire); lease_renew.go: renewals, heartbeats, the live nodes and
//     blindness; lease_handover.go: rebalancing and hand-back;
//     terms.go: the terms file beside the store.
//   - repl.go: the replication protocol (its description) and its
//     types; repl_followers.go: a partition's followers and their
//     bring-up; repl_ack.go: the owner's side, from a commit to the
//     acknowledgement; repl_send.go: sending, resending and catch-up;
//     repl_follow.go: the follower's side; codec.go: the messages.
//   - rpc.go: requests to a topic's owner; live.go: the live fan-out;
//     claims.go: durable consumers' claims; store.go: the broker.Store
//     the broker sees; presence.go: presence across the nodes (the
//     broker.PresenceBus), held in memory, never stored.
package cluster
