package broker

import (
	"fmt"
	"sync"
)

// Topics per user. A store bounds the topics it holds (and each policy's),
// but one signed-in user could still create them all, and every other user
// would then be refused. So a server bounds the topics each user creates
// through it: Config.MaxTopicsPerUser, or a token's own MaxTopics (the
// max_topics claim). A server counts, in memory, the topics its sessions
// and HTTP publishes created for each user and that were not deleted since
// (an idle topic deleted gives its place back). A restart forgets the
// counts, and each node of a cluster counts what was created through it.
//
// The count is exact within a server: an operation that may create a topic
// reserves a place first, so pipelined publishes to many new topics cannot
// overshoot; at the bound only operations on topics that exist are let
// through (one store lookup each).

type topicQuota struct {
	mu      sync.Mutex
	held    map[string]int    // user → topics created and not deleted
	pending map[string]int    // user → operations in flight that may create one
	creator map[string]string // topic → the user who created it
}

// quotaOf returns g's user and bound; max 0: not bounded.
func (srv *Server) quotaOf(g *Grant) (user string, max int) {
	if g == nil || g.Subject == "" {
		return "", 0
	}
	if g.MaxTopics > 0 {
		return g.Subject, g.MaxTopics
	}
	return g.Subject, srv.cfg.MaxTopicsPerUser
}

// created is called once an operation admitted by admitTopic has ended;
// made tells whether it created its topic.
type created func(made bool)

func noQuota(bool) {}

// admitTopic admits an operation of g's user that may create topic, or
// refuses it with ErrTooManyTopics. The caller calls the returned function
// once the operation has ended, whatever its outcome.
func (srv *Server) admitTopic(g *Grant, topic string) (created, error) {
	user, max := srv.quotaOf(g)
	if max <= 0 {
		return noQuota, nil
	}
	q := &srv.quota
	q.mu.Lock()
	if q.creator[topic] != "" {
		q.mu.Unlock()
		return noQuota, nil // created through this server and not deleted: it exists
	}
	if q.held[user]+q.pending[user] < max {
		if q.pending == nil {
			q.pending = make(map[string]int)
		}
		q.pending[user]++
		q.mu.Unlock()
		return func(made bool) {
			q.mu.Lock()
			if q.pending[user]--; q.pending[user] == 0 {
				delete(q.pending, user)
			}
			if made {
				q.recordLocked(topic, user)
			}
			q.mu.Unlock()
		}, nil
	}
	q.mu.Unlock()
	// At the bound: only a topic that exists may be used.
	if _, ok, err := srv.store.Topic(topic); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("%w: %d topics created by user %q, the limit", ErrTooManyTopics, max, user)
	}
	// Deleted meanwhile and created again by this operation: counted,
	// beyond the bound by this one.
	return func(made bool) {
		if made {
			q.mu.Lock()
			q.recordLocked(topic, user)
			q.mu.Unlock()
		}
	}, nil
}

func (q *topicQuota) recordLocked(topic, user string) {
	if q.creator[topic] != "" {
		return
	}
	if q.creator == nil {
		q.creator, q.held = make(map[string]string), make(map[string]int)
	}
	q.creator[topic] = user
	q.held[user]++
}

// forget gives the places of deleted topics back to their creators.
func (q *topicQuota) forget(topics []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, t := range topics {
		user := q.creator[t]
		if user == "" {
			continue
		}
		delete(q.creator, t)
		if q.held[user]--; q.held[user] <= 0 {
			delete(q.held, user)
		}
	}
}

// TopicsCreatedBy returns the topics this server counts as created by
// user and not deleted.
func (srv *Server) TopicsCreatedBy(user string) int {
	srv.quota.mu.Lock()
	defer srv.quota.mu.Unlock()
	return srv.quota.held[user]
}
