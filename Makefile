# netshim: `make demo` shows the main job, `make test` runs every test.
# Both install missing system packages first (apt-get, as root).

export PATH := /usr/local/go/bin:$(PATH)
GO      ?= go
BIN     := bin/netshim
PREFIX  ?= /usr/local
HOOKSD  ?= /usr/share/containers/oci/hooks.d
GOFILES := $(shell find . -name '*.go' -not -path './bench/out/*') go.mod go.sum

.PHONY: all build deps test unit demo install uninstall vet clean

all: build

build: $(BIN)

$(BIN): $(GOFILES)
	$(GO) build -trimpath -o $(BIN) ./hook

deps:
	@scripts/deps.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# Every test, privileged ones included: each of those runs in a network and
# mount namespace of its own (internal/sandbox).
test: deps build vet
	NETSHIM_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 15m ./...

# Tests that need neither root nor namespaces.
unit:
	$(GO) test -count=1 -short ./config ./state ./netsetup ./ocihook ./cli

demo: deps build
	@NETSHIM_BIN=$(CURDIR)/$(BIN) unshare --net --mount --propagation private -- examples/demo.sh

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/netshim
	@if [ ! -e $(DESTDIR)/etc/netshim/netshim.toml ]; then \
		install -D -m 0644 examples/netshim.toml $(DESTDIR)/etc/netshim/netshim.toml; \
		echo "wrote /etc/netshim/netshim.toml"; fi
	install -D -m 0644 examples/hooks.d/netshim.json $(DESTDIR)$(HOOKSD)/netshim.json

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/netshim $(DESTDIR)$(HOOKSD)/netshim.json

clean:
	rm -rf bin
