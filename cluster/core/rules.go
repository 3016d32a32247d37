package core

// Rule names one safety rule of the cluster.
type Rule int

const (
	// HolderOnly: with replication, only a node that holds a partition's
	// history (a follower the lease names, or the node that handed the
	// lease back) takes it over; another node waits for one to come back,
	// however long every heartbeat has been gone.
	HolderOnly Rule = iota
	// TermCheck: a follower refuses records of a term lower than the
	// highest it has seen.
	TermCheck
	// ListSynced: a lease names only the followers that hold every
	// acknowledged record.
	ListSynced
	// WaitCopies: a record is acknowledged only once the followers in
	// sync, and at least the required number of followers, hold it.
	WaitCopies
	// TakeIntent: a node records on disk the take it sets out to do
	// before it writes the lease, and takes up a lease naming it in a term
	// its data was never made ready for as it set out to (Intent).
	TakeIntent
	numRules
)

func (r Rule) String() string {
	switch r {
	case HolderOnly:
		return "holder-only takeover"
	case TermCheck:
		return "followers' term check"
	case ListSynced:
		return "lease names followers in sync only"
	case WaitCopies:
		return "wait for copies before ok"
	case TakeIntent:
		return "take intent on disk"
	}
	return "unknown rule"
}

// Rules is a set of safety rules turned off. The zero value, Safe(), has
// every rule on.
type Rules struct {
	off [numRules]bool
}

// Safe returns the rules with every safety rule on: what the cluster runs.
func Safe() Rules { return Rules{} }

// Without returns r with rule turned off. Only simulations do that.
func (r Rules) Without(rule Rule) Rules {
	r.off[rule] = true
	return r
}

// On tells whether rule is on.
func (r Rules) On(rule Rule) bool { return !r.off[rule] }

// AllRules lists every rule, for simulations that turn them off in turn.
func AllRules() []Rule { return []Rule{HolderOnly, TermCheck, ListSynced, WaitCopies, TakeIntent} }
