// Package core holds the cluster's decisions with no I/O: who takes a
// partition's lease and with which data, when a lease is stale, which
// terms a follower admits, which followers a partition has and which of
// them its lease names, and how far a topic's records are acknowledged.
//
// Nothing here starts a goroutine, reads a clock, holds a connection or
// touches a store: callers pass the time (Time, on their own clock), what
// they read from the lease bucket and what their local data holds, and
// carry out what the functions return. The package cluster runs these
// functions against NATS and the local store; the simulator in
// cluster/sim runs the very same functions against a fake bucket and a
// fake network under virtual time, and checks the cluster's invariants
// after every step.
//
// Rules are the safety rules a simulation may turn off one at a time, to
// show that it finds the violation each one prevents; the cluster always
// runs with Safe().
package core
