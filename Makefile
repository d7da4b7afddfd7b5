# netshim: `make demo` shows the main job, `make test` runs every test.
# Both install missing system packages first (apt-get, as root).

export PATH := /usr/local/go/bin:$(PATH)
GO      ?= go
BIN     := bin/netshim
PREFIX  ?= /usr/local
HOOKSD  ?= /usr/share/containers/oci/hooks.d
UNITDIR ?= /etc/systemd/system
GOFILES := $(shell find . -name '*.go' -not -path './bench/*') go.mod go.sum

.PHONY: all build deps test unit demo install uninstall vet clean fuzz soak bench

all: build

build: $(BIN)

$(BIN): $(GOFILES)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./hook

deps:
	@scripts/deps.sh

STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
vet:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd bench && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# Every test, privileged ones included: each of those runs in a network and
# mount namespace of its own (internal/sandbox).
test: deps build vet
	NETSHIM_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 15m ./...
	cd bench && $(GO) test -count=1 ./...

# Tests that need neither root nor namespaces (those that do skip, and say
# so, without root).
unit:
	$(GO) test -count=1 ./config ./state ./firewall ./resolver ./netsetup ./ocihook ./engine ./cli ./cluster ./internal/...

# Each fuzz target for FUZZTIME (their seed corpora also run in make test).
FUZZTIME ?= 60s
FUZZ := ./ocihook:FuzzReadState ./ocihook:FuzzParseAnnotations ./ocihook:FuzzParsePublish \
	./ocihook:FuzzParseLinkAddHostIP ./config:FuzzParse ./state:FuzzStateFiles ./resolver:FuzzHandle
fuzz:
	@set -e; for t in $(FUZZ); do \
		echo "fuzz $${t#*:} ($${t%%:*}) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) $${t%%:*}; \
	done

# 1,000 start/stop cycles at the hook level (make test runs 100).
SOAK_CYCLES ?= 1000
soak: deps build
	NETSHIM_BIN=$(CURDIR)/$(BIN) NETSHIM_SOAK_CYCLES=$(SOAK_CYCLES) $(GO) test -count=1 -timeout 30m -run '^TestSoak$$' -v ./test | grep -v '^    | ===' | tail -5

# The benchmark against the CNI plugins and netavark, in a throwaway netns;
# writes bench/results.md and bench/latency.png. BENCH_BASELINE=BIN measures
# another netshim build (an older main) in the same run.
BENCH_N ?= 20,1000
BENCH_BASELINE ?=
bench: deps build
	@scripts/bench-peers.sh
	cd bench && $(GO) build -o out/bench . && CGO_ENABLED=0 $(GO) build -trimpath -o out/noop ./noop
	unshare --net --mount --propagation private -- bench/out/bench -n $(BENCH_N) -netshim $(BIN) -cni bench/out/bin -out bench $(if $(BENCH_BASELINE),-baseline $(BENCH_BASELINE))

demo: deps build
	@NETSHIM_BIN=$(CURDIR)/$(BIN) examples/demo.sh

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/netshim
	@if [ ! -e $(DESTDIR)/etc/netshim/netshim.toml ]; then \
		install -D -m 0644 examples/netshim.toml $(DESTDIR)/etc/netshim/netshim.toml; \
		echo "wrote $(DESTDIR)/etc/netshim/netshim.toml"; fi
	install -D -m 0644 examples/hooks.d/netshim.json $(DESTDIR)$(HOOKSD)/netshim.json
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/netshim|$(PREFIX)/bin/netshim|' examples/netshim-reload.service > $(DESTDIR)$(UNITDIR)/netshim-reload.service
	@# Overlay units, for hosts of a cluster: enabled by hand (see the README).
	for u in netshim-overlay-sync.service netshim-overlay-sync.timer netshim-overlay-watch.service; do \
		sed 's|/usr/local/bin/netshim|$(PREFIX)/bin/netshim|' examples/$$u > $(DESTDIR)$(UNITDIR)/$$u; done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemctl daemon-reload && systemctl enable netshim-reload.service; fi

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable netshim-reload.service || true; fi
	rm -f $(DESTDIR)$(PREFIX)/bin/netshim $(DESTDIR)$(HOOKSD)/netshim.json $(DESTDIR)$(UNITDIR)/netshim-reload.service \
		$(DESTDIR)$(UNITDIR)/netshim-overlay-sync.service $(DESTDIR)$(UNITDIR)/netshim-overlay-sync.timer $(DESTDIR)$(UNITDIR)/netshim-overlay-watch.service

clean:
	rm -rf bin
