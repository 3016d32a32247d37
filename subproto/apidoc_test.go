package subproto

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// apiDoc is the users' reference of the protocol, at the repository root.
var apiDoc = filepath.Join("..", "api.md")

// contractCloseCodes are the close codes of the founders' contract (the
// close-code table of protocol v1). Changing this list is a protocol change.
var contractCloseCodes = []CloseCode{
	1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1013, 4001, 4003, 4008, 4029,
}

// docTable returns the rows of the first Markdown table in the section of
// api.md whose heading is exactly heading (e.g. "## Error codes"), up to
// the next heading of the same or a higher level. Each row is its cells,
// trimmed; the header and delimiter rows are left out.
func docTable(t *testing.T, heading string) [][]string {
	t.Helper()
	b, err := os.ReadFile(apiDoc)
	if err != nil {
		t.Fatalf("reading api.md: %v", err)
	}
	level := strings.IndexByte(heading, ' ')
	var rows [][]string
	in, inTable, header := false, false, false
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.HasPrefix(line, "#") {
			n := len(line) - len(strings.TrimLeft(line, "#"))
			if in && n <= level {
				break
			}
			if strings.TrimSpace(line) == heading {
				in = true
			}
			continue
		}
		if !in {
			continue
		}
		if !strings.HasPrefix(strings.TrimSpace(line), "|") {
			if inTable {
				break // the first table of the section has ended
			}
			continue
		}
		if !inTable {
			inTable, header = true, true
			continue // header row
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if header && strings.Trim(strings.Join(cells, ""), "-: ") == "" {
			header = false
			continue // delimiter row
		}
		rows = append(rows, cells)
	}
	if !in {
		t.Fatalf("api.md has no heading %q", heading)
	}
	if len(rows) == 0 {
		t.Fatalf("api.md: the section %q has no table", heading)
	}
	return rows
}

// unquote strips the backticks around a table cell's code.
func unquote(cell string) string { return strings.Trim(cell, "`") }

// TestApiDocErrorCodes checks that the error-code table of api.md lists
// exactly the codes of Codes(), each once.
func TestApiDocErrorCodes(t *testing.T) {
	documented := map[Code]int{}
	for _, row := range docTable(t, "## Error codes") {
		c := Code(unquote(row[0]))
		documented[c]++
		if documented[c] == 2 {
			t.Errorf("api.md documents error code %q twice", c)
		}
		if c.Description() == "" {
			t.Errorf("api.md documents error code %q, which Codes() lacks", c)
		}
		if len(row) < 3 || row[1] == "" || row[2] == "" {
			t.Errorf("api.md: the row of error code %q needs a meaning and how it is sent", c)
		}
	}
	for _, ci := range Codes() {
		if documented[ci.Code] == 0 {
			t.Errorf("error code %q of Codes() is not in the error-code table of api.md", ci.Code)
		}
	}
}

// TestApiDocCloseCodes checks that the close-code table of api.md lists
// exactly the contract's close codes, each once and with the reason word
// the server sends (CloseCode.String), and that every close code subproto
// names is among them.
func TestApiDocCloseCodes(t *testing.T) {
	contract := map[CloseCode]bool{}
	for _, c := range contractCloseCodes {
		contract[c] = true
	}
	// Every close code the package names belongs to the contract.
	for n := 1000; n < 5000; n++ {
		if c := CloseCode(n); c.String() != strconv.Itoa(n) && !contract[c] {
			t.Errorf("subproto names close code %d (%s), which the contract lacks", n, c)
		}
	}
	documented := map[CloseCode]int{}
	for _, row := range docTable(t, "## Close codes") {
		n, err := strconv.Atoi(unquote(row[0]))
		if err != nil {
			t.Errorf("api.md close-code table: %q is not a close code", row[0])
			continue
		}
		c := CloseCode(n)
		documented[c]++
		if documented[c] == 2 {
			t.Errorf("api.md documents close code %d twice", n)
		}
		if !contract[c] {
			t.Errorf("api.md documents close code %d, which the contract lacks", n)
			continue
		}
		if len(row) < 3 || row[2] == "" {
			t.Errorf("api.md: the row of close code %d needs a meaning", n)
		}
		if len(row) < 2 || unquote(row[1]) != c.String() {
			t.Errorf("api.md: close code %d has reason %q, the server sends %q", n, row[1], c.String())
		}
	}
	for _, c := range contractCloseCodes {
		if documented[c] == 0 {
			t.Errorf("close code %d of the contract is not in the close-code table of api.md", c)
		}
	}
}
