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
	topicsName    = []byte("topics")
	consumersName = []byte("consumers")

	metaKey = []byte("m")
	logName = []byte("l")

	// The idempotency key buckets of format 1, removed by migrateV1.
	keysNameV1 = []byte("k")
	idxNameV1  = []byte("x")
)

// formatVersion is written under brokerd/format when a store is created and
// checked by Open. formatV1 is the format before idempotency keys moved to
// memory; Open migrates it.
const (
	formatVersion = "brokerd-store/2"
	formatV1      = "brokerd-store/1"
)

// putOffset writes offset as the 8-byte big-endian key used by the log and
// the key index, so that byte order is offset order.
func putOffset(dst []byte, offset uint64) []byte {
	binary.BigEndian.PutUint64(dst[:8], offset)
	return dst[:8]
}

func getOffset(k []byte) uint64 { return binary.BigEndian.Uint64(k) }

// A record value is
//
//	time    8 bytes, big-endian milliseconds since the Unix epoch
//	keylen  uvarint
//	key     keylen bytes
//	data    the rest
func recordSize(key string, data []byte) int {
	return 8 + uvarintLen(uint64(len(key))) + len(key) + len(data)
}

// putRecord encodes a record into dst, which has room for recordSize bytes,
// and returns the encoded value and the position of data inside it.
func putRecord(dst []byte, ms int64, key string, data []byte) (val []byte, dataAt int) {
	binary.BigEndian.PutUint64(dst, uint64(ms))
	n := 8 + binary.PutUvarint(dst[8:], uint64(len(key)))
	n += copy(dst[n:], key)
	dataAt = n
	n += copy(dst[n:], data)
	return dst[:n:n], dataAt
}

// decodeRecord splits an encoded record; key and data alias v.
func decodeRecord(v []byte) (ms int64, key, data []byte, err error) {
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

// recordDataLen returns the length of an encoded record's data.
func recordDataLen(v []byte) int64 {
	_, _, data, err := decodeRecord(v)
	if err != nil {
		return 0
	}
	return int64(len(data))
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// meta is a topic's metadata, stored under topics/<topic>/m.
type meta struct {
	epoch    string
	earliest uint64 // first retained offset; head+1 when nothing is retained
	head     uint64 // last stored offset; 0 when nothing was ever stored
	count    int64  // retained records
	bytes    int64  // retained record data bytes
	keys     int64  // format 1: idempotency keys in k and x; 0 since format 2
	lastTime int64  // the head record's time (ms); records' times never go back
	ret      Retention
}

const metaVersion = 1

// encode returns the binary form of m:
//
//	version 1 byte, epoch (1-byte length + bytes), then earliest, head,
//	count, bytes, keys, lastTime, ret.MaxAge (ns), ret.MaxBytes,
//	ret.MaxMessages as 8-byte big-endian integers.
func (m *meta) encode() []byte {
	b := make([]byte, 0, 2+len(m.epoch)+9*8)
	b = append(b, metaVersion, byte(len(m.epoch)))
	b = append(b, m.epoch...)
	for _, x := range [...]uint64{
		m.earliest, m.head, uint64(m.count), uint64(m.bytes), uint64(m.keys),
		uint64(m.lastTime), uint64(m.ret.MaxAge), uint64(m.ret.MaxBytes), uint64(m.ret.MaxMessages),
	} {
		b = binary.BigEndian.AppendUint64(b, x)
	}
	return b
}

func decodeMeta(b []byte) (meta, error) {
	var m meta
	if len(b) < 2 || b[0] != metaVersion || len(b) != 2+int(b[1])+9*8 {
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
