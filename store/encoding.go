package store

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Bucket and key names of the layout described in doc.go.
var (
	rootName      = []byte("brokerd")
	formatKey     = []byte("format")
	migratingKey  = []byte("migrating")
	metaName      = []byte("meta")
	recordsName   = []byte("records")
	consumersName = []byte("consumers")

	// The per-topic buckets of formats 1 and 2, moved into meta and records
	// by migrate: topics/<topic>/m, topics/<topic>/l and, in format 1 only,
	// topics/<topic>/k and topics/<topic>/x.
	topicsNameV2 = []byte("topics")
	metaKeyV2    = []byte("m")
	logNameV2    = []byte("l")
)

// formatVersion is written under brokerd/format when a store is created and
// checked by Open. formatV2 and formatV1 are the earlier formats, with a
// bucket per topic; Open migrates them.
const (
	formatVersion = "brokerd-store/4"
	formatV3      = "brokerd-store/3"
	formatV2      = "brokerd-store/2"
	formatV1      = "brokerd-store/1"
)

// recordKeySize is the size of a records bucket key: the topic's 8-byte id
// then the 8-byte offset, both big-endian, so that a topic's records are
// one contiguous run in offset order.
const recordKeySize = 16

// putRecordKey writes the records bucket key of (id, offset) into dst.
func putRecordKey(dst []byte, id, offset uint64) []byte {
	binary.BigEndian.PutUint64(dst[:8], id)
	binary.BigEndian.PutUint64(dst[8:16], offset)
	return dst[:16]
}

// keyID and keyOffset split a records bucket key.
func keyID(k []byte) uint64     { return binary.BigEndian.Uint64(k) }
func keyOffset(k []byte) uint64 { return binary.BigEndian.Uint64(k[8:]) }

// putOffset writes offset as an 8-byte big-endian key.
func putOffset(dst []byte, offset uint64) []byte {
	binary.BigEndian.PutUint64(dst[:8], offset)
	return dst[:8]
}

func getOffset(k []byte) uint64 { return binary.BigEndian.Uint64(k) }

// A record value is
//
//	time    8 bytes, big-endian milliseconds since the Unix epoch
//	total   uvarint: the data bytes of this record and every earlier one
//	        since the topic's log began (see meta.cumBase)
//	keylen  uvarint
//	key     keylen bytes
//	data    the rest
func recordSize(total uint64, key string, data []byte) int {
	return 8 + uvarintLen(total) + uvarintLen(uint64(len(key))) + len(key) + len(data)
}

// putRecord encodes a record into dst, which has room for recordSize bytes,
// and returns the encoded value and the position of data inside it.
func putRecord(dst []byte, ms int64, total uint64, key string, data []byte) (val []byte, dataAt int) {
	binary.BigEndian.PutUint64(dst, uint64(ms))
	n := 8 + binary.PutUvarint(dst[8:], total)
	n += binary.PutUvarint(dst[n:], uint64(len(key)))
	n += copy(dst[n:], key)
	dataAt = n
	n += copy(dst[n:], data)
	return dst[:n:n], dataAt
}

// decodeRecord splits an encoded record; key and data alias v.
func decodeRecord(v []byte) (ms int64, key, data []byte, err error) {
	ms, _, key, data, err = decodeRecordTotal(v)
	return ms, key, data, err
}

// decodeRecordTotal is decodeRecord that also returns the record's total.
func decodeRecordTotal(v []byte) (ms int64, total uint64, key, data []byte, err error) {
	if len(v) < 10 {
		return 0, 0, nil, nil, fmt.Errorf("%w: record of %d bytes", ErrCorrupt, len(v))
	}
	ms = int64(binary.BigEndian.Uint64(v))
	total, n := binary.Uvarint(v[8:])
	if n <= 0 {
		return 0, 0, nil, nil, fmt.Errorf("%w: bad record total", ErrCorrupt)
	}
	p := 8 + n
	kl, n := binary.Uvarint(v[p:])
	if n <= 0 || uint64(len(v)-p-n) < kl {
		return 0, 0, nil, nil, fmt.Errorf("%w: bad record key length", ErrCorrupt)
	}
	p += n
	return ms, total, v[p : p+int(kl)], v[p+int(kl):], nil
}

// recordTotal returns an encoded record's total, 0 when it cannot be read.
func recordTotal(v []byte) uint64 {
	_, total, _, _, err := decodeRecordTotal(v)
	if err != nil {
		return 0
	}
	return total
}

// decodeRecordV2 splits a record of formats 1 and 2, which had no total:
// time (8 bytes), uvarint key length, key, data.
func decodeRecordV2(v []byte) (ms int64, key, data []byte, err error) {
	if len(v) < 9 {
		return 0, nil, nil, fmt.Errorf("%w: record of %d bytes", ErrCorrupt, len(v))
	}
	ms = int64(binary.BigEndian.Uint64(v))
	kl, n := binary.Uvarint(v[8:])
	if n <= 0 || uint64(len(v)-8-n) < kl {
		return 0, nil, nil, fmt.Errorf("%w: bad record key length", ErrCorrupt)
	}
	p := 8 + n
	return ms, v[p : p+int(kl)], v[p+int(kl):], nil
}

// recordTime returns an encoded record's timestamp.
func recordTime(v []byte) int64 {
	if len(v) < 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// meta is a topic's metadata. The stored part, under meta/<topic>, is
// what changes rarely (see encode); head, count, bytes and lastTime are
// derived from the topic's last record when the metadata is loaded (see
// loadMeta), so that an append writes its record and nothing else.
type meta struct {
	id       uint64 // the topic's records are keyed by id, then offset
	epoch    string
	earliest uint64 // first retained offset; head+1 when nothing is retained
	cumBase  uint64 // the total (see recordSize) of the record before earliest
	lastTime int64  // the head record's time (ms); records' times never go back
	ret      Retention

	// Derived: the last record's offset (earliest-1 with no record), the
	// retained records and data bytes, and the last record's total
	// (cumBase with no record).
	head  uint64
	count int64
	bytes int64
	total uint64

	keys int64 // formats 1 and 2 only: format 1's idempotency key count
}

const metaVersion = 3

// encode returns the stored form of m:
//
//	version 1 byte (3), id 8 bytes, epoch (1-byte length + bytes), then
//	earliest, cumBase, lastTime, ret.MaxAge (ns), ret.MaxBytes,
//	ret.MaxMessages as 8-byte big-endian integers.
//
// lastTime is only read back when the log is empty: with records, the last
// one's time is the head's.
func (m *meta) encode() []byte {
	b := make([]byte, 0, 10+len(m.epoch)+6*8)
	b = append(b, metaVersion)
	b = binary.BigEndian.AppendUint64(b, m.id)
	b = append(b, byte(len(m.epoch)))
	b = append(b, m.epoch...)
	for _, x := range [...]uint64{
		m.earliest, m.cumBase, uint64(m.lastTime),
		uint64(m.ret.MaxAge), uint64(m.ret.MaxBytes), uint64(m.ret.MaxMessages),
	} {
		b = binary.BigEndian.AppendUint64(b, x)
	}
	return b
}

// decodeMeta decodes the stored part of a topic's metadata; head, count,
// bytes and total are those of an empty log.
func decodeMeta(b []byte) (meta, error) { return decodeMetaEpoch(b, true) }

// decodeMetaEpoch is decodeMeta, leaving the epoch empty unless withEpoch
// is set: a pass over every topic that does not need it saves an
// allocation per topic.
func decodeMetaEpoch(b []byte, withEpoch bool) (meta, error) {
	var m meta
	if len(b) < 10 || b[0] != metaVersion || len(b) != 10+int(b[9])+6*8 {
		return m, fmt.Errorf("%w: bad topic metadata", ErrCorrupt)
	}
	m.id = binary.BigEndian.Uint64(b[1:])
	n := 10 + int(b[9])
	if withEpoch {
		m.epoch = string(b[10:n])
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(b[n+8*i:]) }
	m.earliest, m.cumBase, m.lastTime = u(0), u(1), int64(u(2))
	m.ret = Retention{MaxAge: time.Duration(u(3)), MaxBytes: int64(u(4)), MaxMessages: int64(u(5))}
	m.empty()
	return m, nil
}

// empty sets the derived fields of m to those of a log without records.
func (m *meta) empty() {
	m.head, m.count, m.bytes, m.total = m.earliest-1, 0, 0, m.cumBase
}

// last sets the derived fields of m from the topic's last record, at
// offset off with value v.
func (m *meta) last(off uint64, v []byte) error {
	ms, total, _, _, err := decodeRecordTotal(v)
	if err != nil {
		return err
	}
	if off < m.earliest || total < m.cumBase {
		return fmt.Errorf("%w: last record %d (total %d) below earliest %d (total %d)", ErrCorrupt, off, total, m.earliest, m.cumBase)
	}
	m.head, m.lastTime, m.total = off, ms, total
	m.count = int64(off - m.earliest + 1)
	m.bytes = int64(total - m.cumBase)
	return nil
}

// decodeMetaV2 decodes the metadata of formats 1 and 2, under
// topics/<topic>/m:
//
//	version 1 byte (1), epoch (1-byte length + bytes), then earliest, head,
//	count, bytes, keys, lastTime, ret.MaxAge (ns), ret.MaxBytes,
//	ret.MaxMessages as 8-byte big-endian integers.
func decodeMetaV2(b []byte) (meta, error) {
	var m meta
	if len(b) < 2 || b[0] != 1 || len(b) != 2+int(b[1])+9*8 {
		return m, fmt.Errorf("%w: bad topic metadata", ErrCorrupt)
	}
	n := 2 + int(b[1])
	m.epoch = string(b[2:n])
	u := func(i int) uint64 { return binary.BigEndian.Uint64(b[n+8*i:]) }
	m.earliest, m.head = u(0), u(1)
	m.count, m.bytes, m.keys = int64(u(2)), int64(u(3)), int64(u(4))
	m.lastTime = int64(u(5))
	m.ret = Retention{MaxAge: time.Duration(u(6)), MaxBytes: int64(u(7)), MaxMessages: int64(u(8))}
	return m, nil
}

// consumerKey returns the consumers bucket key of (consumer, topic):
// a 2-byte big-endian length of consumer, consumer, topic. All of one
// consumer's keys share a prefix and sort by topic.
func consumerKey(dst []byte, consumer, topic string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(consumer)))
	dst = append(dst, consumer...)
	return append(dst, topic...)
}

func consumerPrefix(consumer string) []byte { return consumerKey(nil, consumer, "") }

// consumerKeySize is len(consumerKey(nil, consumer, topic)).
func consumerKeySize(consumer, topic string) int { return 2 + len(consumer) + len(topic) }

// A consumer value is epoch (1-byte length + bytes), offset (8 bytes) and
// updated (8 bytes, ms), big-endian.
func consumerValSize(epoch string) int { return 1 + len(epoch) + 16 }

func putConsumerVal(dst []byte, epoch string, offset uint64, updated int64) []byte {
	dst = append(dst[:0], byte(len(epoch)))
	dst = append(dst, epoch...)
	dst = binary.BigEndian.AppendUint64(dst, offset)
	return binary.BigEndian.AppendUint64(dst, uint64(updated))
}

func decodeConsumerVal(v []byte) (epoch string, offset uint64, updated int64, err error) {
	if len(v) < 1 || len(v) != 1+int(v[0])+16 {
		return "", 0, 0, fmt.Errorf("%w: bad consumer offset", ErrCorrupt)
	}
	n := 1 + int(v[0])
	return string(v[1:n]), binary.BigEndian.Uint64(v[n:]), int64(binary.BigEndian.Uint64(v[n+8:])), nil
}
