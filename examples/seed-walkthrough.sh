#!/usr/bin/env bash
# The walkthrough of Docker networking that netshim was specified from,
# replayed with netshim and runc in a throwaway network namespace (made here
# if needed), printing the same views: the bridge and its veth ports, the
# bridge's address, a container's `ip a`, the nat table with its MASQUERADE
# and DNAT rows, -P and -p 80:80 answering, --link in /etc/hosts, DNS on a
# user network, host and none modes, and net0 with 172.100.0.0/16.
# The firewall backend is iptables here so that `iptables -t nat -nvL` reads
# like the walkthrough's.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
sandbox_or_reexec "$@"
CONFIG=$WORK/netshim.toml
printf 'firewall = "iptables"\ndata_dir = "%s"\n' "$WORK/data" >"$CONFIG"
web() { echo "mkdir -p /www && echo 'hello from $1' >/www/index.html && exec httpd -f -p 80 -h /www"; }
fetch() { curl -s --max-time 5 "$@"; }

say "1. Docker 网络启动过程: containers on the default bridge"
make_bundle c1 "sleep 3600"
make_bundle c2 "sleep 3600"
start c1
start c2
say "brctl show"
show_bridge netshim0
say "ifconfig netshim0 (the bridge's address)"
ip addr show netshim0
say "ip a (in container c2: eth0@ifN, 02:42:ac:11:00:03, 172.17.0.3/16)"
rc exec c2 ip a

say "2. 容器访问外部: forwarding and MASQUERADE"
echo "net.ipv4.ip_forward = $(cat /proc/sys/net/ipv4/ip_forward)"
iptables -t nat -nvL POSTROUTING

say "外部访问容器: -P (every exposed port on a random host port)"
make_bundle nginx-P "$(web nginx-P)" --expose 80 -P
start nginx-P
port=$(ns port nginx-P | sed -n 's|^80/tcp -> 0.0.0.0:||p')
ns port nginx-P
iptables -t nat -nvL
wait_http "http://127.0.0.1:$port/"
echo "GET 127.0.0.1:$port -> $(fetch "http://127.0.0.1:$port/")"

say "-p 80:80"
make_bundle nginx-80 "$(web nginx-80)" -p 80:80
start nginx-80
iptables -t nat -nvL NETSHIM
wait_http http://127.0.0.1:80/
echo "GET 127.0.0.1:80 -> $(fetch http://127.0.0.1:80/)"
ns ps

say "容器间互相访问: --link (the WordPress shape)"
make_bundle db_wordpress "sleep 3600" -p 3306:3306
start db_wordpress
make_bundle wordpress "sleep 3600" --link db_wordpress
start wordpress
echo "wordpress's /etc/hosts:"
rc exec wordpress cat /etc/hosts
rc exec wordpress ping -c 1 db_wordpress

say "自定义网桥: DNS between containers on a user network"
ns network create wp-net
make_bundle wp-db "sleep 3600" --network wp-net
make_bundle wp-web "sleep 3600" --network wp-net
start wp-db
start wp-web
ns network ls
rc exec wp-web cat /etc/resolv.conf
rc exec wp-web nslookup wp-db
rc exec wp-web ping -c 1 wp-db

say "host mode: the host's interfaces"
make_bundle hostnet "sleep 3600" --network host
start hostnet
rc exec hostnet ip -o link | cut -d' ' -f2

say "none mode: only lo"
make_bundle nonet "sleep 3600" --network none
start nonet
rc exec nonet ip a

say "net0: a network with 172.100.0.0/16"
ns network create -d bridge --subnet 172.100.0.0/16 net0
make_bundle n0 "sleep 3600" --network net0
start n0
ns network inspect net0 | grep -E '"(Subnet|Gateway|Bridge)"'
ip -o -4 addr show | grep 172.100.0.1
rc exec n0 ip -4 addr show eth0
echo "net0 cannot reach wp-net: $(rc exec n0 ping -c 1 -W 1 "$(ns inspect wp-db | sed -n 's/.*"IPAddress": "\(.*\)".*/\1/p')" >/dev/null 2>&1 && echo reachable || echo isolated)"

say "teardown: every container stopped, nothing left"
for id in "${CONTAINERS[@]}"; do stop "$id"; done
CONTAINERS=()
ns network rm wp-net net0
sleep 0.2
ns ps
echo "veths left: $(ip -o link | grep -c veth || true); netshim rules left: $(iptables-save | grep -ci netshim || true)"
