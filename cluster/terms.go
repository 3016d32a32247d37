package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/brokerd/brokerd/cluster/core"
)

// dataTerm returns the term the local data of p belongs to as its owner.
func (n *Node) dataTerm(p int) uint64 {
	n.tmu.Lock()
	defer n.tmu.Unlock()
	return n.terms.Terms[p]
}

// terms records which lease term the local data of each partition belongs
// to, so that a node that takes back a lease of the same term keeps its
// data. It is a small JSON file beside the store.
type terms struct {
	Cluster    string         `json:"cluster"`
	Partitions int            `json:"partitions"`
	Terms      map[int]uint64 `json:"terms"`
	// Followed: with replication, the term of the owner whose records
	// this node last accepted as a follower, per partition.
	Followed map[int]uint64 `json:"followed,omitempty"`
	// Taking: the take of a partition this node set out to do, written
	// before the lease and removed once the data is ready for its term
	// (see core.Intent).
	Taking map[int]core.Intent `json:"taking,omitempty"`
	// Bucket identifies the lease bucket the terms are revisions of (its
	// creation time): a bucket made anew starts its revisions over.
	Bucket string `json:"bucket,omitempty"`
}

// intent returns the take of p this node set out to do and whose data
// was not made ready since, if any.
func (n *Node) intent(p int) *core.Intent {
	n.tmu.Lock()
	defer n.tmu.Unlock()
	if i, ok := n.terms.Taking[p]; ok {
		return &i
	}
	return nil
}

// setIntent records durably, before the lease is written, that this node
// sets out to take p against revision rev, with its data or not.
func (n *Node) setIntent(p int, rev uint64, keep bool) error {
	n.tmu.Lock()
	defer n.tmu.Unlock()
	if i, ok := n.terms.Taking[p]; ok && i == (core.Intent{Rev: rev, Keep: keep}) {
		return nil
	}
	n.terms.Taking[p] = core.Intent{Rev: rev, Keep: keep}
	return n.terms.save(n.termsPath)
}

func loadTerms(path, cluster string, partitions int) (*terms, error) {
	t := &terms{Cluster: cluster, Partitions: partitions, Terms: map[int]uint64{}, Followed: map[int]uint64{}, Taking: map[int]core.Intent{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return nil, err
	}
	var f terms
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("cluster: %s: %w", filepath.Base(path), err)
	}
	if f.Cluster == cluster && f.Partitions == partitions && f.Terms != nil {
		t.Terms, t.Bucket = f.Terms, f.Bucket
		if f.Followed != nil {
			t.Followed = f.Followed
		}
		if f.Taking != nil {
			t.Taking = f.Taking
		}
	}
	return t, nil
}

// save writes the record durably before the partition is served.
func (t *terms) save(path string) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
