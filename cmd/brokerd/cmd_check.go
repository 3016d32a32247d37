package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/brokerd/brokerd/store"
)

const checkAbout = `Checks the store of a stopped node: bbolt's consistency checks of every page,
then the store's invariants (each topic's log starts at its earliest offset
with no gap, running byte totals agree, topic ids are unique, every record
belongs to a topic), and prints a report.

It refuses a data directory a running brokerd holds (stop the node first).
A store of an older format is migrated, as brokerd does when it starts.

Exit status: 0 the store is sound; 1 problems were found (the report says
which); 2 the check could not run (usage, no store, held by a running
brokerd).`

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", "", checkAbout)
	data := "./data"
	fs.StringVar(&data, "data", data, "data directory holding brokerd.db (env BROKERD_DATA)")
	if code, done := parseFlags(fs, args, 0, 0, stdout, stderr); done {
		return code
	}
	envOr(fs, "data", envName("data"), &data)
	path := filepath.Join(data, store.FileName)
	fi, err := os.Stat(path)
	if err != nil {
		fmt.Fprintf(stderr, "brokerd check: no store at %s: %v\n", path, err)
		return 2
	}
	fmt.Fprintf(stdout, "store %s (%d bytes)\n", path, fi.Size())
	began := time.Now()
	st, err := store.Open(data, &store.Options{
		LockTimeout:       500 * time.Millisecond,
		RetentionInterval: -1, // a check removes nothing
		Logger:            slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	switch {
	case errors.Is(err, store.ErrLocked):
		fmt.Fprintf(stderr, "brokerd check: %s is held by a running brokerd: stop that node first (check reads the file alone, offline)\n", path)
		return 2
	case err != nil:
		fmt.Fprintf(stdout, "FAILED: %v\n", err)
		return 1
	}
	defer st.Close()
	var topics, records, bytes int64
	for after := ""; ; {
		page, err := st.Topics(after, 1000)
		if err != nil {
			fmt.Fprintf(stdout, "FAILED: listing topics: %v\n", err)
			return 1
		}
		for _, t := range page {
			topics++
			records += t.Count
			bytes += t.Bytes
		}
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].Topic
	}
	var consumers int64
	for ac, at := "", ""; ; {
		page, err := st.AllConsumers(ac, at, 1000)
		if err != nil {
			fmt.Fprintf(stdout, "FAILED: listing consumers: %v\n", err)
			return 1
		}
		consumers += int64(len(page))
		if len(page) == 0 {
			break
		}
		ac, at = page[len(page)-1].Consumer, page[len(page)-1].Topic
	}
	fmt.Fprintf(stdout, "topics %d, retained records %d (%d data bytes), consumer positions %d\n", topics, records, bytes, consumers)
	if err := st.Check(); err != nil {
		fmt.Fprintf(stdout, "FAILED: %v\n", err)
		return 1
	}
	if err := st.Close(); err != nil {
		fmt.Fprintf(stdout, "FAILED: closing the store: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "ok: pages consistent, every topic's log and totals agree (%v)\n", time.Since(began).Round(time.Millisecond))
	return 0
}
