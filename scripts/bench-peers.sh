#!/usr/bin/env bash
# Builds the benchmark's peers when missing: the CNI reference plugins and
# cnitool from the Go module proxy at pinned versions (into bench/out/bin,
# not committed), and Debian's netavark.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out/bin
mkdir -p "$out"
for pkg in \
	github.com/containernetworking/plugins/plugins/main/bridge@v1.10.0 \
	github.com/containernetworking/plugins/plugins/ipam/host-local@v1.10.0 \
	github.com/containernetworking/plugins/plugins/meta/portmap@v1.10.0 \
	github.com/containernetworking/cni/cnitool@v1.3.1; do
	name=$(basename "${pkg%@*}")
	[ -x "$out/$name" ] || { echo "building $pkg"; CGO_ENABLED=0 GOBIN="$PWD/$out" go install "$pkg"; }
done
if [ ! -x /usr/lib/podman/netavark ]; then
	echo "installing netavark"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq netavark >/dev/null || echo "netavark could not be installed: it will be reported as not measured"
fi
