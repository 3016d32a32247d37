# brokerd — common tasks. `make test` is what CI runs.
GO ?= go
PKGS := ./...
# The modules of the repository besides the server's (the root): the wire
# protocol and the Go client, each with its own go.mod, which ./... at the
# root does not include. The client's tests that need a server are in the
# root module (internal/clienttest).
MODULES := subproto clients/go

.PHONY: run test vet unit race bench fuzz lint build dist image crash powercut soak test-js stress-test nats-soak sim

run:
	$(GO) run ./cmd/brokerd

# The version every build reports (brokerd version, welcome,
# brokerd_build_info): the git tag or commit, +dirty with local changes.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/brokerd ./cmd/brokerd

# Release binaries: static (no cgo), stripped, reproducible paths
# (-trimpath), for each of DIST_PLATFORMS, in $(DIST) with SHA256SUMS.
DIST_PLATFORMS ?= linux/amd64 linux/arm64 darwin/arm64
DIST ?= dist
dist:
	rm -rf $(DIST) && mkdir -p $(DIST)
	@for p in $(DIST_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; \
		echo "== brokerd $(VERSION) $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' \
			-o $(DIST)/brokerd-$$os-$$arch ./cmd/brokerd || exit 1; \
	done
	cd $(DIST) && sha256sum brokerd-* > SHA256SUMS && cat SHA256SUMS

# The container image brokerd:$(VERSION) (and brokerd:latest) for linux/amd64
# from dist/ (see Dockerfile); IMAGE_ARCH=arm64 for the other.
IMAGE_ARCH ?= amd64
CONTAINER ?= podman
image:
	$(MAKE) --no-print-directory dist DIST_PLATFORMS=linux/$(IMAGE_ARCH)
	$(CONTAINER) build --format docker --build-arg ARCH=$(IMAGE_ARCH) -t brokerd:$(VERSION) -t brokerd:latest .

# Every test: vet, then the race-enabled test suite, then the JavaScript
# client's (unit, against a real brokerd, and in headless Chromium).
test: vet race test-js

vet:
	$(GO) vet $(PKGS)
	@for m in $(MODULES); do echo "== go vet ($$m)"; (cd $$m && $(GO) vet ./...) || exit 1; done

# The packages that run clusters (in-process nodes, and brokerd and NATS
# processes) run one after the other once the rest has run, so that their
# leases and timeouts never share the machine with another package's tests.
# BROKERD_TEST_SCALE=2 doubles every time bound of the tests on a slow
# machine.
CLUSTER_PKGS := ./cluster/ ./cmd/brokerd/
# The cluster simulator runs without the race detector (each run is one
# goroutine; the detector would only make it ten times slower): SIM_SEEDS
# seeds with every safety rule on, and each rule turned off in turn until
# the simulator finds what it prevents.
SIM_SEEDS ?= 3000
race:
	@for m in $(MODULES); do (cd $$m && $(GO) test -race -count=1 -timeout 15m ./...) || exit 1; done
	$(GO) test -race -count=1 -timeout 15m $$($(GO) list $(PKGS) | grep -v -e '/cluster$$' -e '/cmd/brokerd$$' -e '/cluster/sim$$')
	$(GO) test -count=1 -timeout 15m ./cluster/sim/ -sim.seeds=$(SIM_SEEDS)
	$(GO) test -race -count=1 -timeout 15m -p 1 $(CLUSTER_PKGS)

unit:
	@for m in $(MODULES); do (cd $$m && $(GO) test -count=1 ./...) || exit 1; done
	$(GO) test -count=1 $(PKGS)

test-js:
	cd clients/js && npm ci && npm run typecheck && npm test

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./store/ ./broker/
	cd subproto && $(GO) test -run='^$$' -bench=. -benchmem .

# Fuzz each decoder for FUZZTIME (default 1m); new crashers land in testdata.
FUZZTIME ?= 1m
fuzz:
	cd subproto && $(GO) test -run='^$$' -fuzz='^FuzzDecodeFrame$$' -fuzztime=$(FUZZTIME) .
	cd subproto && $(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) .
	cd clients/go && $(GO) test -run='^$$' -fuzz='^FuzzParseEvent$$' -fuzztime=$(FUZZTIME) .
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeRepl$$' -fuzztime=$(FUZZTIME) ./cluster/
	$(GO) test -run='^$$' -fuzz='^FuzzDecodePresence$$' -fuzztime=$(FUZZTIME) ./cluster/
	$(GO) test -run='^$$' -fuzz='^FuzzParseLease$$' -fuzztime=$(FUZZTIME) ./cluster/core/

# The suite under a CPU hog (stress-ng --cpu 2, from Debian): make test
# STRESS_RUNS times in a row, then the cluster package STRESS_COUNT times.
# Every run goes to the end; the summary counts the failures, and any
# failure fails the target. The cluster package runs as STRESS_COUNT
# processes of one race-built test binary, not as one -count run: the race
# detector's shadow memory is never given back, and twenty rounds in one
# process grow past 24 GiB.
STRESS_RUNS ?= 10
STRESS_COUNT ?= 20
stress-test:
	@command -v stress-ng >/dev/null || { echo "make stress-test needs stress-ng: apt-get install stress-ng" >&2; exit 2; }
	@stress-ng --cpu 2 --timeout 0 >/dev/null 2>&1 & hog=$$!; trap "kill $$hog" EXIT; \
	failed=0; \
	for i in $$(seq $(STRESS_RUNS)); do \
		echo "== make test, run $$i of $(STRESS_RUNS), beside stress-ng --cpu 2"; \
		if $(MAKE) --no-print-directory test; then echo "== run $$i passed"; else echo "== run $$i FAILED"; failed=$$((failed+1)); fi; \
	done; \
	bin=$$(mktemp -d); $(GO) test -race -c -o $$bin/cluster.test ./cluster/ || exit 1; \
	cfailed=0; \
	for i in $$(seq $(STRESS_COUNT)); do \
		echo "== the cluster package with -race, round $$i of $(STRESS_COUNT), beside stress-ng --cpu 2"; \
		if (cd cluster && $$bin/cluster.test -test.timeout 15m); then echo "== round $$i passed"; else echo "== round $$i FAILED"; cfailed=$$((cfailed+1)); fi; \
	done; \
	rm -rf $$bin; \
	echo "== make test: $(STRESS_RUNS) runs; cluster: $(STRESS_COUNT) rounds; $$failed make test runs and $$cfailed cluster rounds failed"; \
	test $$failed -eq 0 -a $$cfailed -eq 0

# The cluster simulator over many seeds: SEEDS seeds from FIRST with every
# safety rule on (a failing seed prints itself and how to replay it), then
# each rule off in turn, searching up to TEETH seeds for the violation it
# prevents.
SEEDS ?= 100000
FIRST ?= 1
TEETH ?= 10000
sim:
	$(GO) test -count=1 -timeout 0 -v -run '^TestSimulate' ./cluster/sim/ -sim.seeds=$(SEEDS) -sim.first=$(FIRST) -sim.teeth=$(TEETH)

# NATS killed with kill -9 and restarted on its store under a three-node
# cluster with publishers on every node, NATS_SOAK_COUNT times in a row.
NATS_SOAK_COUNT ?= 20
nats-soak:
	$(GO) test -race -count=$(NATS_SOAK_COUNT) -timeout 120m -run='^TestClusterNATSRestartKeepsAckedRecords$$' ./cmd/brokerd/

# A longer crash soak of the store: CYCLES kill -9 cycles of appends (every
# other one killed at a point of the write-ahead log's write, apply,
# checkpoint or replay), and MIGRATIONS stores of format 2 whose migration
# is killed up to three times.
CYCLES ?= 200
MIGRATIONS ?= 50
crash:
	$(GO) test -count=1 -timeout 30m -run='^TestCrash' ./store/ -crash.cycles=$(CYCLES) -crash.migrations=$(MIGRATIONS)

# Power cuts of the store: CUTS cycles of appends killed with kill -9 on
# LazyFS (github.com/dsrhaslab/lazyfs), which then drops every write not
# synced, as a power cut would. It needs /dev/fuse, fusermount3 (fuse3) and
# the lazyfs binary, as LAZYFS=path or on PATH (build it with the build.sh
# of its libs/libpcache, then of lazyfs; it needs cmake, g++ and
# libfuse3-dev); without them the test skips and says so.
CUTS ?= 20
LAZYFS ?=
powercut:
	LAZYFS=$(LAZYFS) $(GO) test -count=1 -timeout 30m -v -run='^TestPowerCut$$' ./store/ -powercut.cycles=$(CUTS)

# A longer fault soak of a three-node cluster: SOAK_CYCLES kill -9 cycles
# (each kills a node under load and restarts it), then a summary of acked,
# lost and duplicated records and failover times. SOAK_SEED replays a run;
# SOAK_REPLICAS=0 runs the nodes with automatic replicas.
SOAK_CYCLES ?= 20
SOAK_SEED ?= 0
SOAK_REPLICAS ?= 2
soak:
	$(GO) test -race -count=1 -v -timeout 60m -run='^TestClusterKillOwnerKeepsAckedRecords$$' ./cmd/brokerd/ \
		-cluster.cycles=$(SOAK_CYCLES) -cluster.seed=$(SOAK_SEED) -cluster.replicas=$(SOAK_REPLICAS)

lint:
	gofmt -l . | tee /dev/stderr | (! read)
	$(MAKE) --no-print-directory vet
