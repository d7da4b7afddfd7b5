#!/usr/bin/env bash
# netshim demo: two busybox containers on the default bridge under runc, in a
# throwaway network and mount namespace (run it through `make demo`, which
# wraps it in `unshare --net --mount`). Nothing outside that namespace is
# touched, and everything goes away when it exits.
set -euo pipefail

NETSHIM=${NETSHIM_BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin/netshim}
if [ "$(readlink /proc/self/ns/net)" = "$(readlink /proc/1/ns/net)" ]; then
	echo "demo: refusing to run in the machine's own network namespace; use 'make demo'" >&2
	exit 1
fi

mount -t tmpfs tmpfs /run # private: runc state, netshim state
ip link set lo up
work=$(mktemp -d /tmp/netshim-demo.XXXXXX)
state=$work/state
ns() { "$NETSHIM" --state-dir "$state" "$@"; }
rc() { runc --root "$work/runc" "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
	for id in db web; do rc delete -f "$id" >/dev/null 2>&1 || true; done
	rm -rf "$work"
}
trap cleanup EXIT

make_bundle() { # make_bundle ID netshim-bundle-flags...
	local id=$1; shift
	local b=$work/$id
	mkdir -p "$b/rootfs/bin"
	cp "$(command -v busybox)" "$b/rootfs/bin/busybox"
	for applet in $(busybox --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$b/rootfs/bin/$applet"
	done
	(cd "$b" && runc spec)
	# A detached container that stays up: no terminal, sleep instead of sh.
	sed -i -e 's/"terminal": true/"terminal": false/' -e 's/^\(\s*\)"sh"$/\1"sleep", "3600"/' \
		-e "s/\"hostname\": \"runc\"/\"hostname\": \"$id\"/" "$b/config.json"
	ns bundle "$b" --name "$id" --cap-add NET_RAW "$@"
}

say "netshim bundle: annotations, hooks and a network namespace in config.json"
make_bundle db
make_bundle web --link db:database
grep -A3 '"createRuntime"' "$work/web/config.json" | sed 's/^/    /'

say "runc run -d db; runc run -d web   (netshim runs as their createRuntime hook)"
rc run -d --bundle "$work/db" db </dev/null >/dev/null 2>&1
rc run -d --bundle "$work/web" web </dev/null >/dev/null 2>&1
ns ps

say "the bridge and its veth ports (brctl show)"
printf '%-12s %-14s %s\n' "bridge name" "STP enabled" "interfaces"
stp=$(ip -d link show netshim0 | grep -o 'stp_state [0-9]' | cut -d' ' -f2)
printf '%-12s %-14s %s\n' netshim0 "$([ "$stp" = 0 ] && echo no || echo yes)" \
	"$(ip -o link show master netshim0 | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\n' ' ')"
say "the bridge address (ifconfig netshim0)"
ip addr show netshim0

for id in db web; do
	say "container $id: ip a"
	rc exec "$id" ip a
done

say "web's /etc/hosts (--link db:database)"
rc exec web cat /etc/hosts

say "ping from web to db, by address and by link alias"
rc exec web ping -c 2 172.17.0.2
rc exec web ping -c 1 database

say "NAT rules (nft list table ip netshim)"
nft list table ip netshim
echo "net.ipv4.ip_forward = $(cat /proc/sys/net/ipv4/ip_forward)"

say "stop both: runc runs netshim's poststop hook"
rc kill db KILL; rc kill web KILL
sleep 0.2
rc delete db; rc delete web
ns ps
echo "veths left: $(ip -o link | grep -c veth || true); netshim rules left: $(nft list ruleset | grep -c netshim || true)"
