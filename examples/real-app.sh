#!/usr/bin/env bash
# Real applications on netshim: containers that run the host's own programs
# (their rootfs bind-mounts the host's /usr read-only) under runc, in a
# throwaway network namespace. A Redis server is reached by name from a
# client container on a user network, and an HTTP server (python3) is
# published with -p 8080:8000.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
for prog in redis-server redis-cli python3 curl; do
	if ! command -v "$prog" >/dev/null; then
		echo "SKIP: $prog is not installed (apt-get install redis-server redis-tools python3 curl)"
		exit 0
	fi
done
sandbox_or_reexec "$@"
CONFIG=$WORK/netshim.toml
printf 'data_dir = "%s"\n' "$WORK/data" >"$CONFIG"

say "a user network, a Redis server on it, and a client that finds it by name"
ns network create app-net
make_host_bundle cache "exec redis-server --port 6379 --save '' --appendonly no --protected-mode no" --network app-net
make_host_bundle client "exec sleep 3600" --network app-net
start cache
start client
for _ in $(seq 100); do rc exec client redis-cli -h cache ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
echo "redis-cli -h cache ping -> $(rc exec client redis-cli -h cache ping)"
rc exec client redis-cli -h cache set greeting "hello from redis" >/dev/null
echo "redis-cli -h cache get greeting -> $(rc exec client redis-cli -h cache get greeting)"

say "an HTTP server published with -p 8080:8000"
make_host_bundle www "echo 'hello from python' >/srv/index.html && cd /srv && exec python3 -m http.server 8000" -p 8080:8000
start www
wait_http http://127.0.0.1:8080/
echo "GET 127.0.0.1:8080 -> $(curl -s --max-time 5 http://127.0.0.1:8080/)"
ns ps

say "teardown"
for id in "${CONTAINERS[@]}"; do stop "$id"; done
CONTAINERS=()
ns network rm app-net
ns ps
