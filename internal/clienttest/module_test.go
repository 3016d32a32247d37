package clienttest_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestClientModuleDependencies checks what an application importing the Go
// client builds: only the standard library, the client, the protocol
// package and the WebSocket and UUID libraries (with what they import),
// never the server's packages or dependencies (NATS server, bbolt,
// Prometheus).
func TestClientModuleDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".")
	cmd.Dir = "../../clients/go"
	cmd.Env = append(cmd.Environ(), "GOFLAGS=-mod=readonly")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list in clients/go: %v\n%s", err, out)
	}
	allowed := []string{
		"github.com/brokerd/brokerd/clients/go",
		"github.com/brokerd/brokerd/subproto",
		"github.com/lxzan/gws",
		"github.com/google/uuid",
		"github.com/klauspost/compress",
		"github.com/dolthub/maphash",
	}
	var seen []string
	for _, p := range strings.Fields(string(out)) {
		seen = append(seen, p)
		ok := false
		for _, a := range allowed {
			if p == a || strings.HasPrefix(p, a+"/") {
				ok = true
			}
		}
		if !ok {
			t.Errorf("the Go client imports %s", p)
		}
	}
	if len(seen) == 0 || seen[len(seen)-1] != "github.com/brokerd/brokerd/clients/go" {
		t.Fatalf("go list -deps did not list the client last: %q", seen)
	}
}
