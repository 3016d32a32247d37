package broker

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"
)

// memStore is an in-memory Store for the broker's unit tests and
// benchmarks. It keeps the contract's ordering by appending and notifying
// under one lock.
type memStore struct {
	mu        sync.Mutex
	topics    map[string]*memTopic
	consumers map[[2]string]ConsumerOffset
	hook      func([]Committed)
}

type memTopic struct {
	info TopicInfo
	recs []Record
	keys map[string]Appended
}

func newMemStore() *memStore {
	return &memStore{topics: map[string]*memTopic{}, consumers: map[[2]string]ConsumerOffset{}}
}

func (m *memStore) topicLocked(name string) *memTopic {
	t := m.topics[name]
	if t == nil {
		t = &memTopic{info: TopicInfo{Topic: name, Epoch: uuid.NewString(), Earliest: 1}, keys: map[string]Appended{}}
		m.topics[name] = t
	}
	return t
}

func (m *memStore) AppendAsync(topic string, data []byte, key string, done func(Appended, error)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topicLocked(topic)
	if a, ok := t.keys[key]; ok && key != "" {
		a.Dup = true
		done(a, nil)
		return
	}
	t.info.Head++
	t.info.Count++
	r := Record{Offset: t.info.Head, Time: time.Now().UnixMilli(), Key: key, Data: append([]byte(nil), data...)}
	t.recs = append(t.recs, r)
	a := Appended{Topic: topic, Epoch: t.info.Epoch, Offset: r.Offset, Time: r.Time}
	if key != "" {
		t.keys[key] = a
	}
	if m.hook != nil {
		m.hook([]Committed{{Topic: topic, Epoch: t.info.Epoch, Records: []Record{r}}})
	}
	done(a, nil)
}

func (m *memStore) Append(ctx context.Context, topic string, data []byte, key string) (Appended, error) {
	var out Appended
	m.AppendAsync(topic, data, key, func(a Appended, _ error) { out = a })
	return out, nil
}

func (m *memStore) Ensure(ctx context.Context, topic string) (TopicInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.topicLocked(topic).info, nil
}

func (m *memStore) Read(topic string, from uint64, max, maxBytes int) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topics[topic]
	if t == nil {
		return nil, ErrTopicNotFound
	}
	if from < t.info.Earliest {
		from = t.info.Earliest
	}
	var out []Record
	size := 0
	for off := from; off <= t.info.Head && len(out) < max; off++ {
		r := t.recs[off-1]
		if len(out) > 0 && size+len(r.Data) > maxBytes {
			break
		}
		size += len(r.Data)
		out = append(out, r)
	}
	return out, nil
}

func (m *memStore) Topic(topic string) (TopicInfo, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topics[topic]
	if t == nil {
		return TopicInfo{}, false, nil
	}
	return t.info, true, nil
}

func (m *memStore) Topics(after string, max int) ([]TopicInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []TopicInfo
	for name, t := range m.topics {
		if name > after {
			out = append(out, t.info)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Topic < out[j].Topic })
	if len(out) > max {
		out = out[:max]
	}
	return out, nil
}

func (m *memStore) CommitAsync(consumer, topic, epoch string, offset uint64, done func(ConsumerOffset, error)) {
	m.mu.Lock()
	k := [2]string{consumer, topic}
	co := m.consumers[k]
	if co.Epoch != epoch || offset > co.Offset {
		co = ConsumerOffset{Consumer: consumer, Topic: topic, Epoch: epoch, Offset: offset, Updated: time.Now()}
		m.consumers[k] = co
	}
	m.mu.Unlock()
	done(co, nil)
}

func (m *memStore) Consumer(consumer, topic string) (ConsumerOffset, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	co, ok := m.consumers[[2]string{consumer, topic}]
	return co, ok, nil
}

func (m *memStore) Consumers(consumer string) ([]ConsumerOffset, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ConsumerOffset
	for k, co := range m.consumers {
		if k[0] == consumer {
			out = append(out, co)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Topic < out[j].Topic })
	return out, nil
}

func (m *memStore) SetCommitHook(fn func([]Committed)) { m.hook = fn }

func (m *memStore) OffsetAt(topic string, ms int64) (uint64, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topics[topic]
	if t == nil {
		return 0, 0, ErrTopicNotFound
	}
	var et int64
	if t.info.Earliest <= t.info.Head {
		et = t.recs[t.info.Earliest-1].Time
	}
	for off := t.info.Earliest; off <= t.info.Head; off++ {
		if t.recs[off-1].Time >= ms {
			return off, et, nil
		}
	}
	return t.info.Head + 1, et, nil
}

// seed replaces topic's log with records of the given times (offsets
// 1..len(times)) and trims the first trimmed of them.
func (m *memStore) seed(topic string, times []int64, trimmed int) TopicInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topicLocked(topic)
	t.recs = t.recs[:0]
	for i, ms := range times {
		t.recs = append(t.recs, Record{Offset: uint64(i + 1), Time: ms, Data: []byte(`1`)})
	}
	t.info.Head = uint64(len(times))
	t.info.Earliest = uint64(trimmed + 1)
	t.info.Count = int64(len(times) - trimmed)
	return t.info
}
