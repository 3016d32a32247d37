package jsclient

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/brokerd/brokerd/subproto"
)

var update = flag.Bool("update", false, "rewrite src/codes.js from the protocol's tables")

const (
	codesFile      = "src/codes.js"
	codesTypesFile = "src/codes.d.ts"
)

// jsCodes renders src/codes.js from subproto's tables: the error codes of
// subproto.Codes() in their order, and every close code the server names.
func jsCodes() []byte {
	var b bytes.Buffer
	b.WriteString(`// The brokerd.v1.json protocol's error and close codes.
//
// Generated from the server's tables; a test of the Go module fails when
// this file and those tables disagree. To regenerate, from the repository
// root: go test ./clients/js -run TestCodes -update

/**
 * The error codes of err events and unsubbed events, each with its
 * description, in the protocol's order.
 */
export const ErrorCodes = Object.freeze({
`)
	for _, c := range subproto.Codes() {
		desc, _ := json.Marshal(c.Description)
		fmt.Fprintf(&b, "  %s: %s,\n", c.Code, desc)
	}
	b.WriteString(`});

/** The WebSocket close codes the server uses, by number, with their names. */
export const CloseCodes = Object.freeze({
`)
	for _, c := range closeCodes() {
		fmt.Fprintf(&b, "  %d: %q,\n", uint16(c), c.String())
	}
	b.WriteString("});\n")
	return b.Bytes()
}

// jsCodesTypes renders src/codes.d.ts, the types of src/codes.js.
func jsCodesTypes() []byte {
	var b bytes.Buffer
	b.WriteString(`// Types of codes.js, generated from the server's tables like it.

/** An error code of err and unsubbed events. */
export type ErrorCode =
`)
	for _, c := range subproto.Codes() {
		fmt.Fprintf(&b, "  | '%s'\n", c.Code)
	}
	b.WriteString(`;

/** A close code the server uses. */
export type CloseCodeNumber =
`)
	for _, c := range closeCodes() {
		fmt.Fprintf(&b, "  | %d\n", uint16(c))
	}
	b.WriteString(`;

/** Every error code with its description. */
export declare const ErrorCodes: Readonly<Record<ErrorCode, string>>;

/** Close codes by number, with their names ("going_away"). */
export declare const CloseCodes: Readonly<Record<CloseCodeNumber, string>>;
`)
	return b.Bytes()
}

// closeCodes lists the close codes subproto names, in numeric order.
func closeCodes() []subproto.CloseCode {
	var out []subproto.CloseCode
	for n := 1000; n < 5000; n++ {
		c := subproto.CloseCode(n)
		if c.String() != strconv.Itoa(n) {
			out = append(out, c)
		}
	}
	return out
}

func TestCodes(t *testing.T) {
	want := jsCodes()
	if *update {
		if err := os.WriteFile(codesFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(codesTypesFile, jsCodesTypes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(codesFile)
	if err != nil {
		t.Fatal(err)
	}

	// Name the difference in terms of codes, then insist on the exact text.
	entry := regexp.MustCompile(`(?m)^  ([a-z_]+): "`)
	var listed []string
	for _, m := range entry.FindAllSubmatch(got, -1) {
		listed = append(listed, string(m[1]))
	}
	var table []string
	for _, c := range subproto.Codes() {
		table = append(table, string(c.Code))
	}
	if strings.Join(listed, " ") != strings.Join(table, " ") {
		t.Errorf("%s lists the error codes\n\t%s\nthe protocol has\n\t%s", codesFile, strings.Join(listed, " "), strings.Join(table, " "))
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date with the protocol's tables (codes, descriptions or close codes); regenerate it: go test ./clients/js -run TestCodes -update", codesFile)
	}
	types, err := os.ReadFile(codesTypesFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(types, jsCodesTypes()) {
		t.Errorf("%s is out of date with the protocol's tables; regenerate it: go test ./clients/js -run TestCodes -update", codesTypesFile)
	}
}

func TestFSHoldsTheClient(t *testing.T) {
	for _, name := range []string{"index.js", "client.js", "codes.js"} {
		if _, err := fs.Stat(FS, name); err != nil {
			t.Errorf("FS: %v", err)
		}
	}
	// Every relative import of an embedded module resolves inside FS, so
	// that a browser can load index.js from the daemon.
	imp := regexp.MustCompile(`(?m)^\s*(?:import|export)\b[^;]*?\bfrom\s+'([^']+)'`)
	mods, err := fs.Glob(FS, "*.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range mods {
		src, err := fs.ReadFile(FS, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range imp.FindAllSubmatch(src, -1) {
			spec := string(m[1])
			if !strings.HasPrefix(spec, "./") {
				t.Errorf("%s imports %q: the client has no dependencies, imports must be relative", name, spec)
				continue
			}
			if _, err := fs.Stat(FS, strings.TrimPrefix(spec, "./")); err != nil {
				t.Errorf("%s imports %q, which is not embedded", name, spec)
			}
		}
	}
}
