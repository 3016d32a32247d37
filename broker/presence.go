package broker

import (
	"bytes"
	"hash/maphash"
	"sync"

	"github.com/brokerd/brokerd/subproto"
)

// Presence (protocol v1.1): a sub made with "presence": true is a member
// of its topic's presence while it lasts. The members of a topic are
// those of this node and, in a cluster, those the other nodes announce
// through the store (PresenceBus). Presence is held in memory only.
//
// Members of this node get join and leave events for the other members,
// until the topic has more than PresenceMuteAbove members: then it is
// muted, every member is told once with presence_muted, and it stays
// muted until it has no member left (an unmuted topic would leave the
// members' lists wrong without telling them).

const (
	// PresenceMuteAbove is the number of members above which a topic
	// stops sending join and leave.
	PresenceMuteAbove = 1000
	// PresenceListMax bounds the members one presence reply lists.
	PresenceListMax = 1000
	// presenceListBytes bounds the JSON of the members one reply lists.
	presenceListBytes = 512 << 10
)

// PresenceChange is one change of a topic's presence: a member joined,
// or left (Leave).
type PresenceChange struct {
	Topic  string
	Leave  bool
	Member subproto.Member
}

// PresenceBus is implemented by a Store that spans several nodes (a
// cluster): it carries this node's presence to the other nodes and
// theirs to this node.
//
// The broker calls SetPresence once, before the first change. It then
// reports every change of this node's members with PresenceChanged, in
// the order they happen for each topic; PresenceChanged must not block
// (the implementation queues, bounded, and falls back to sending a
// snapshot of LocalPresence when its queue overflows). The implementation
// hands the other nodes' changes to RemotePresence from one goroutine.
type PresenceBus interface {
	SetPresence(sink PresenceSink)
	PresenceChanged(c PresenceChange)
}

// PresenceSink is the broker's side of a PresenceBus.
type PresenceSink interface {
	// LocalPresence calls fn for every member of this node (a snapshot).
	// A change made while it runs is reported to PresenceChanged too.
	LocalPresence(fn func(PresenceChange))
	// RemotePresence applies changes of node's members in order. With
	// reset, the changes are all joins and are node's whole presence:
	// its members not among them leave. RemotePresence(node, true, nil)
	// removes every member of a node that is gone.
	RemotePresence(node string, reset bool, changes []PresenceChange)
}

const presenceShards = 64

type presenceTable struct {
	seed   maphash.Seed
	shards [presenceShards]presenceShard
}

type presenceShard struct {
	mu     sync.Mutex
	topics map[string]*presenceTopic // guarded by mu
}

// presenceTopic is one topic's presence. Guarded by its shard's mu.
type presenceTopic struct {
	members map[string]*presenceMember // by session id
	local   int                        // members of this node
	muted   bool
}

type presenceMember struct {
	m   subproto.Member
	sub *subscription // the member's subscription on this node; nil for another node's
}

func (p *presenceTable) init() {
	p.seed = maphash.MakeSeed()
	for i := range p.shards {
		p.shards[i].topics = make(map[string]*presenceTopic)
	}
}

func (p *presenceTable) shard(topic string) *presenceShard {
	return &p.shards[maphash.String(p.seed, topic)%presenceShards]
}

// presenceJoinLocked makes sub, a presence subscription just registered,
// a member of its topic; the caller holds sh, the topic's shard, since
// before it queued sub's ok. A subscription that has already ended (its
// session closed meanwhile) does not join: its leave has run or will find
// nothing. Holding the shard lock while checking makes the two exclusive.
func (srv *Server) presenceJoinLocked(sh *presenceShard, sub *subscription) {
	s := sub.sess
	s.mu.Lock()
	ended := sub.ended
	s.mu.Unlock()
	if ended {
		return
	}
	pt := sh.topics[sub.topic]
	if pt == nil {
		pt = &presenceTopic{members: make(map[string]*presenceMember)}
		sh.topics[sub.topic] = pt
	}
	pm := &presenceMember{m: *sub.member, sub: sub}
	pt.local++
	srv.stats.PresenceMembers.Add(1)
	wasMuted := pt.muted // else the member is told with the others
	srv.addMemberLocked(sub.topic, pt, pm)
	if wasMuted {
		s.mu.Lock()
		s.replyLocked(subproto.AppendPresenceMuted(nil, sub.topic))
		s.mu.Unlock()
	}
	if srv.bus != nil {
		srv.bus.PresenceChanged(PresenceChange{Topic: sub.topic, Member: pm.m})
	}
}

// presenceLeave removes sub, an ended presence subscription, from its
// topic's members.
func (srv *Server) presenceLeave(sub *subscription) {
	sh := srv.presence.shard(sub.topic)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	pt := sh.topics[sub.topic]
	if pt == nil {
		return
	}
	pm := pt.members[sub.member.Session]
	if pm == nil || pm.sub != sub {
		return
	}
	pt.local--
	srv.stats.PresenceMembers.Add(-1)
	srv.removeMemberLocked(sub.topic, pt, pm)
	if len(pt.members) == 0 {
		delete(sh.topics, sub.topic)
	}
	if srv.bus != nil {
		srv.bus.PresenceChanged(PresenceChange{Topic: sub.topic, Leave: true, Member: pm.m})
	}
}

// addMemberLocked adds pm to pt and tells the other members, or mutes the
// topic when it grows past PresenceMuteAbove. A member of the same
// session already there (another node's snapshot repeating a join) is
// replaced, and told as a leave and a join only when it changed.
func (srv *Server) addMemberLocked(topic string, pt *presenceTopic, pm *presenceMember) {
	if old := pt.members[pm.m.Session]; old != nil {
		if sameMember(&old.m, &pm.m) {
			old.sub = pm.sub
			return
		}
		srv.removeMemberLocked(topic, pt, old)
	}
	pt.members[pm.m.Session] = pm
	if !pt.muted && len(pt.members) > srv.cfg.PresenceMuteAbove {
		pt.muted = true
		srv.stats.PresenceMuted.Add(1)
		muted := subproto.AppendPresenceMuted(nil, topic)
		srv.tellLocked(pt, nil, muted)
		return
	}
	if !pt.muted {
		srv.tellLocked(pt, pm, subproto.AppendPresence(nil, subproto.OpJoin, topic, &pm.m))
	}
}

func (srv *Server) removeMemberLocked(topic string, pt *presenceTopic, pm *presenceMember) {
	delete(pt.members, pm.m.Session)
	if !pt.muted {
		srv.tellLocked(pt, pm, subproto.AppendPresence(nil, subproto.OpLeave, topic, &pm.m))
	}
}

// tellLocked queues ev for every member of this node but not.
func (srv *Server) tellLocked(pt *presenceTopic, not *presenceMember, ev []byte) {
	if pt.local == 0 {
		return
	}
	for _, pm := range pt.members {
		if pm.sub == nil || pm == not {
			continue
		}
		s := pm.sub.sess
		s.mu.Lock()
		if !pm.sub.ended {
			s.pushCtrlLocked(outItem{b: ev})
			srv.stats.PresenceEvents.Add(1)
		}
		s.mu.Unlock()
	}
}

func sameMember(a, b *subproto.Member) bool {
	return a.Session == b.Session && a.User == b.User && a.Node == b.Node && bytes.Equal(a.Info, b.Info)
}

// Presence returns the members of topic on every node, at most
// PresenceListMax of them (fewer when their JSON would pass 512 KiB), and
// how many there are.
func (srv *Server) Presence(topic string) (members []subproto.Member, count int) {
	srv.stats.PresenceLists.Add(1)
	sh := srv.presence.shard(topic)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	pt := sh.topics[topic]
	if pt == nil {
		return []subproto.Member{}, 0
	}
	members = make([]subproto.Member, 0, min(len(pt.members), PresenceListMax))
	size := 0
	for _, pm := range pt.members {
		size += len(pm.m.Session) + len(pm.m.User) + len(pm.m.Node) + len(pm.m.Info) + 48
		if len(members) == PresenceListMax || size > presenceListBytes {
			break
		}
		members = append(members, pm.m)
	}
	return members, len(pt.members)
}

// LocalPresence implements PresenceSink.
func (srv *Server) LocalPresence(fn func(PresenceChange)) {
	for i := range srv.presence.shards {
		sh := &srv.presence.shards[i]
		sh.mu.Lock()
		for topic, pt := range sh.topics {
			if pt.local == 0 {
				continue
			}
			for _, pm := range pt.members {
				if pm.sub != nil {
					fn(PresenceChange{Topic: topic, Member: pm.m})
				}
			}
		}
		sh.mu.Unlock()
	}
}

// RemotePresence implements PresenceSink.
func (srv *Server) RemotePresence(node string, reset bool, changes []PresenceChange) {
	if node == srv.cfg.Node {
		return // this node's own, echoed back
	}
	if reset {
		srv.resetRemote(node, changes)
		return
	}
	for i := range changes {
		c := &changes[i]
		if c.Member.Node != node {
			continue // a node speaks for its own members only
		}
		sh := srv.presence.shard(c.Topic)
		sh.mu.Lock()
		srv.applyRemoteLocked(sh, c)
		sh.mu.Unlock()
	}
}

func (srv *Server) applyRemoteLocked(sh *presenceShard, c *PresenceChange) {
	pt := sh.topics[c.Topic]
	if c.Leave {
		if pt == nil {
			return
		}
		pm := pt.members[c.Member.Session]
		if pm == nil || pm.sub != nil {
			return
		}
		srv.removeMemberLocked(c.Topic, pt, pm)
		if len(pt.members) == 0 {
			delete(sh.topics, c.Topic)
		}
		return
	}
	if pt == nil {
		pt = &presenceTopic{members: make(map[string]*presenceMember)}
		sh.topics[c.Topic] = pt
	}
	if old := pt.members[c.Member.Session]; old != nil && old.sub != nil {
		return // a session id of this node: not the other node's to change
	}
	m := c.Member
	m.Info = bytes.Clone(m.Info)
	srv.addMemberLocked(c.Topic, pt, &presenceMember{m: m})
}

// resetRemote makes node's members exactly the joins of changes.
func (srv *Server) resetRemote(node string, changes []PresenceChange) {
	type key struct{ topic, session string }
	keep := make(map[key]struct{}, len(changes))
	byShard := make(map[*presenceShard][]*PresenceChange)
	for i := range changes {
		c := &changes[i]
		if c.Leave || c.Member.Node != node {
			continue
		}
		keep[key{c.Topic, c.Member.Session}] = struct{}{}
		sh := srv.presence.shard(c.Topic)
		byShard[sh] = append(byShard[sh], c)
	}
	for i := range srv.presence.shards {
		sh := &srv.presence.shards[i]
		sh.mu.Lock()
		for topic, pt := range sh.topics {
			for session, pm := range pt.members {
				if pm.sub == nil && pm.m.Node == node {
					if _, ok := keep[key{topic, session}]; !ok {
						srv.removeMemberLocked(topic, pt, pm)
					}
				}
			}
			if len(pt.members) == 0 {
				delete(sh.topics, topic)
			}
		}
		for _, c := range byShard[sh] {
			srv.applyRemoteLocked(sh, c)
		}
		sh.mu.Unlock()
	}
}
