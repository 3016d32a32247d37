package cluster

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/subproto"
)

// Presence spans the cluster without being stored. Every node holds the
// members of every node in memory (the broker's presence table) and
// tells the others of its own on brokerd.<cluster>.presence:
//
//   - delta: joins and leaves of its members, batched (every
//     presenceBatch, at most presencePart bytes per message);
//   - snapshot: all its members, in one or more parts, the first marked
//     start and the last end; a receiver replaces the node's members
//     with them once the end arrives (the broker tells its members the
//     difference as joins and leaves);
//   - beat: its incarnation and the last sequence number it sent, every
//     presenceBeat;
//   - sync: a request for snapshots (from one node or all);
//   - bye: it is leaving; its members leave at once.
//
// Every delta and snapshot part carries the sender's incarnation (random
// at start) and a sequence number with no gap. A receiver that sees a
// gap, a new incarnation or a beat ahead of what it has applied asks the
// sender for a snapshot and ignores its deltas until the snapshot
// arrives; NATS core may drop messages (a disconnection, a slow
// consumer), and this is how lists converge again. A node not heard from
// for the lease TTL is dead to the others: its members leave. A node cut
// off from NATS that comes back sends a snapshot and asks for everyone's.

const (
	presenceBatch = 20 * time.Millisecond
	presencePart  = 60 << 10 // bytes of changes per message
	// presenceQueueBytes bounds the changes waiting to be sent; past it
	// they are dropped and a snapshot is sent instead.
	presenceQueueBytes = 8 << 20
	presenceInbox      = 4096 // messages received, waiting to be applied
)

type presenceKind byte

const (
	presDelta presenceKind = iota + 1
	presSnap
	presBeat
	presSync
	presBye
)

const (
	snapStart = 1 << iota
	snapEnd
)

// presenceMsg is one message of the presence exchange.
type presenceMsg struct {
	Kind    presenceKind
	Node    string // the sender
	Inc     uint64 // the sender's incarnation
	Seq     uint64 // delta and snapshot parts: this message's; beat: the last sent
	Flags   byte   // snapshot parts: snapStart, snapEnd
	Target  string // sync: the node asked, "" for every node
	Changes []broker.PresenceChange
}

var errPresence = errors.New("cluster: malformed presence message")

// encodePresence encodes m; the members' node is m.Node and not repeated.
func encodePresence(m *presenceMsg) []byte {
	b := make([]byte, 0, 64)
	b = append(b, byte(m.Kind))
	b = putString(b, m.Node)
	b = binary.BigEndian.AppendUint64(b, m.Inc)
	b = putUvarint(b, m.Seq)
	b = append(b, m.Flags)
	b = putString(b, m.Target)
	b = putUvarint(b, uint64(len(m.Changes)))
	for i := range m.Changes {
		b = putChange(b, &m.Changes[i])
	}
	return b
}

func putChange(b []byte, c *broker.PresenceChange) []byte {
	b = putBool(b, c.Leave)
	b = putString(b, c.Topic)
	b = putString(b, c.Member.Session)
	b = putString(b, c.Member.User)
	return putString(b, string(c.Member.Info))
}

// changeSize is about what putChange writes.
func changeSize(c *broker.PresenceChange) int {
	return 16 + len(c.Topic) + len(c.Member.Session) + len(c.Member.User) + len(c.Member.Info)
}

// decodePresence decodes b; the strings are copies.
func decodePresence(b []byte) (*presenceMsg, error) {
	r := reader{b: b}
	m := &presenceMsg{Kind: presenceKind(r.byte())}
	if m.Kind < presDelta || m.Kind > presBye {
		return nil, errPresence
	}
	m.Node = r.string()
	if len(r.b) < 8 {
		return nil, errPresence
	}
	m.Inc = binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	m.Seq = r.uvarint()
	m.Flags = r.byte()
	m.Target = r.string()
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b))/5 { // a change takes at least 5 bytes
		return nil, errPresence
	}
	m.Changes = make([]broker.PresenceChange, 0, n)
	for range n {
		c := broker.PresenceChange{Leave: r.bool(), Topic: r.string()}
		c.Member = subproto.Member{Session: r.string(), User: r.string(), Node: m.Node}
		if info := r.bytes(); len(info) > 0 {
			c.Member.Info = append([]byte(nil), info...)
		}
		m.Changes = append(m.Changes, c)
	}
	if r.err != nil || len(r.b) != 0 || m.Node == "" {
		return nil, errPresence
	}
	return m, nil
}

// presence is a node's side of the exchange.
type presence struct {
	sink broker.PresenceSink
	inc  uint64
	kick chan struct{}
	in   chan *nats.Msg
	sub  *nats.Subscription
	quit chan struct{}
	wg   sync.WaitGroup

	mu sync.Mutex
	// guarded by mu:
	queue    []broker.PresenceChange
	qbytes   int
	needSnap bool // send a snapshot (the queue overflowed, a node asked, NATS came back)
	askAll   bool // ask every node for a snapshot
	seq      uint64

	// Owned by the receiving goroutine: what each other node has told.
	peers map[string]*presencePeer
}

type presencePeer struct {
	inc     uint64
	next    uint64 // the sequence number expected next
	synced  bool   // a whole snapshot has been applied since the last gap
	snap    []broker.PresenceChange
	inSnap  bool
	heard   time.Time
	askedAt time.Time
}

func (n *Node) presenceSubject() string { return n.prefix + "presence" }

// presenceBeat is how often a node says it is here; presenceDead how long
// until a silent node's members leave.
func (n *Node) presenceBeat() time.Duration { return min(n.cfg.LeaseTTL/3, time.Second) }
func (n *Node) presenceDead() time.Duration { return n.cfg.LeaseTTL }

// SetPresence implements broker.PresenceBus: it starts the exchange.
func (n *Node) SetPresence(sink broker.PresenceSink) {
	if n.closed.Load() || n.pres.Load() != nil {
		return
	}
	p := &presence{
		sink:     sink,
		inc:      rand.Uint64() | 1,
		kick:     make(chan struct{}, 1),
		in:       make(chan *nats.Msg, presenceInbox),
		quit:     make(chan struct{}),
		peers:    make(map[string]*presencePeer),
		needSnap: true,
		askAll:   true,
	}
	sub, err := n.nc.ChanSubscribe(n.presenceSubject(), p.in)
	if err != nil {
		n.log.Error("cluster: presence: subscribing", "err", err)
		return
	}
	p.sub = sub
	n.pres.Store(p)
	p.wg.Add(2)
	go n.presenceSendLoop(p)
	go n.presenceRecvLoop(p)
}

// PresenceChanged implements broker.PresenceBus.
func (n *Node) PresenceChanged(c broker.PresenceChange) {
	p := n.pres.Load()
	if p == nil {
		return
	}
	p.mu.Lock()
	if !p.needSnap {
		if p.qbytes+changeSize(&c) > presenceQueueBytes {
			// The snapshot carries every member: the queue is not needed.
			p.queue, p.qbytes, p.needSnap = nil, 0, true
			n.log.Warn("cluster: presence: changes came faster than they could be sent; sending a snapshot instead")
		} else {
			p.queue = append(p.queue, c)
			p.qbytes += changeSize(&c)
		}
	}
	p.mu.Unlock()
	signal(p.kick)
}

// presenceResync has the node send a snapshot and ask every node for
// theirs (after NATS came back).
func (n *Node) presenceResync() {
	if p := n.pres.Load(); p != nil {
		p.mu.Lock()
		p.needSnap, p.askAll = true, true
		p.mu.Unlock()
		signal(p.kick)
	}
}

func (n *Node) presenceSendLoop(p *presence) {
	defer p.wg.Done()
	beat := time.NewTicker(n.presenceBeat())
	defer beat.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-beat.C:
			p.mu.Lock()
			seq := p.seq
			p.mu.Unlock()
			n.presencePublish(&presenceMsg{Kind: presBeat, Node: n.cfg.Node, Inc: p.inc, Seq: seq})
			continue
		case <-p.kick:
		}
		// Let a burst of changes gather into one message.
		select {
		case <-p.quit:
			return
		case <-time.After(presenceBatch):
		}
		n.presenceFlush(p)
	}
}

// presenceFlush sends what is queued, or a snapshot when one is due.
func (n *Node) presenceFlush(p *presence) {
	p.mu.Lock()
	queue, snap, ask := p.queue, p.needSnap, p.askAll
	p.queue, p.qbytes, p.needSnap, p.askAll = nil, 0, false, false
	p.mu.Unlock()
	if ask {
		n.presencePublish(&presenceMsg{Kind: presSync, Node: n.cfg.Node, Inc: p.inc})
	}
	if snap {
		// Taken after the queue was emptied: a change made meanwhile is in
		// the snapshot or queued after it, and a join or leave applied
		// twice changes nothing.
		var all []broker.PresenceChange
		p.sink.LocalPresence(func(c broker.PresenceChange) { all = append(all, c) })
		n.presenceSend(p, presSnap, all)
		return
	}
	if len(queue) > 0 {
		n.presenceSend(p, presDelta, queue)
	}
}

// presenceSend sends changes in parts of at most presencePart bytes; a
// snapshot is always sent, empty or not.
func (n *Node) presenceSend(p *presence, kind presenceKind, changes []broker.PresenceChange) {
	for first := true; first || len(changes) > 0; first = false {
		size, k := 0, 0
		for k < len(changes) && (k == 0 || size+changeSize(&changes[k]) <= presencePart) {
			size += changeSize(&changes[k])
			k++
		}
		p.mu.Lock()
		p.seq++
		m := &presenceMsg{Kind: kind, Node: n.cfg.Node, Inc: p.inc, Seq: p.seq, Changes: changes[:k]}
		p.mu.Unlock()
		if kind == presSnap {
			if first {
				m.Flags |= snapStart
			}
			if k == len(changes) {
				m.Flags |= snapEnd
			}
		}
		changes = changes[k:]
		if !n.presencePublish(m) {
			// The others see the gap and ask for a snapshot; send one anyway
			// as soon as NATS takes messages again.
			p.mu.Lock()
			p.queue, p.qbytes, p.needSnap = nil, 0, true
			p.mu.Unlock()
			return
		}
	}
}

func (n *Node) presencePublish(m *presenceMsg) bool {
	if err := n.nc.Publish(n.presenceSubject(), encodePresence(m)); err != nil {
		n.log.Debug("cluster: presence: publishing", "kind", m.Kind, "err", err)
		return false
	}
	return true
}

func (n *Node) presenceRecvLoop(p *presence) {
	defer p.wg.Done()
	check := time.NewTicker(n.presenceBeat())
	defer check.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-check.C:
			n.presenceReap(p)
		case msg := <-p.in:
			m, err := decodePresence(msg.Data)
			if err != nil {
				n.log.Warn("cluster: presence: ignoring a malformed message", "bytes", len(msg.Data))
				continue
			}
			if m.Node != n.cfg.Node {
				n.presenceReceive(p, m)
			}
		}
	}
}

// presenceReap makes the members of nodes not heard from for
// presenceDead leave.
func (n *Node) presenceReap(p *presence) {
	now := time.Now()
	for node, peer := range p.peers {
		if now.Sub(peer.heard) > n.presenceDead() {
			delete(p.peers, node)
			p.sink.RemotePresence(node, true, nil)
			n.log.Info("cluster: presence: a node went silent; its members left", "node", node)
		}
	}
}

func (n *Node) presenceReceive(p *presence, m *presenceMsg) {
	now := time.Now()
	if m.Kind == presBye {
		if _, ok := p.peers[m.Node]; ok {
			delete(p.peers, m.Node)
		}
		p.sink.RemotePresence(m.Node, true, nil)
		return
	}
	peer := p.peers[m.Node]
	if peer == nil {
		peer = &presencePeer{inc: m.Inc}
		p.peers[m.Node] = peer
	}
	peer.heard = now
	if m.Inc != peer.inc {
		// The node restarted: what it said before no longer counts.
		*peer = presencePeer{inc: m.Inc, heard: now}
	}
	ask := func() {
		peer.synced, peer.inSnap, peer.snap = false, false, nil
		if now.Sub(peer.askedAt) >= n.presenceBeat() {
			peer.askedAt = now
			n.presencePublish(&presenceMsg{Kind: presSync, Node: n.cfg.Node, Inc: p.inc, Target: m.Node})
		}
	}
	switch m.Kind {
	case presSync:
		if m.Target == "" || m.Target == n.cfg.Node {
			p.mu.Lock()
			p.needSnap = true
			p.mu.Unlock()
			signal(p.kick)
		}
		if !peer.synced && !peer.inSnap {
			ask()
		}
	case presBeat:
		if !peer.synced && !peer.inSnap || m.Seq >= peer.next && peer.synced {
			ask()
		}
	case presSnap:
		if m.Flags&snapStart != 0 {
			peer.inSnap, peer.snap, peer.next = true, nil, m.Seq
		}
		if !peer.inSnap || m.Seq != peer.next {
			ask()
			return
		}
		peer.next = m.Seq + 1
		peer.snap = append(peer.snap, m.Changes...)
		if m.Flags&snapEnd != 0 {
			p.sink.RemotePresence(m.Node, true, peer.snap)
			peer.inSnap, peer.snap, peer.synced = false, nil, true
		}
	case presDelta:
		if !peer.synced || peer.inSnap || m.Seq != peer.next {
			if !peer.inSnap {
				ask()
			}
			return
		}
		peer.next = m.Seq + 1
		p.sink.RemotePresence(m.Node, false, m.Changes)
	}
}

// presenceStop says goodbye (so that the others drop this node's members
// at once) and stops the exchange.
func (n *Node) presenceStop() {
	p := n.pres.Load()
	if p == nil {
		return
	}
	n.presencePublish(&presenceMsg{Kind: presBye, Node: n.cfg.Node, Inc: p.inc})
	_ = n.nc.FlushTimeout(time.Second)
	_ = p.sub.Unsubscribe()
	close(p.quit)
	p.wg.Wait()
}
