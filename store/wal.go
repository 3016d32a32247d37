package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.etcd.io/bbolt"
)

// The write-ahead log: dir/wal/<16 hex digits>.wal segment files, each named
// by the log position (LSN) of its first byte. A position counts bytes
// across all segments ever written: a segment's entries start at its base
// and the next segment's base is the position after its last entry.
//
// An entry is
//
//	length  4 bytes, little-endian: the payload's size (at least 1)
//	crc     4 bytes, little-endian: CRC-32C of the length and the payload
//	payload a sequence of puts, each: kind (1 byte), uvarint key length,
//	        key, uvarint value length, value
//
// with put kinds walRecord (records bucket), walMeta (meta bucket) and
// walSeq (the meta bucket's sequence becomes at least the 8-byte big-endian
// value). An entry is one group commit; its end position is stored under
// brokerd/walpos by the bbolt transaction that applies it.

const (
	walDirName = "wal"
	walExt     = ".wal"
	walHeader  = 8
	walRecord  = 'r'
	walMeta    = 'm'
	walSeq     = 's'
)

// walSegment is the size at which a segment is closed and the next begun;
// replayBudget bounds the entries of one recovery transaction, in bytes.
// Variables for the tests.
var (
	walSegment   int64 = 64 << 20
	replayBudget       = 32 << 20
)

var (
	walPosKey = []byte("walpos")
	crcTable  = crc32.MakeTable(crc32.Castagnoli)
)

// walPut is one bbolt put of a log entry.
type walPut struct {
	kind byte
	k, v []byte
}

// walSize returns the encoded size of p.
func (p *walPut) walSize() int {
	return 1 + uvarintLen(uint64(len(p.k))) + len(p.k) + uvarintLen(uint64(len(p.v))) + len(p.v)
}

// encodeEntry appends the entry holding puts to dst.
func encodeEntry(dst []byte, puts []walPut) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, walHeader)...)
	for i := range puts {
		p := &puts[i]
		dst = append(dst, p.kind)
		dst = binary.AppendUvarint(dst, uint64(len(p.k)))
		dst = append(dst, p.k...)
		dst = binary.AppendUvarint(dst, uint64(len(p.v)))
		dst = append(dst, p.v...)
	}
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(dst)-start-walHeader))
	crc := crc32.Update(0, crcTable, dst[start:start+4])
	crc = crc32.Update(crc, crcTable, dst[start+walHeader:])
	binary.LittleEndian.PutUint32(dst[start+4:], crc)
	return dst
}

// decodePuts splits a payload into puts, which alias it.
func decodePuts(payload []byte) ([]walPut, error) {
	var puts []walPut
	for p := payload; len(p) > 0; {
		kind := p[0]
		if kind != walRecord && kind != walMeta && kind != walSeq {
			return nil, fmt.Errorf("%w: log entry with put kind %d", ErrCorrupt, kind)
		}
		p = p[1:]
		var kv [2][]byte
		for i := range kv {
			n, w := binary.Uvarint(p)
			if w <= 0 || uint64(len(p)-w) < n {
				return nil, fmt.Errorf("%w: log entry with a bad length", ErrCorrupt)
			}
			kv[i], p = p[w:w+int(n)], p[w+int(n):]
		}
		if kind == walSeq && len(kv[1]) != 8 {
			return nil, fmt.Errorf("%w: log entry with a bad sequence", ErrCorrupt)
		}
		puts = append(puts, walPut{kind: kind, k: kv[0], v: kv[1]})
	}
	return puts, nil
}

// applyPuts stores puts in tx.
func applyPuts(tx *bbolt.Tx, puts []walPut) error {
	metaB, records := tx.Bucket(metaName), tx.Bucket(recordsName)
	records.FillPercent = 1
	for i := range puts {
		p := &puts[i]
		var err error
		switch p.kind {
		case walRecord:
			err = records.Put(p.k, p.v)
		case walMeta:
			err = metaB.Put(p.k, p.v)
		case walSeq:
			if id := binary.BigEndian.Uint64(p.v); metaB.Sequence() < id {
				err = metaB.SetSequence(id)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// putWALPos stores the log position bbolt covers, in the same transaction
// as what it covers.
func putWALPos(tx *bbolt.Tx, pos uint64) error {
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], pos)
	return tx.Bucket(rootName).Put(walPosKey, v[:])
}

// walPos returns the log position bbolt covers (0 for a store that never
// had a log).
func walPos(tx *bbolt.Tx) uint64 {
	if v := tx.Bucket(rootName).Get(walPosKey); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func segmentName(base uint64) string { return fmt.Sprintf("%016x%s", base, walExt) }

// listSegments returns the bases of the segments in dir, ascending.
func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var bases []uint64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, walExt) || len(name) != 16+len(walExt) {
			continue
		}
		base, err := strconv.ParseUint(strings.TrimSuffix(name, walExt), 16, 64)
		if err != nil {
			continue
		}
		bases = append(bases, base)
	}
	slices.Sort(bases)
	return bases, nil
}

// readEntries calls fn with the payload and end position of every intact
// entry of the segment at base that ends after from, in order. It stops at
// the end of the file or at the first short or damaged entry (a write the
// crash cut), and returns whether the segment ended cleanly.
func readEntries(path string, base, from uint64, fn func(payload []byte, end uint64) error) (clean bool, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	for off := 0; ; {
		if off == len(data) {
			return true, nil
		}
		if len(data)-off < walHeader {
			return false, nil
		}
		n := int(binary.LittleEndian.Uint32(data[off:]))
		if n == 0 || n > len(data)-off-walHeader {
			return false, nil
		}
		payload := data[off+walHeader : off+walHeader+n]
		crc := crc32.Update(0, crcTable, data[off:off+4])
		if crc32.Update(crc, crcTable, payload) != binary.LittleEndian.Uint32(data[off+4:]) {
			return false, nil
		}
		off += walHeader + n
		if end := base + uint64(off); end > from {
			if err := fn(payload, end); err != nil {
				return false, err
			}
		}
	}
}

// recoverWAL brings bbolt up to date from the log in dir/wal: it replays
// every intact entry after the position bbolt stores, in transactions of
// about replayBudget bytes, each storing the position it reaches; the first
// damaged or short entry ends the log. Then it removes the old segments and
// returns the position where the log goes on. It logs what it replayed.
func recoverWAL(bdb *bbolt.DB, dir string, db *DB) (pos uint64, err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, fmt.Errorf("store: cannot create the log directory %q: %w", dir, err)
	}
	if err := bdb.View(func(tx *bbolt.Tx) error { pos = walPos(tx); return nil }); err != nil {
		return 0, err
	}
	bases, err := listSegments(dir)
	if err != nil {
		return 0, fmt.Errorf("store: read the log directory: %w", err)
	}
	var (
		puts    []walPut
		size    int
		pending uint64 // end of the entries in puts
		entries int
		start   = pos
	)
	flush := func() error {
		if len(puts) == 0 {
			return nil
		}
		err := bdb.Update(func(tx *bbolt.Tx) error {
			if err := applyPuts(tx, puts); err != nil {
				return err
			}
			if crashHook != nil {
				crashHook(crashReplay)
			}
			return putWALPos(tx, pending)
		})
		if err != nil {
			return fmt.Errorf("store: replay the log: %w", err)
		}
		pos, puts, size = pending, puts[:0], 0
		return nil
	}
	for i, base := range bases {
		if i+1 < len(bases) && bases[i+1] <= pos {
			continue // wholly applied
		}
		if base > pos {
			return 0, fmt.Errorf("%w: the write-ahead log has no segment for positions %d to %d (%s)", ErrCorrupt, pos, base, dir)
		}
		reached := base
		clean, err := readEntries(filepath.Join(dir, segmentName(base)), base, pos, func(payload []byte, end uint64) error {
			if end-uint64(walHeader+len(payload)) < pos {
				return fmt.Errorf("%w: log entry across the stored position %d", ErrCorrupt, pos)
			}
			p, err := decodePuts(payload)
			if err != nil {
				return err
			}
			puts, size, pending, reached = append(puts, p...), size+len(payload), end, end
			entries++
			if size >= replayBudget {
				return flush()
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		if err := flush(); err != nil {
			return 0, err
		}
		if !clean {
			break // the log ends at its first damaged entry
		}
		if reached > base && i+1 < len(bases) && reached != bases[i+1] {
			return 0, fmt.Errorf("%w: write-ahead log segment %s ends at %d, the next begins at %d", ErrCorrupt, segmentName(base), reached, bases[i+1])
		}
	}
	if entries > 0 {
		db.log.Info("store: replayed the write-ahead log", "entries", entries, "from", start, "to", pos)
	}
	for _, base := range bases {
		if err := os.Remove(filepath.Join(dir, segmentName(base))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("store: remove an applied log segment: %w", err)
		}
	}
	return pos, syncDir(dir)
}

// syncDir makes the creation and removal of files in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// wal is the log's writing end; it belongs to the committer, except segs,
// which the tail's mutex guards.
type wal struct {
	dir    string
	noSync bool
	f      *os.File
	base   uint64 // the open segment's base
	size   int64  // its size
	buf    []byte // the entry being written, reused
}

// openSegment creates the segment at pos and makes it durable.
func (w *wal) openSegment(pos uint64) error {
	f, err := os.OpenFile(filepath.Join(w.dir, segmentName(pos)), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if !w.noSync {
		if err := syncDir(w.dir); err != nil {
			_ = f.Close()
			return err
		}
	}
	if w.f != nil {
		_ = w.f.Close()
	}
	w.f, w.base, w.size = f, pos, 0
	return nil
}

// pos returns the position after the last entry written.
func (w *wal) pos() uint64 { return w.base + uint64(w.size) }

// write appends one entry holding puts and syncs it (fdatasync); it returns
// the entry's end position. A full segment is closed first and a new one
// begun (newSeg reports its base to the caller). When the write fails (a
// full disk), the segment is cut back to where the entry began and the
// error is returned: the log is as before. When that fails too, or the sync
// fails, broken is set: what the file holds is unknown (a failed fsync may
// have dropped written pages), so nothing more may be written to it.
func (w *wal) write(puts []walPut, newSeg func(base uint64)) (end uint64, broken bool, err error) {
	if w.size >= walSegment {
		if err := w.openSegment(w.pos()); err != nil {
			return 0, false, err
		}
		newSeg(w.base)
	}
	if crashHook != nil {
		crashHook(crashLogWrite)
	}
	w.buf = encodeEntry(w.buf[:0], puts)
	if cap(w.buf) > 4*DefaultMaxBatchBytes {
		defer func() { w.buf = nil }()
	}
	if crashHook != nil && len(w.buf) > walHeader+1 {
		// A crash with part of the entry written.
		if _, err := w.f.Write(w.buf[:walHeader+1+len(w.buf)/3]); err == nil {
			crashHook(crashLogTorn)
		}
		if err := w.f.Truncate(w.size); err != nil {
			return 0, true, err
		}
	}
	if _, err := w.f.Write(w.buf); err != nil {
		if terr := w.f.Truncate(w.size); terr != nil {
			return 0, true, fmt.Errorf("%w (and cutting the entry off failed: %v)", err, terr)
		}
		return 0, false, err
	}
	w.size += int64(len(w.buf))
	if !w.noSync {
		if err := fdatasync(w.f); err != nil {
			return 0, true, err
		}
	}
	return w.pos(), false, nil
}

// Points where the crash test kills its child (see crashHook).
const (
	crashLogWrite = "log-write" // before an entry is written
	crashLogTorn  = "log-torn"  // with part of an entry written
	crashApply    = "apply"     // inside the applier's transaction
	crashApplied  = "applied"   // after it committed, before segments go
	crashSegment  = "segment"   // between removals of applied segments
	crashReplay   = "replay"    // inside a recovery transaction
)

// crashHook, set only by the crash test's child process, is called at the
// crash points; it may kill the process.
var crashHook func(point string)

func (w *wal) close() error {
	if w.f == nil {
		return nil
	}
	return w.f.Close()
}
