package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// A subcommand of the brokerd binary. With no subcommand (or with flags
// first) brokerd runs the daemon, as it always did.
type subcommand struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

var subcommands map[string]subcommand

func init() {
	// Assigned in init: runHelp reads the map.
	subcommands = map[string]subcommand{
		"version": {"print the version of this binary", runVersion},
		"token":   {"mint a JWT for clients, signed with the broker's secret or a private key", runToken},
		"backup":  {"copy a running node's store into a file (GET /v1/admin/backup), while it serves", runBackup},
		"check":   {"check a stopped node's data directory (file consistency and the store's invariants)", runCheck},
		"pub":     {"publish values (one argument, or lines of stdin) to a topic", runPub},
		"sub":     {"subscribe to topics and print messages as JSON lines", runSub},
		"reload":  {"make a running node read its configuration again (POST /v1/admin/reload), as SIGHUP does", runReload},
		"health":  {"exit 0 when the local brokerd answers /readyz with 200 (for container health checks)", runHealth},
		"help":    {"list the subcommands", runHelp},
	}
}

// runSubcommand runs the subcommand name when there is one.
func runSubcommand(name string, args []string) (code int, ok bool) {
	sc, ok := subcommands[name]
	if !ok {
		return 0, false
	}
	return sc.run(args, os.Stdout, os.Stderr), true
}

func runHelp(_ []string, stdout, _ io.Writer) int {
	fmt.Fprintf(stdout, "brokerd %s: a WebSocket pub/sub broker with durable topic logs.\n\n", version)
	fmt.Fprintln(stdout, "Usage:\n  brokerd [flags]                 run the broker (brokerd --help lists its flags)\n  brokerd <command> [flags] ...   run a tool (brokerd <command> --help)\n\nCommands:")
	names := make([]string, 0, len(subcommands))
	for n := range subcommands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(stdout, "  %-8s %s\n", n, subcommands[n].summary)
	}
	return 0
}

// newFlagSet returns the flag set of subcommand name; usage is its
// argument synopsis, about what it does.
func newFlagSet(name, usage, about string) *cmdFlags {
	fs := flag.NewFlagSet("brokerd "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &cmdFlags{FlagSet: fs, usage: usage, about: about}
}

// cmdFlags is a subcommand's flag set with its synopsis.
type cmdFlags struct {
	*flag.FlagSet
	usage, about string
}

func printSubUsage(w io.Writer, fs *cmdFlags) {
	fmt.Fprintf(w, "Usage: %s [flags] %s\n\n%s\n", fs.Name(), fs.usage, fs.about)
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if first {
			fmt.Fprintln(w, "\nFlags:")
			first = false
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
			def = fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "  --%s%s\n      %s\n", f.Name, def, f.Usage)
	})
}

// parseFlags parses args; it reports done with the exit status when the
// command must stop: after --help (0) or on a usage error (2). The number
// of positional arguments must lie in [minArgs, maxArgs] (maxArgs < 0: no
// bound).
func parseFlags(fs *cmdFlags, args []string, minArgs, maxArgs int, stdout, stderr io.Writer) (code int, done bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printSubUsage(stdout, fs)
			return 0, true
		}
		fmt.Fprintf(stderr, "%s: %v (see %s --help)\n", fs.Name(), err, fs.Name())
		return 2, true
	}
	n := fs.NArg()
	switch {
	case n < minArgs:
		fmt.Fprintf(stderr, "%s: missing arguments: %s (see %s --help)\n", fs.Name(), fs.usage, fs.Name())
		return 2, true
	case maxArgs >= 0 && n > maxArgs:
		fmt.Fprintf(stderr, "%s: unexpected argument %q (see %s --help)\n", fs.Name(), fs.Arg(maxArgs), fs.Name())
		return 2, true
	}
	return 0, false
}

// listFlag is a flag that may be repeated and takes comma-separated values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// envOr returns the environment variable name's value when flag was not
// given on the command line.
func envOr(fs *cmdFlags, flagName, env string, dst *string) {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == flagName })
	if !set {
		if v := os.Getenv(env); v != "" {
			*dst = v
		}
	}
}
