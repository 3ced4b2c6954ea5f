# hexdispatch: the two commands a newcomer needs are `make run` and `make test`.
GO       ?= go
PKGS     ?= ./...
BENCHTIME ?= 3s

.PHONY: run test lint ci bench hexbench fuzz build

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

# Go benchmarks beside the code, then the hexbench suite at GOMAXPROCS=1.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./geo ./positions
	GOMAXPROCS=1 $(GO) run ./cmd/hexbench -peer redis -workloads index-upsert,index-knn,index-memory -drivers 10000,100000,1000000 -duration $(BENCHTIME)

FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseLatLng$$' -fuzztime $(FUZZTIME) ./geo
	$(GO) test -run '^$$' -fuzz '^FuzzReadDemand$$' -fuzztime $(FUZZTIME) ./sim
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./dispatch
	$(GO) test -run '^$$' -fuzz '^FuzzDriverLocation$$' -fuzztime $(FUZZTIME) ./dispatch
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEvent$$' -fuzztime $(FUZZTIME) ./positions
	$(GO) test -run '^$$' -fuzz '^FuzzAssign$$' -fuzztime $(FUZZTIME) ./matcher
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeNearestRequest$$' -fuzztime $(FUZZTIME) ./matcher
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeNearestResponse$$' -fuzztime $(FUZZTIME) ./matcher
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCellCounts$$' -fuzztime $(FUZZTIME) ./matcher
