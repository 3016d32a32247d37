package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// The version brokerd reports (welcome, brokerd_build_info, `brokerd
// version`, the listening log line) is, first match wins: the one given at
// build time with -ldflags "-X main.version=v1.2.3"; the main module's
// version recorded by the Go toolchain (a tag such as v1.2.3 for `go
// install …@v1.2.3`, or a pseudo-version naming the commit, +dirty when the
// work tree had changes); the VCS revision; "dev".
func init() {
	if version == "dev" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			version = versionOf(bi)
		}
	}
}

// versionOf derives a version from the build information.
func versionOf(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "+dirty"
	}
	return rev
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "", "Prints the version of this binary, the Go release it was built with, and its platform.")
	if code, done := parseFlags(fs, args, 0, 0, stdout, stderr); done {
		return code
	}
	line := fmt.Sprintf("brokerd %s %s %s/%s", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && !strings.Contains(line, s.Value) {
				line += " commit " + s.Value
			}
		}
	}
	fmt.Fprintln(stdout, line)
	return 0
}
