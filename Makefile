# hexdispatch: the two commands a newcomer needs are `make run` and `make test`.
GO       ?= go
PKGS     ?= ./...

.PHONY: run test lint ci bench hexbench fuzz build chaos

# ARGS passes flags, e.g. make run ARGS="-addr 127.0.0.1:9090".
run:
	$(GO) build -o bin/hexdispatch ./cmd/hexdispatch
	exec ./bin/hexdispatch $(ARGS)

build:
	$(GO) build $(PKGS)

test:
	$(GO) test -race -count=1 $(PKGS)

lint:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

ci: lint test

# The whole benchmark suite, in under 10 minutes on the 2-core machine (see
# BENCHMARKS.md): the Go benchmarks of geo and positions, then hexbench over
# every workload with the Redis GEO peer. Every figure goes to
# bench/results/<date>.json as JSON lines (the Go benchmarks converted by
# hexbench -gobench); the ratio table against Redis GEO is printed last.
# The index and mixed workloads run on one core (GOMAXPROCS=1); the engine
# workloads get both.
BENCHTIME   ?= 2s
GOBENCHTIME ?= 1s
E2ETIME     ?= 20s
BENCHOUT    ?= bench/results/$(shell date +%F).json
bench:
	@mkdir -p bench/results bench/tmp bin
	$(GO) build -o bin/hexbench ./cmd/hexbench
	@: > $(BENCHOUT)
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(GOBENCHTIME) ./geo ./positions > bench/tmp/gotest.txt || { cat bench/tmp/gotest.txt; exit 1; }
	@cat bench/tmp/gotest.txt
	./bin/hexbench -gobench bench/tmp/gotest.txt >> $(BENCHOUT)
	GOMAXPROCS=1 ./bin/hexbench -peer redis -workloads index-upsert,index-knn,index-memory,mixed -drivers 10000,100000,1000000 -duration $(BENCHTIME) >> $(BENCHOUT)
	./bin/hexbench -peer redis -workloads gather,gather-rpc,pipeline-rebuild -drivers 100000 -duration $(BENCHTIME) >> $(BENCHOUT)
	./bin/hexbench -peer redis -workloads pipeline -drivers 600000 -duration $(BENCHTIME) >> $(BENCHOUT)
	./bin/hexbench -peer redis -workloads assign -duration $(BENCHTIME) >> $(BENCHOUT)
	./bin/hexbench -peer redis -workloads ws-conns -drivers 19000 >> $(BENCHOUT)
	./bin/hexbench -peer redis -workloads ws-conns -drivers 50000 >> $(BENCHOUT)
	./bin/hexbench -peer redis -workloads match-e2e -drivers 50000 -rate 500 -duration $(E2ETIME) >> $(BENCHOUT)
	./bin/hexbench -peer redis -workloads match-e2e -drivers 50000 -rate 100 -duration $(E2ETIME) >> $(BENCHOUT)
	@echo "results: $(BENCHOUT)"
	./bin/hexbench -ratios $(BENCHOUT)

FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseLatLng$$' -fuzztime $(FUZZTIME) ./geo
	$(GO) test -run '^$$' -fuzz '^FuzzReadDemand$$' -fuzztime $(FUZZTIME) ./sim
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./dispatch
	$(GO) test -run '^$$' -fuzz '^FuzzDriverLocation$$' -fuzztime $(FUZZTIME) ./dispatch
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEvent$$' -fuzztime $(FUZZTIME) ./positions
	$(GO) test -run '^$$' -fuzz '^FuzzAssign$$' -fuzztime $(FUZZTIME) ./matcher
	$(GO) test -run '^$$' -fuzz '^FuzzRideEventRecord$$' -fuzztime $(FUZZTIME) ./dispatch
	$(GO) test -run '^$$' -fuzz '^FuzzRideRequestBody$$' -fuzztime $(FUZZTIME) ./dispatch
	$(GO) test -run '^$$' -fuzz '^FuzzPolicyBody$$' -fuzztime $(FUZZTIME) ./dispatch
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeNearestRequest$$' -fuzztime $(FUZZTIME) ./matcher
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeNearestResponse$$' -fuzztime $(FUZZTIME) ./matcher
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCellCounts$$' -fuzztime $(FUZZTIME) ./matcher

# The chaos soak (cmd/chaos; README "Chaos soak"): a fault-free run and a
# chaos run of CHAOSTIME each against the engine as separate processes
# (devbroker, redis-server with AOF, two workers, one api), with a worker
# kill -9, a Redis restart or a broker pause every CHAOSEVERY; then the
# invariant checker. report.json and each run's process logs go to
# CHAOSOUT; the table is printed. Shorten it with CHAOSTIME=2m.
CHAOSTIME  ?= 10m
CHAOSEVERY ?= 15s
CHAOSSEED  ?= 1
CHAOSOUT   ?= chaos-out
chaos:
	@mkdir -p bin
	$(GO) build -o bin/hexdispatch ./cmd/hexdispatch
	$(GO) build -o bin/devbroker ./cmd/devbroker
	$(GO) build -o bin/chaos ./cmd/chaos
	./bin/chaos -duration $(CHAOSTIME) -every $(CHAOSEVERY) -seed $(CHAOSSEED) -bin-dir bin -out $(CHAOSOUT) $(ARGS)
