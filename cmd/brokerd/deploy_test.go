package main

// Tests of the deployment files under deploy/ and of the Dockerfile: every
// metric the alert rules and the dashboard name exists in a real cluster
// node's /metrics, the compose file and the systemd unit hold together,
// and the image builds (where podman is installed).

import (
	"archive/tar"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const repoRoot = "../.."

type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// deployExprs returns every PromQL expression of deploy/alerts.yaml (by
// alert) and deploy/dashboard.json (by panel).
func deployExprs(t *testing.T) (alerts, panels map[string][]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules alertRules
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("deploy/alerts.yaml: %v", err)
	}
	alerts = map[string][]string{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" || r.Annotations["summary"] == "" || r.Labels["severity"] == "" {
				t.Errorf("deploy/alerts.yaml: rule %+v lacks alert, expr, labels.severity or annotations.summary", r)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("deploy/alerts.yaml: %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if _, dup := alerts[r.Alert]; dup {
				t.Errorf("deploy/alerts.yaml: alert %s twice", r.Alert)
			}
			alerts[r.Alert] = append(alerts[r.Alert], r.Expr)
		}
	}

	b, err = os.ReadFile(filepath.Join(repoRoot, "deploy/dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("deploy/dashboard.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("deploy/dashboard.json: no title or uid")
	}
	panels = map[string][]string{}
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("deploy/dashboard.json: panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			panels[p.Title] = append(panels[p.Title], tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			panels["variable "+v.Name] = append(panels["variable "+v.Name], v.Definition)
		}
	}
	return alerts, panels
}

var metricName = regexp.MustCompile(`\bbrokerd_[a-z0-9_]+`)

// TestDeployMetricsExist checks every brokerd_ metric named by the alert
// rules and the dashboard against the /metrics of a running cluster node
// (the cluster_ metrics exist only there).
func TestDeployMetricsExist(t *testing.T) {
	alerts, panels := deployExprs(t)
	for _, want := range []string{"BrokerdDown", "BrokerdNotReady", "BrokerdStorageErrors", "BrokerdUnderReplicatedPartitions",
		"BrokerdEpochResets", "BrokerdLeaseRenewalsLate", "BrokerdSlowConsumerCloses", "BrokerdPublishLatencyHigh"} {
		if _, ok := alerts[want]; !ok {
			t.Errorf("deploy/alerts.yaml has no alert %s", want)
		}
	}

	c := newTestCluster(t, "deploymetrics", 1, false, nil)
	c.startAll()
	d, _ := c.nodes[0].get()
	code, body := httpGet(t, d.url("/metrics"))
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	types := map[string]string{} // metric family -> type
	for _, line := range strings.Split(body, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
		}
	}
	if len(types) < 20 {
		t.Fatalf("/metrics lists %d families:\n%s", len(types), body)
	}
	check := func(where, expr string) {
		for _, name := range metricName.FindAllString(expr, -1) {
			base, suffix := name, ""
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, s); ok && types[b] == "histogram" {
					base, suffix = b, s
				}
			}
			typ, ok := types[base]
			switch {
			case !ok:
				t.Errorf("%s: %s is not in a cluster node's /metrics", where, name)
			case typ == "histogram" && suffix == "":
				t.Errorf("%s: %s is a histogram: use its _bucket, _sum or _count", where, name)
			case strings.Contains(expr, "rate("+name) && typ != "counter" && typ != "histogram":
				t.Errorf("%s: rate or increase of %s, a %s", where, name, typ)
			}
		}
	}
	n := 0
	for a, exprs := range alerts {
		for _, e := range exprs {
			check("deploy/alerts.yaml "+a, e)
			n += len(metricName.FindAllString(e, -1))
		}
	}
	for p, exprs := range panels {
		for _, e := range exprs {
			check("deploy/dashboard.json "+strconv.Quote(p), e)
			n += len(metricName.FindAllString(e, -1))
		}
	}
	if n < 30 {
		t.Errorf("only %d metric references found in the alert rules and the dashboard", n)
	}
}

func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
			Ports       []string          `yaml:"ports"`
			DependsOn   []string          `yaml:"depends_on"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(b, &cf); err != nil {
		t.Fatalf("deploy/compose.yaml: %v", err)
	}
	nats, ok := cf.Services["nats"]
	if !ok || !strings.Contains(strings.Join(nats.Command, " "), "--jetstream") {
		t.Errorf("deploy/compose.yaml: no nats service with --jetstream: %+v", nats)
	}
	nodes := map[string]bool{}
	ports := map[string]bool{}
	for name, s := range cf.Services {
		if name == "nats" {
			continue
		}
		if s.Image != "brokerd:latest" || s.Environment["BROKERD_NATS"] != "nats://nats:4222" || len(s.DependsOn) != 1 {
			t.Errorf("deploy/compose.yaml: %s: image %q, BROKERD_NATS %q, depends_on %v", name, s.Image, s.Environment["BROKERD_NATS"], s.DependsOn)
		}
		node := s.Environment["BROKERD_NODE"]
		if node == "" || nodes[node] {
			t.Errorf("deploy/compose.yaml: %s: node name %q missing or shared", name, node)
		}
		nodes[node] = true
		if len(s.Volumes) != 1 || !strings.HasSuffix(s.Volumes[0], ":/data") {
			t.Errorf("deploy/compose.yaml: %s: volumes %v, want one on /data", name, s.Volumes)
		} else if _, ok := cf.Volumes[strings.TrimSuffix(s.Volumes[0], ":/data")]; !ok {
			t.Errorf("deploy/compose.yaml: %s: volume %s not declared", name, s.Volumes[0])
		}
		for _, p := range s.Ports {
			if ports[p] {
				t.Errorf("deploy/compose.yaml: port %s twice", p)
			}
			ports[p] = true
		}
		// Every variable must be an option brokerd knows.
		for k := range s.Environment {
			if !knownEnv(k) {
				t.Errorf("deploy/compose.yaml: %s: %s is not an option of brokerd", name, k)
			}
		}
	}
	if len(nodes) != 3 {
		t.Errorf("deploy/compose.yaml: %d brokerd nodes, want 3", len(nodes))
	}
}

// knownEnv reports whether name is the environment variable of a flag.
func knownEnv(name string) bool {
	found := false
	_, _ = parseConfig(nil, func(n string) string {
		found = found || n == name
		return ""
	})
	return found
}

func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/brokerd.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, opt := range []string{"ExecStart=/usr/local/bin/brokerd\n", "DynamicUser=yes", "StateDirectory=brokerd", "NoNewPrivileges=yes",
		"ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service",
		"RestrictAddressFamilies=", "KillSignal=SIGTERM", "Environment=BROKERD_DATA=/var/lib/brokerd"} {
		if !strings.Contains(unit, opt) {
			t.Errorf("deploy/brokerd.service lacks %q", opt)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed: the unit is not verified")
	}
	// verify wants the binary to exist: point the unit at the test's.
	dir := t.TempDir()
	path := filepath.Join(dir, "brokerd.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/bin/brokerd", daemonBin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err = exec.Command("systemd-analyze", "security", "--offline=yes", path).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for brokerd.service: ([0-9.]+)`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	if v, _ := strconv.ParseFloat(string(m[1]), 64); v > 2 {
		t.Errorf("systemd-analyze security rates the unit's exposure %s, want at most 2 (OK)", m[1])
	}
	t.Logf("systemd-analyze security --offline: exposure %s", m[1])
}

// TestContainerImage builds the image from the Dockerfile with podman (the
// test is skipped without it) and checks its entrypoint, user, volume,
// health check and files. Running the container is not tested.
func TestContainerImage(t *testing.T) {
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed")
	}
	ctx := t.TempDir()
	arch := runtime.GOARCH
	bin := filepath.Join(ctx, "dist", "brokerd-linux-"+arch)
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, f := range []string{"Dockerfile", ".dockerignore", "deploy/image/data/.keep"} {
		b, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(ctx, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ctx, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Files the image must not take: .dockerignore keeps them out.
	if err := os.WriteFile(filepath.Join(ctx, "stray.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tag := "localhost/brokerd-test:" + strconv.Itoa(os.Getpid())
	out, err := exec.Command(podman, "build", "--layers=false", "--format", "docker", "--build-arg", "ARCH="+arch, "-t", tag, ctx).CombinedOutput()
	if err != nil {
		t.Fatalf("podman build: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(podman, "rmi", "-f", tag).Run() })

	out, err = exec.Command(podman, "image", "inspect", tag).Output()
	if err != nil {
		t.Fatalf("podman image inspect: %v", err)
	}
	var img []struct {
		Config struct {
			User       string
			Entrypoint []string
			Cmd        []string
			Env        []string
			Volumes    map[string]any
			Exposed    map[string]any `json:"ExposedPorts"`
		}
		HealthCheck struct {
			Test []string
		} `json:"Healthcheck"`
	}
	if err := json.Unmarshal(out, &img); err != nil || len(img) != 1 {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	cfg := img[0].Config
	if cfg.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (not root)", cfg.User)
	}
	if strings.Join(cfg.Entrypoint, " ") != "/usr/local/bin/brokerd" || len(cfg.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want the binary alone", cfg.Entrypoint, cfg.Cmd)
	}
	if _, ok := cfg.Volumes["/data"]; !ok || len(cfg.Volumes) != 1 {
		t.Errorf("volumes %v, want /data", cfg.Volumes)
	}
	if _, ok := cfg.Exposed["8080/tcp"]; !ok {
		t.Errorf("exposed ports %v, want 8080/tcp", cfg.Exposed)
	}
	env := strings.Join(cfg.Env, " ")
	for _, want := range []string{"BROKERD_DATA=/data", "BROKERD_ADDR=:8080"} {
		if !strings.Contains(env, want) {
			t.Errorf("env %v lacks %s", cfg.Env, want)
		}
	}
	if strings.Join(img[0].HealthCheck.Test, " ") != "CMD /usr/local/bin/brokerd health" {
		t.Errorf("health check %q, want CMD /usr/local/bin/brokerd health", img[0].HealthCheck.Test)
	}

	// The files: the binary, executable, and /data owned by the user.
	archive := filepath.Join(t.TempDir(), "image.tar")
	if out, err := exec.Command(podman, "save", "--format", "docker-archive", "-o", archive, tag).CombinedOutput(); err != nil {
		t.Fatalf("podman save: %v\n%s", err, out)
	}
	files := imageFiles(t, archive)
	if h, ok := files["usr/local/bin/brokerd"]; !ok || h.Mode&0o111 == 0 || h.Size < 1<<20 {
		t.Errorf("usr/local/bin/brokerd in the image: %+v", h)
	}
	if h, ok := files["data/"]; !ok || h.Uid != 65532 || h.Gid != 65532 {
		t.Errorf("data/ in the image: %+v, want owned by 65532:65532", h)
	}
	for name := range files {
		if !strings.HasPrefix(name, "usr/") && !strings.HasPrefix(name, "data/") {
			t.Errorf("unexpected file in the image: %s", name)
		}
	}
}

// imageFiles lists the files of every layer of a docker-archive.
func imageFiles(t *testing.T, archive string) map[string]*tar.Header {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string]*tar.Header{}
	outer := tar.NewReader(f)
	for {
		h, err := outer.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(h.Name, "layer.tar") && !(strings.HasSuffix(h.Name, ".tar") && !strings.Contains(h.Name, "/")) {
			continue
		}
		inner := tar.NewReader(outer)
		for {
			ih, err := inner.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", h.Name, err)
			}
			files[strings.TrimPrefix(ih.Name, "./")] = ih
		}
	}
	if len(files) == 0 {
		t.Fatal("no files in the image archive")
	}
	return files
}

// TestMakeDist runs make dist for this machine's linux platform: the
// binary is static, reports the version given, and SHA256SUMS matches it.
func TestMakeDist(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	dist := t.TempDir()
	cmd := exec.Command("make", "--no-print-directory", "dist", "DIST="+dist, "DIST_PLATFORMS=linux/"+runtime.GOARCH, "VERSION=v0.0.0-dist-test")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make dist: %v\n%s", err, out)
	}
	bin := filepath.Join(dist, "brokerd-linux-"+runtime.GOARCH)
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	libs, _ := ef.ImportedLibraries()
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a dynamic loader: not static", bin)
		}
	}
	ef.Close()
	if len(libs) > 0 {
		t.Errorf("%s links %v: not static", bin, libs)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "brokerd v0.0.0-dist-test ") {
		t.Errorf("%s version: %q, %v", bin, out, err)
	}
	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%x  brokerd-linux-%s\n", sha256.Sum256(b), runtime.GOARCH)
	if string(sums) != want {
		t.Errorf("SHA256SUMS:\n%s\nwant:\n%s", sums, want)
	}
}
