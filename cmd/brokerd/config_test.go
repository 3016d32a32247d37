package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func defaultConfig() config {
	return config{
		Addr:             ":8080",
		Data:             "./data",
		Node:             defaultNode(),
		LogFormat:        "text",
		LogLevel:         "info",
		ShutdownTimeout:  10 * time.Second,
		Heartbeat:        25 * time.Second,
		PongTimeout:      10 * time.Second,
		WriteTimeout:     10 * time.Second,
		MaxFrameBytes:    1 << 20,
		MaxMessageBytes:  1 << 20,
		MaxSubscriptions: 512,
		MaxPatternTopics: 10000,
		MaxTopics:        1_000_000,
		TopicIdle:        10 * time.Minute,
		MaxCommands:      1000,
		QueueMessages:    1024,
		QueueBytes:       4 << 20,
		MaxPending:       1024,
		MaxPendingBytes:  8 << 20,
		PendingBytes:     256 << 20,

		MaxPageBytes:       4 << 20,
		HTTPMaxHeaderBytes: 16 << 10,
		HTTPHeaderTimeout:  5 * time.Second,
		HTTPReadTimeout:    30 * time.Second,
		HTTPWriteTimeout:   10 * time.Second,
		HTTPIdleTimeout:    2 * time.Minute,
		MaxHTTPConnections: 2048,
		MaxHTTPRequests:    64,

		AuthTimeout:    5 * time.Second,
		MaxConnections: 10000,
		MaxUnauth:      1000,
		ConnRatePerIP:  1000,
		ConnBurstPerIP: 2000,
		CommandRate:    50000,
		CommandBurst:   100000,
		RetentionAge:   7 * 24 * time.Hour,
		RetentionBytes: 1 << 30,
		RetentionMsgs:  10_000_000,
		DedupWindow:    2 * time.Minute,
		Cluster:        "brokerd",
		Partitions:     64,
		LeaseTTL:       5 * time.Second,
		Replicas:       0,
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    func(c *config) // applied to the defaults
		wantErr []string        // substrings of the error; nil: no error
	}{
		{name: "defaults", want: func(*config) {}},
		{name: "flags",
			args: []string{"--addr", "127.0.0.1:9000", "-data=/var/lib/brokerd", "--node", "n1",
				"--log-format=json", "--log-level", "debug", "--heartbeat", "5s", "--shutdown-timeout=1m",
				"--max-subscriptions", "3", "--queue-bytes", "65536", "--allowed-origins", "https://a.example, https://b.example"},
			want: func(c *config) {
				c.Addr, c.Data, c.Node = "127.0.0.1:9000", "/var/lib/brokerd", "n1"
				c.LogFormat, c.LogLevel = "json", "debug"
				c.Heartbeat, c.ShutdownTimeout = 5*time.Second, time.Minute
				c.MaxSubscriptions, c.QueueBytes = 3, 65536
				c.AllowedOrigins = "https://a.example, https://b.example"
			}},
		{name: "env",
			env: map[string]string{"BROKERD_ADDR": ":1", "BROKERD_DATA": "/d", "BROKERD_PONG_TIMEOUT": "3s",
				"BROKERD_MAX_COMMANDS_PER_FRAME": "7", "BROKERD_MAX_PENDING_PUBLISHES": "9", "BROKERD_LOG_LEVEL": "warn"},
			want: func(c *config) {
				c.Addr, c.Data, c.PongTimeout, c.MaxCommands, c.MaxPending, c.LogLevel = ":1", "/d", 3*time.Second, 7, 9, "warn"
			}},
		{name: "flag wins over env",
			args: []string{"--addr", ":2", "--heartbeat=2s"},
			env:  map[string]string{"BROKERD_ADDR": ":1", "BROKERD_HEARTBEAT": "abc", "BROKERD_WRITE_TIMEOUT": "4s"},
			want: func(c *config) { c.Addr, c.Heartbeat, c.WriteTimeout = ":2", 2*time.Second, 4*time.Second }},
		{name: "flag set to its default still wins",
			args: []string{"--log-format=text"}, env: map[string]string{"BROKERD_LOG_FORMAT": "json"},
			want: func(*config) {}},
		{name: "empty env is unset",
			env:  map[string]string{"BROKERD_ADDR": "", "BROKERD_MAX_SUBSCRIPTIONS": ""},
			want: func(*config) {}},
		{name: "unrelated env ignored",
			env:  map[string]string{"BROKERD": "x", "ADDR": ":1", "BROKERD_NO_SUCH": "1"},
			want: func(*config) {}},

		{name: "unknown flag", args: []string{"--bogus"}, wantErr: []string{"-bogus", "brokerd --help"}},
		{name: "stray argument", args: []string{"run"}, wantErr: []string{`unexpected argument "run"`}},
		{name: "bad duration flag", args: []string{"--heartbeat=abc"}, wantErr: []string{`"abc"`, "-heartbeat"}},
		{name: "bad int flag", args: []string{"--max-subscriptions=many"}, wantErr: []string{`"many"`, "-max-subscriptions"}},
		{name: "bad duration env", env: map[string]string{"BROKERD_HEARTBEAT": "abc"}, wantErr: []string{`BROKERD_HEARTBEAT="abc"`}},
		{name: "bad env values all reported",
			env:     map[string]string{"BROKERD_HEARTBEAT": "abc", "BROKERD_QUEUE_BYTES": "x"},
			wantErr: []string{`BROKERD_HEARTBEAT="abc"`, `BROKERD_QUEUE_BYTES="x"`}},
		{name: "log format", args: []string{"--log-format=xml"}, wantErr: []string{`--log-format must be text or json, got "xml"`}},
		{name: "log level", args: []string{"--log-level=loud"}, wantErr: []string{`--log-level`, `"loud"`}},
		{name: "zero int", args: []string{"--max-subscriptions=0"}, wantErr: []string{"--max-subscriptions must be positive, got 0"}},
		{name: "negative int", args: []string{"--queue-messages=-1"}, wantErr: []string{"--queue-messages must be positive, got -1"}},
		{name: "zero duration", args: []string{"--write-timeout=0"}, wantErr: []string{"--write-timeout must be positive"}},
		{name: "heartbeat under 1s", args: []string{"--heartbeat=999ms"}, wantErr: []string{"--heartbeat must be at least 1s"}},
		{name: "empty addr", args: []string{"--addr="}, wantErr: []string{"--addr must not be empty"}},
		{name: "empty data", args: []string{"--data", ""}, wantErr: []string{"--data must not be empty"}},
		{name: "env value named as env", env: map[string]string{"BROKERD_MAX_FRAME_BYTES": "0", "BROKERD_LOG_FORMAT": "xml"},
			wantErr: []string{"BROKERD_MAX_FRAME_BYTES must be positive, got 0", `BROKERD_LOG_FORMAT must be text or json, got "xml"`}},
		{name: "several errors", args: []string{"--max-frame-bytes=0", "--pong-timeout=-1s"},
			wantErr: []string{"--max-frame-bytes must be positive", "--pong-timeout must be positive"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			got, err := parseConfig(tt.args, getenv)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("no error, want one containing %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			want := defaultConfig()
			tt.want(&want)
			g := *got
			g.fromEnv, g.values, g.args, g.getenv = nil, nil, nil, nil
			if !reflect.DeepEqual(g, want) {
				t.Errorf("config\n got %+v\nwant %+v", g, want)
			}
		})
	}
}

// TestEveryFlagHasEnv sets every option through the environment alone
// and checks it took effect, so that no flag is forgotten by the env
// mapping.
func TestEveryFlagHasEnv(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "brokerd.yaml")
	if err := os.WriteFile(cfgFile, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	// The three key options exclude each other: the secret stands for them
	// here, TestKeyOptionsFromEnv covers the other two.
	// So do the two admin token options: TestAdminTokenOptions covers the file.
	skip := map[string]bool{"jwt-secret-file": true, "jwt-public-key": true, "admin-token-file": true}
	for name := range helpFlags {
		if skip[name] {
			continue
		}
		env[envName(name)] = map[string]string{
			"addr": ":7", "data": "/x", "allowed-origins": "*", "node": "envnode",
			"log-format": "json", "log-level": "error", "config": cfgFile, "compression": "true",
			"tls-cert": "c.pem", "tls-key": "k.pem", "jwt-secret": "s", "trusted-proxies": "10.0.0.0/8",
		}[name]
		if env[envName(name)] == "" {
			env[envName(name)] = "3" // an int
			if strings.HasSuffix(name, "timeout") || name == "heartbeat" || strings.HasSuffix(name, "window") || strings.HasSuffix(name, "age") || strings.HasSuffix(name, "ttl") || strings.HasSuffix(name, "after") || strings.HasSuffix(name, "idle") {
				env[envName(name)] = "3s"
			}
		}
	}
	got, err := parseConfig(nil, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if len(got.fromEnv) != len(helpFlags)-len(skip) {
		t.Errorf("%d options taken from the environment, want %d: %v", len(got.fromEnv), len(helpFlags)-len(skip), got.fromEnv)
	}
	def := defaultConfig()
	gv, dv := reflect.ValueOf(*got), reflect.ValueOf(def)
	for i := range gv.NumField() {
		f := gv.Type().Field(i)
		if !f.IsExported() || f.Name == "JWTSecretFile" || f.Name == "JWTPublicKey" || f.Name == "AdminTokenFile" {
			continue // TestKeyOptionsFromEnv, TestAdminTokenOptions
		}
		if reflect.DeepEqual(gv.Field(i).Interface(), dv.Field(i).Interface()) {
			t.Errorf("config field %s kept its default %v: no environment variable reached it", f.Name, gv.Field(i))
		}
	}
}

func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{
		"addr": "BROKERD_ADDR", "max-commands-per-frame": "BROKERD_MAX_COMMANDS_PER_FRAME",
	} {
		if got := envName(flag); got != want {
			t.Errorf("envName(%q) = %q, want %q", flag, got, want)
		}
	}
}

func TestServerConfigOrigins(t *testing.T) {
	c := defaultConfig()
	c.AllowedOrigins = " https://a.example ,, https://b.example:8443,"
	got := c.serverConfig(nil).AllowedOrigins
	want := []string{"https://a.example", "https://b.example:8443"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("origins %q, want %q", got, want)
	}
}

func TestKeyOptionsFromEnv(t *testing.T) {
	for _, name := range []string{"jwt-secret-file", "jwt-public-key"} {
		got, err := parseConfig(nil, func(k string) string {
			if k == envName(name) {
				return "/k"
			}
			return ""
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.fromEnv[name] != envName(name) {
			t.Errorf("%s not taken from %s", name, envName(name))
		}
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "brokerd.yaml")
	write := func(body string) {
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("addr: \":9100\"\nheartbeat: 5s\nallowed-origins: [\"https://a.example\", \"https://b.example\"]\nmax-subscriptions: 7\nlog-level: debug\n")
	env := map[string]string{"BROKERD_HEARTBEAT": "6s"}
	got, err := parseConfig([]string{"--config", file, "--max-subscriptions", "9"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if got.Addr != ":9100" || got.AllowedOrigins != "https://a.example,https://b.example" || got.LogLevel != "debug" {
		t.Errorf("file values not applied: %+v", got)
	}
	if got.Heartbeat != 6*time.Second {
		t.Errorf("heartbeat %v: the environment must win over the file", got.Heartbeat)
	}
	if got.MaxSubscriptions != 9 {
		t.Errorf("max-subscriptions %d: the flag must win over the file", got.MaxSubscriptions)
	}
	// The file may be named by the environment too.
	env = map[string]string{"BROKERD_CONFIG": file}
	got, err = parseConfig(nil, func(k string) string { return env[k] })
	if err != nil || got.Addr != ":9100" {
		t.Fatalf("BROKERD_CONFIG: %v %+v", err, got)
	}
	for body, want := range map[string]string{
		"adr: \":1\"\n":         "unknown option(s) adr",
		"heartbeat: soon\n":     "heartbeat",
		"- a\n- b\n":            "not a YAML mapping",
		"queue-bytes: {a: 1}\n": "not a mapping",
	} {
		write(body)
		_, err := parseConfig([]string{"--config", file}, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: err %v, want it to mention %q", body, err, want)
		}
	}
	if _, err := parseConfig([]string{"--config", filepath.Join(dir, "missing.yaml")}, func(string) string { return "" }); err == nil {
		t.Error("a missing config file was accepted")
	}
}

// TestAdminTokenOptions: the admin token comes from --admin-token or a
// file (flag or environment), at least 16 bytes, not both at once.
func TestAdminTokenOptions(t *testing.T) {
	file := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(file, []byte("  from-the-file-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(t.TempDir(), "short.token")
	if err := os.WriteFile(short, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    string
		wantErr string
	}{
		{"off", nil, nil, "", ""},
		{"flag", []string{"--admin-token", "from-the-flag-0123456789"}, nil, "from-the-flag-0123456789", ""},
		{"env", nil, map[string]string{"BROKERD_ADMIN_TOKEN": "from-the-env-0123456789"}, "from-the-env-0123456789", ""},
		{"file from env", nil, map[string]string{"BROKERD_ADMIN_TOKEN_FILE": file}, "from-the-file-0123456789", ""},
		{"file flag", []string{"--admin-token-file", file}, nil, "from-the-file-0123456789", ""},
		{"short", []string{"--admin-token", "short"}, nil, "", "at least 16 bytes"},
		{"short file", []string{"--admin-token-file", short}, nil, "", "at least 16 bytes"},
		{"missing file", []string{"--admin-token-file", file + ".none"}, nil, "", "--admin-token-file"},
		{"both", []string{"--admin-token", "from-the-flag-0123456789", "--admin-token-file", file}, nil, "", "give one of --admin-token and --admin-token-file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parseConfig(c.args, func(k string) string { return c.env[k] })
			var tok string
			if err == nil {
				tok, err = cfg.adminToken()
			}
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want one saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil || tok != c.want {
				t.Fatalf("token %q, %v; want %q", tok, err, c.want)
			}
		})
	}
}

// TestMaxTopicsAlone: --max-topics bounds the store of a node alone, not
// yet a cluster node's (the owner's refusal would reach a forwarding node
// as a storage error).
func TestMaxTopicsFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want int
	}{
		{nil, 1_000_000},
		{[]string{"--max-topics", "7"}, 7},
		{[]string{"--max-topics", "7", "--nats", "nats://127.0.0.1:4222"}, 7},
	} {
		cfg, err := parseConfig(c.args, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.storeOptions(nil, nil).MaxTopics; got != c.want {
			t.Errorf("%v: the store's MaxTopics is %d, want %d", c.args, got, c.want)
		}
	}
}
