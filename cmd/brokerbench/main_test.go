package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs every scenario briefly with tiny sizes against the
// embedded broker and against NATS, and checks that each printed a JSON
// line with sane figures and that the table compares them.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts brokers and hundreds of connections")
	}
	var out bytes.Buffer
	cfg, err := parseFlags([]string{
		"--embedded", "--baseline", "nats",
		"--duration", "300ms", "--drain", "10s",
		"--subscribers", "5", "--topics", "5", "--topic-publishers", "2",
		"--publishers", "4", "--window", "16", "--rate", "100",
		"--replay-messages", "500", "--fill-publishers", "2", "--idle", "20",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Out = &out
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	results, err := run(ctx, cfg)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if len(results) != 2*len(scenarioOrder) {
		t.Fatalf("%d results, want %d", len(results), 2*len(scenarioOrder))
	}
	lines := 0
	for _, line := range strings.Split(out.String(), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		lines++
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("bad JSON line %q: %v", line, err)
		}
		if m["target"] == nil || m["scenario"] == nil {
			t.Fatalf("line without target or scenario: %s", line)
		}
	}
	if lines != len(results) {
		t.Fatalf("%d JSON lines for %d results", lines, len(results))
	}
	for _, r := range results {
		for _, f := range r.Figures {
			switch {
			case strings.HasSuffix(f.Name, "loss") && f.Value != 0 && r.Target == "brokerd":
				t.Errorf("%s %s: brokerd lost %.3f%% of the messages", r.Target, r.Scenario, f.Value*100)
			case f.Unit == "/s" && f.Value <= 0:
				t.Errorf("%s %s: %s = %v", r.Target, r.Scenario, f.Name, f.Value)
			}
		}
	}
	if !strings.Contains(out.String(), "brokerd/nats") || !strings.Contains(out.String(), "deliveries/s") {
		t.Fatalf("no comparison table:\n%s", out.String())
	}
	t.Log("\n" + out.String())
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--embedded", "--url", "ws://x/ws"},
		{"--embedded", "--scenarios", "nope"},
		{"--embedded", "--baseline", "kafka"},
		{"--embedded", "--payload", "10"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q) accepted", args)
		}
	}
	cfg, err := parseFlags([]string{"--url", "ws://localhost:8080/ws", "--scenarios", "fanout, idle"})
	if err != nil || len(cfg.Scenarios) != 2 || cfg.Subscribers != 1000 || cfg.Idle != 10000 || cfg.ReplayMessages != 1000000 {
		t.Fatalf("%v %+v", err, cfg)
	}
}

func TestHist(t *testing.T) {
	var h hist
	for i := 1; i <= 10000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want int64
	}{{0.5, 5000}, {0.9, 9000}, {0.99, 9900}} {
		got := h.quantile(c.q)
		if d := float64(got-c.want) / float64(c.want); d < -0.07 || d > 0.07 {
			t.Errorf("q%.2f = %d, want about %d", c.q, got, c.want)
		}
	}
	if h.max != 10000 {
		t.Errorf("max %d", h.max)
	}
	p := payload(128, time.Unix(0, 1234567890123))
	if len(p) != 128 || !json.Valid(p) {
		t.Fatalf("payload %q", p)
	}
	if at, ok := sentAt(p); !ok || at.UnixNano() != 1234567890123 {
		t.Fatalf("sentAt = %v %v", at, ok)
	}
}

// TestSubURLs runs the latency scenario with subscribers spread over
// --sub-urls (here two URLs of one broker) and checks the flag's rules.
func TestSubURLs(t *testing.T) {
	if _, err := parseFlags([]string{"--embedded", "--sub-urls", "ws://a/ws"}); err == nil {
		t.Fatal("--sub-urls with --embedded accepted")
	}
	emb, err := startEmbedded(false, "")
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Close()
	var out bytes.Buffer
	cfg, err := parseFlags([]string{"--url", emb.url, "--sub-urls", emb.url + ", " + emb.url,
		"--scenarios", "latency", "--duration", "300ms", "--drain", "10s", "--subscribers", "6", "--rate", "100"})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.SubURLs) != 2 {
		t.Fatalf("sub URLs %q", cfg.SubURLs)
	}
	results := runQuick(t, cfg, &out)
	if len(results) != 1 || !strings.Contains(out.String(), `"latency"`) {
		t.Fatalf("results %+v\n%s", results, out.String())
	}
	tg := &brokerdTarget{url: "u", subURLs: []string{"a", "b"}}
	if got := []string{tg.subURL(), tg.subURL(), tg.subURL()}; strings.Join(got, ",") != "a,b,a" {
		t.Fatalf("subscribers connect to %v, want a,b,a", got)
	}
}

// runQuick runs cfg's scenarios for at most a minute, printing to out.
func runQuick(t *testing.T, cfg *config, out *bytes.Buffer) []*result {
	t.Helper()
	cfg.Out = out
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	results, err := run(ctx, cfg)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	return results
}

// TestEphemeralMixed runs fanout and the mixed scenario with the
// scenarios' topics under an ephemeral policy of the broker: those topics
// never reach the durable store, the mixed scenario's background load
// does, and the flags' rules hold.
func TestEphemeralMixed(t *testing.T) {
	for _, args := range [][]string{
		{"--url", "ws://x/ws", "--ephemeral", "cursor.>"},
		{"--embedded", "--ephemeral", "cursor..x"},
		{"--embedded", "--topic-prefix", "a b"},
		{"--embedded", "--durable-prefix", "x.>"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	emb, err := startEmbedded(false, "cursor.>")
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Close()
	var out bytes.Buffer
	cfg, err := parseFlags([]string{"--url", emb.url, "--topic-prefix", "cursor", "--scenarios", "fanout,mixed",
		"--duration", "300ms", "--drain", "10s", "--subscribers", "4", "--rate", "100", "--publishers", "3", "--window", "8"})
	if err != nil {
		t.Fatal(err)
	}
	results := runQuick(t, cfg, &out)
	if len(results) != 2 || !strings.Contains(out.String(), "live p99 beside durable") {
		t.Fatalf("results %+v\n%s", results, out.String())
	}
	durable, err := emb.st.Topics("", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var loaded int
	for _, ti := range durable {
		switch {
		case strings.HasPrefix(ti.Topic, "cursor."):
			t.Errorf("the ephemeral topic %s reached the store", ti.Topic)
		case strings.HasPrefix(ti.Topic, "bench.durable."+cfg.runID+"."):
			loaded++
		}
	}
	if loaded != 3 {
		t.Errorf("%d durable topics of the background load in the store, want 3: %+v", loaded, durable)
	}
	all, err := emb.b.Store().Topics("", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var live int
	for _, ti := range all {
		if strings.HasPrefix(ti.Topic, "cursor."+cfg.runID+".") && ti.Head > 0 {
			live++
		}
	}
	if live != 3 { // fanout, mixed.alone, mixed.beside
		t.Errorf("%d ephemeral topics with messages, want 3: %+v", live, all)
	}
	t.Log("\n" + out.String())
}
