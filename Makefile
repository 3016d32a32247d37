# brokerd — common tasks. `make test` is what CI runs.
GO ?= go
PKGS := ./...

.PHONY: run test vet unit race bench fuzz lint build crash soak test-js

run:
	$(GO) run ./cmd/brokerd

build:
	$(GO) build -o bin/brokerd ./cmd/brokerd

# Every test: vet, then the race-enabled test suite, then the JavaScript
# client's (unit, against a real brokerd, and in headless Chromium).
test: vet race test-js

vet:
	$(GO) vet $(PKGS)

race:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

unit:
	$(GO) test -count=1 $(PKGS)

test-js:
	cd clients/js && npm ci && npm run typecheck && npm test

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./store/ ./broker/ ./subproto/

# Fuzz each decoder for FUZZTIME (default 1m); new crashers land in testdata.
FUZZTIME ?= 1m
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeFrame$$' -fuzztime=$(FUZZTIME) ./subproto/
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./subproto/
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeRepl$$' -fuzztime=$(FUZZTIME) ./cluster/

# A longer crash soak of the store: CYCLES kill -9 cycles.
CYCLES ?= 200
crash:
	$(GO) test -count=1 -run='^TestCrash' ./store/ -crash.cycles=$(CYCLES)

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
	$(GO) vet $(PKGS)
