package cluster

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/brokerd/brokerd/broker"
)

// The messages between nodes are small binary encodings: uvarints,
// zigzag varints and length-prefixed strings, in a fixed order per
// message. Both ends run the same code, so there is no version field yet;
// one is the first byte to add when the format changes.

var errShort = errors.New("cluster: malformed message")

func putUvarint(b []byte, x uint64) []byte { return binary.AppendUvarint(b, x) }
func putVarint(b []byte, x int64) []byte   { return binary.AppendVarint(b, x) }

func putString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func putBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// reader decodes what the put functions wrote. The first error sticks:
// every later read returns a zero value, and err reports it.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = errShort
	}
	r.b = nil
}

func (r *reader) uvarint() uint64 {
	x, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return x
}

func (r *reader) varint() int64 {
	x, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return x
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if uint64(len(r.b)) < n {
		r.fail()
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string { return string(r.bytes()) }

func (r *reader) byte() byte {
	if len(r.b) == 0 {
		r.fail()
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) bool() bool { return r.byte() == 1 }

// rest returns the remaining bytes, which the caller may keep.
func (r *reader) rest() []byte {
	v := r.b
	r.b = nil
	return v
}

func putRecord(b []byte, rec *broker.Record) []byte {
	b = putUvarint(b, rec.Offset)
	b = putVarint(b, rec.Time)
	b = putString(b, rec.Key)
	b = putUvarint(b, uint64(len(rec.Data)))
	return append(b, rec.Data...)
}

func (r *reader) record() broker.Record {
	return broker.Record{Offset: r.uvarint(), Time: r.varint(), Key: r.string(), Data: r.bytes()}
}

func putInfo(b []byte, ti *broker.TopicInfo) []byte {
	b = putString(b, ti.Topic)
	b = putString(b, ti.Epoch)
	b = putUvarint(b, ti.Earliest)
	b = putUvarint(b, ti.Head)
	b = putVarint(b, ti.Count)
	return putVarint(b, ti.Bytes)
}

func (r *reader) info() broker.TopicInfo {
	return broker.TopicInfo{Topic: r.string(), Epoch: r.string(), Earliest: r.uvarint(), Head: r.uvarint(), Count: r.varint(), Bytes: r.varint()}
}

func putConsumer(b []byte, co *broker.ConsumerOffset) []byte {
	b = putString(b, co.Consumer)
	b = putString(b, co.Topic)
	b = putString(b, co.Epoch)
	b = putUvarint(b, co.Offset)
	return putVarint(b, co.Updated.UnixNano())
}

func (r *reader) consumer() broker.ConsumerOffset {
	co := broker.ConsumerOffset{Consumer: r.string(), Topic: r.string(), Epoch: r.string(), Offset: r.uvarint()}
	co.Updated = time.Unix(0, r.varint())
	return co
}

func encodeRepl(from string, es []replEntry) []byte {
	size := 16 + len(from)
	for i := range es {
		size += 64 + len(es[i].topic) + len(es[i].epoch) + len(es[i].consumer)
		for j := range es[i].recs {
			size += recBytes(&es[i].recs[j])
		}
	}
	b := make([]byte, 0, size)
	b = putString(b, from)
	b = putUvarint(b, uint64(len(es)))
	for i := range es {
		e := &es[i]
		b = putString(b, e.topic)
		b = putUvarint(b, e.term)
		b = putString(b, e.epoch)
		b = append(b, e.flags())
		b = putUvarint(b, e.head)
		if e.kind == kindConsumer {
			b = putString(b, e.consumer)
		}
		b = putUvarint(b, uint64(len(e.recs)))
		for j := range e.recs {
			b = putRecord(b, &e.recs[j])
		}
	}
	return b
}

// decodeRepl reads a request encodeRepl made. It never panics and never
// allocates much more than the message holds, whatever the bytes.
func decodeRepl(b []byte) ([]replEntry, error) {
	r := &reader{b: b}
	_ = r.string() // the sender, for debugging
	k := r.uvarint()
	if k > uint64(len(r.b)) {
		r.fail()
	}
	var es []replEntry
	for i := uint64(0); i < k && r.err == nil; i++ {
		e := replEntry{topic: r.string(), term: r.uvarint(), epoch: r.string()}
		e.kind, e.base = kindOf(r.byte())
		e.head = r.uvarint()
		if e.kind == kindConsumer {
			e.consumer = r.string()
		}
		c := r.uvarint()
		if c > uint64(len(r.b)) {
			r.fail()
			break
		}
		e.recs = make([]broker.Record, 0, min(c, 1024)) // c is a claim: grow past it only as records decode
		for range c {
			if rec := r.record(); r.err == nil {
				e.recs = append(e.recs, rec)
			} else {
				break
			}
		}
		es = append(es, e)
	}
	if r.err != nil {
		return nil, r.err
	}
	return es, nil
}

// flags returns the wire byte of e's kind.
func (e *replEntry) flags() byte {
	switch e.kind {
	case kindProbe:
		return rfProbe
	case kindAgree:
		return rfProbe | rfAgree
	case kindCheck:
		return rfCheck
	case kindConsumer:
		return rfConsumer
	case kindCreate:
		return rfCreate
	}
	if e.base {
		return rfBase
	}
	return 0
}

// kindOf reads an entry's kind from its wire byte.
func kindOf(f byte) (replKind, bool) {
	switch {
	case f&rfConsumer != 0:
		return kindConsumer, false
	case f&rfCreate != 0:
		return kindCreate, false
	case f&rfCheck != 0:
		return kindCheck, false
	case f&rfProbe != 0 && f&rfAgree != 0:
		return kindAgree, false
	case f&rfProbe != 0:
		return kindProbe, false
	}
	return kindRecords, f&rfBase != 0
}
