package broker

import (
	"errors"
	"time"
)

// Reclaimer is implemented by a Store that can delete topics holding
// nothing: the Server deletes those that have been idle for
// Config.TopicIdle and have no subscriber, so that names a client merely
// touched (a sub and an unsub, a publish long trimmed away) do not stay in
// the store for good.
type Reclaimer interface {
	// IdleTopics inspects up to max topics after the name after ("" for
	// the first) and returns those holding no record whose last record,
	// or creation when they never had one, is at or before before; last
	// is the last name inspected, "" once every topic was.
	IdleTopics(after string, max int, before time.Time) (idle []TopicInfo, last string, err error)
	// DeleteIdle deletes, at once, those of the topics that still have
	// the epoch given, hold no record and whose last record (or creation)
	// is at or before before, in order with the appends around it, and
	// returns their names.
	DeleteIdle(topics []TopicInfo, before time.Time) (deleted []string, err error)
}

// reclaimPage is how many topics one IdleTopics call inspects.
const reclaimPage = 1024

// reclaimInterval is how often the server looks for idle topics: half of
// TopicIdle, between 50 ms and 5 minutes.
func (c Config) reclaimInterval() time.Duration {
	return min(max(c.TopicIdle/2, 50*time.Millisecond), 5*time.Minute)
}

// reclaimLoop deletes the idle topics of each of rs (the durable store's,
// the ephemeral topics') every reclaimInterval until Shutdown, one pass
// at a time.
func (srv *Server) reclaimLoop(rs []Reclaimer) {
	defer srv.wg.Done()
	tick := time.NewTicker(srv.cfg.reclaimInterval())
	defer tick.Stop()
	for {
		select {
		case <-srv.stop:
			return
		case <-tick.C:
		}
		for _, r := range rs {
			if _, err := srv.reclaimIdle(r); err != nil && !errors.Is(err, ErrClosed) {
				srv.log.Warn("deleting idle topics", "err", err)
			}
		}
	}
}

// reclaimIdle makes one pass over the store's topics and deletes those idle
// for TopicIdle that no subscription of this node holds. It returns how
// many it deleted.
func (srv *Server) reclaimIdle(r Reclaimer) (deleted int, err error) {
	after := ""
	for {
		before := srv.cfg.Now().Add(-srv.cfg.TopicIdle)
		idle, last, err := r.IdleTopics(after, reclaimPage, before)
		if err != nil {
			return deleted, err
		}
		select {
		case <-srv.stop:
			return deleted, nil
		default:
		}
		n, err := srv.reclaim(r, idle, before)
		deleted += n
		srv.stats.TopicsReclaimed.Add(int64(n))
		if err != nil {
			return deleted, err
		}
		if last == "" {
			return deleted, nil
		}
		after = last
	}
}

// reclaim deletes the idle topics that no subscription holds or is being
// set up for, and returns how many it deleted. While the deletion runs,
// each is marked in its shard: acquireTopic waits for the mark to go, so a
// subscription either holds its topic first (and it is kept) or is set up
// after the deletion, and handleSub, which read the topic before, starts
// over (see subStale). Only the reclaim loop calls it: one at a time.
func (srv *Server) reclaim(r Reclaimer, idle []TopicInfo, before time.Time) (int, error) {
	done := make(chan struct{})
	marked := make([]TopicInfo, 0, len(idle))
	for _, info := range idle {
		sh := srv.shard(info.Topic)
		sh.mu.Lock()
		if sh.topics[info.Topic] == nil && sh.reclaiming[info.Topic] == nil {
			if sh.reclaiming == nil {
				sh.reclaiming = make(map[string]chan struct{})
			}
			sh.reclaiming[info.Topic] = done
			marked = append(marked, info)
		}
		sh.mu.Unlock()
	}
	if len(marked) == 0 {
		return 0, nil
	}
	srv.reclaimGen.Add(1) // odd: a deletion is under way
	defer func() {
		for _, info := range marked {
			sh := srv.shard(info.Topic)
			sh.mu.Lock()
			delete(sh.reclaiming, info.Topic)
			sh.mu.Unlock()
		}
		close(done)
		srv.reclaimGen.Add(1)
	}()
	deleted, err := r.DeleteIdle(marked, before)
	srv.quota.forget(deleted)
	return len(deleted), err
}

// reclaimWait returns the channel that closes when the deletion of topic
// under way ends, nil when there is none. sh.mu is held.
func (sh *topicShard) reclaimWait(topic string) chan struct{} {
	if sh.reclaiming == nil {
		return nil
	}
	return sh.reclaiming[topic]
}

// subStale reports whether the log a sub read (epoch) was deleted or
// replaced before the sub took its topic state: then the sub starts over.
// gen is reclaimGen read before the sub read the log: when no deletion
// ran since, there is nothing to check.
func (srv *Server) subStale(topic, epoch string, gen uint64) bool {
	if gen%2 == 0 && srv.reclaimGen.Load() == gen {
		return false
	}
	info, ok, err := srv.store.Topic(topic)
	return err == nil && (!ok || info.Epoch != epoch)
}
