package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func TestOpenErrors(t *testing.T) {
	t.Run("locked", func(t *testing.T) {
		db, dir := openTest(t, nil)
		start := time.Now()
		_, err := Open(dir, &Options{LockTimeout: 300 * time.Millisecond})
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "another brokerd seems to be using the directory") || !strings.Contains(err.Error(), "--data") {
			t.Fatalf("second Open = %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("second Open took %v", d)
		}
		mustAppend(t, db, "t", "{}", "") // the first still works
	})
	t.Run("garbage file", func(t *testing.T) {
		dir := t.TempDir()
		garbage := []byte(strings.Repeat("this is not a database\n", 2000))
		if err := os.WriteFile(filepath.Join(dir, FileName), garbage, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir, nil)
		if !errors.Is(err, ErrNotStore) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open = %v", err)
		}
		if !strings.Contains(err.Error(), "move it away") {
			t.Fatalf("Open error says nothing to do: %v", err)
		}
	})
	t.Run("short file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir, nil); !errors.Is(err, ErrNotStore) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open = %v", err)
		}
	})
	t.Run("corrupted", func(t *testing.T) {
		db, dir := openTest(t, nil)
		mustAppend(t, db, "t", "{}", "")
		_ = db.Close()
		f, err := os.OpenFile(db.Path(), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, page := range []int64{0, 1} { // both meta pages
			if _, err := f.WriteAt([]byte{0xff, 0xee}, page*int64(os.Getpagesize())+36); err != nil {
				t.Fatal(err)
			}
		}
		_ = f.Close()
		_, err = Open(dir, nil)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "backup") {
			t.Fatalf("Open = %v", err)
		}
	})
	t.Run("bbolt file of another program", func(t *testing.T) {
		dir := t.TempDir()
		bdb, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = bdb.Update(func(tx *bbolt.Tx) error {
			_, err := tx.CreateBucket([]byte("widgets"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = bdb.Close()
		_, err = Open(dir, nil)
		if !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), "not a brokerd store") {
			t.Fatalf("Open = %v", err)
		}
	})
	t.Run("newer format", func(t *testing.T) {
		db, dir := openTest(t, nil)
		_ = db.Close()
		bdb, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = bdb.Update(func(tx *bbolt.Tx) error { return tx.Bucket(rootName).Put(formatKey, []byte("brokerd-store/99")) })
		_ = bdb.Close()
		if _, err := Open(dir, nil); !errors.Is(err, ErrFormat) {
			t.Fatalf("Open = %v", err)
		}
	})
	t.Run("empty bbolt file is initialized", func(t *testing.T) {
		dir := t.TempDir()
		bdb, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = bdb.Close()
		db := openAt(t, dir, nil)
		mustAppend(t, db, "t", "{}", "")
	})
	t.Run("dir is a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "data")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(file, nil)
		if err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatalf("Open = %v", err)
		}
		if _, err := Open(filepath.Join(file, "sub"), nil); err == nil {
			t.Fatal("Open below a file succeeded")
		}
	})
	t.Run("unwritable dir", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("permissions do not apply to root")
		}
		dir := filepath.Join(t.TempDir(), "ro")
		if err := os.Mkdir(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir, nil)
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("Open = %v", err)
		}
		_, err = Open(filepath.Join(dir, "sub"), nil)
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("Open = %v", err)
		}
	})
	t.Run("no dir", func(t *testing.T) {
		if _, err := Open("", nil); err == nil {
			t.Fatal("Open(\"\") succeeded")
		}
	})
	t.Run("bad options", func(t *testing.T) {
		if _, err := Open(t.TempDir(), &Options{MaxBatchRecords: -1}); err == nil {
			t.Fatal("negative MaxBatchRecords accepted")
		}
	})
}

func TestOpenCreatesDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	db := openAt(t, dir, nil)
	mustAppend(t, db, "t", "{}", "")
	if _, err := os.Stat(filepath.Join(dir, FileName)); err != nil {
		t.Fatal(err)
	}
	if db.Size() <= 0 || db.Path() != filepath.Join(dir, FileName) {
		t.Fatalf("Size %d Path %s", db.Size(), db.Path())
	}
}

func TestOptionsDefaults(t *testing.T) {
	var nilOpts *Options
	o, err := nilOpts.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.LockTimeout != DefaultLockTimeout || o.MaxBatchRecords != DefaultMaxBatchRecords || o.MaxBatchBytes != DefaultMaxBatchBytes ||
		o.MaxRecordBytes != DefaultMaxRecordBytes || o.DedupWindow != DefaultDedupWindow || o.DedupMaxKeys != DefaultDedupMaxKeys ||
		o.DedupMaxKeysTotal != DefaultDedupMaxKeysTotal || o.RetentionInterval != DefaultRetentionInterval || o.Now == nil || o.Logger == nil ||
		o.Retention != (Retention{MaxAge: DefaultMaxAge, MaxBytes: DefaultMaxBytes, MaxMessages: DefaultMaxMessages}) {
		t.Fatalf("defaults %+v", o)
	}
	o, _ = (&Options{Retention: Retention{MaxAge: -1, MaxMessages: 5}}).withDefaults()
	if o.Retention != (Retention{MaxAge: -1, MaxBytes: DefaultMaxBytes, MaxMessages: 5}) {
		t.Fatalf("retention %+v", o.Retention)
	}
	if _, err := (&Options{DedupMaxKeysTotal: -1}).withDefaults(); err == nil {
		t.Fatal("negative DedupMaxKeysTotal accepted")
	}
}
