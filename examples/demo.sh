#!/usr/bin/env bash
# netshim demo: two busybox containers on the default bridge under runc, in a
# throwaway network and mount namespace (it makes one itself, as `make demo`
# does). Nothing outside that namespace is touched, and everything goes away
# when it exits.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
sandbox_or_reexec "$@"

say "netshim bundle: annotations, hooks and a network namespace in config.json"
make_bundle db "sleep 3600"
make_bundle web "sleep 3600" --link db:database
grep -A3 '"createRuntime"' "$WORK/web/config.json" | sed 's/^/    /'

say "runc run -d db; runc run -d web   (netshim runs as their createRuntime hook)"
start db
start web
ns ps

say "the bridge and its veth ports (brctl show)"
show_bridge netshim0
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
stop db
stop web
ns ps
sleep 0.2 # the kernel removes the veths with the containers' namespaces
echo "veths left: $(ip -o link | grep -c veth || true); netshim rules left: $(nft list ruleset | grep -c netshim || true)"
