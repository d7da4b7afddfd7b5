# Shared by examples/demo.sh and examples/seed-walkthrough.sh: a throwaway
# sandbox, busybox bundles for runc, and short names for netshim and runc.
# Source it; it sets NETSHIM, WORK, STATE and the functions below.

NETSHIM=${NETSHIM_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bin/netshim}

# sandbox_or_reexec re-runs the calling script inside a new network and mount
# namespace unless it is in one already: nothing touches the machine's own.
sandbox_or_reexec() {
	if [ "$(readlink /proc/self/ns/net)" = "$(readlink /proc/1/ns/net)" ]; then
		exec unshare --net --mount --propagation private -- "$0" "$@"
	fi
	mount -t tmpfs tmpfs /run # private: runc and netshim state, ip netns
	ip link set lo up
	WORK=$(mktemp -d /tmp/netshim-example.XXXXXX)
	STATE=$WORK/state
	trap 'cleanup_all' EXIT
}

ns() { "$NETSHIM" --config "${CONFIG:-/dev/null}" --state-dir "$STATE" "$@"; }
rc() { runc --root "$WORK/runc" "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

CONTAINERS=()
cleanup_all() {
	for id in "${CONTAINERS[@]}"; do rc delete -f "$id" >/dev/null 2>&1 || true; done
	rm -rf "$WORK"
}

# make_bundle ID ARGS -- netshim-bundle-flags...: a busybox bundle running
# ARGS (a shell command), set up by `netshim bundle`.
make_bundle() {
	local id=$1 cmd=$2
	shift 2
	local b=$WORK/$id
	mkdir -p "$b/rootfs/bin"
	cp "$(command -v busybox)" "$b/rootfs/bin/busybox"
	for applet in $(busybox --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$b/rootfs/bin/$applet"
	done
	printf '%s\n' "$cmd" >"$b/rootfs/entry.sh"
	(cd "$b" && runc spec)
	# Detached, no terminal, the entry script instead of sh.
	sed -i -e 's/"terminal": true/"terminal": false/' -e 's/"readonly": true/"readonly": false/' \
		-e 's|^\(\s*\)"sh"$|\1"sh", "/entry.sh"|' \
		-e "s/\"hostname\": \"runc\"/\"hostname\": \"$id\"/" "$b/config.json"
	ns bundle "$b" --name "$id" --cap-add NET_RAW "$@"
}

# start ID: runc run -d, netshim runs as its createRuntime hook.
start() {
	rc run -d --bundle "$WORK/$1" "$1" </dev/null >"$WORK/$1.log" 2>&1 || { cat "$WORK/$1.log"; return 1; }
	CONTAINERS+=("$1")
}

# stop ID: kill and delete, netshim runs as its poststop hook.
stop() {
	rc kill "$1" KILL 2>/dev/null || true
	for _ in $(seq 50); do rc state "$1" 2>/dev/null | grep -q '"running"' || break; sleep 0.02; done
	rc delete -f "$1"
}

# make_host_bundle ID CMD -- netshim-bundle-flags...: like make_bundle, but
# the container runs the host's own programs: its rootfs bind-mounts the
# host's /usr (and /bin, /sbin, /lib, /lib64 where they are not symlinks
# into it) read-only.
make_host_bundle() {
	local id=$1 cmd=$2
	shift 2
	local b=$WORK/$id mounts=""
	mkdir -p "$b/rootfs"/{usr,proc,dev,sys,tmp,etc,run,srv}
	for d in bin sbin lib lib64; do
		if [ -L "/$d" ]; then
			ln -sfn "$(readlink "/$d")" "$b/rootfs/$d"
		elif [ -d "/$d" ]; then
			mkdir -p "$b/rootfs/$d"
			mounts="$mounts{\"destination\": \"/$d\", \"type\": \"bind\", \"source\": \"/$d\", \"options\": [\"rbind\", \"ro\"]},"
		fi
	done
	mounts="$mounts{\"destination\": \"/usr\", \"type\": \"bind\", \"source\": \"/usr\", \"options\": [\"rbind\", \"ro\"]},"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$b/rootfs/etc/passwd"
	printf '%s\n' "$cmd" >"$b/rootfs/entry.sh"
	(cd "$b" && runc spec)
	sed -i -e 's/"terminal": true/"terminal": false/' -e 's/"readonly": true/"readonly": false/' \
		-e 's|^\(\s*\)"sh"$|\1"/bin/sh", "/entry.sh"|' \
		-e "s|\"mounts\": \[|\"mounts\": [$mounts|" \
		-e "s/\"hostname\": \"runc\"/\"hostname\": \"$id\"/" "$b/config.json"
	ns bundle "$b" --name "$id" "$@"
}

# show_bridge BRIDGE: what `brctl show` prints for it.
show_bridge() {
	local stp
	stp=$(ip -d link show "$1" | grep -o 'stp_state [0-9]' | cut -d' ' -f2)
	printf '%-12s %-14s %s\n' "bridge name" "STP enabled" "interfaces"
	printf '%-12s %-14s %s\n' "$1" "$([ "$stp" = 0 ] && echo no || echo yes)" \
		"$(ip -o link show master "$1" | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\n' ' ')"
}

# wait_http URL: until an HTTP server answers there (at most 5 s).
wait_http() {
	for _ in $(seq 100); do
		curl -s --max-time 1 -o /dev/null "$1" && return 0
		sleep 0.05
	done
	echo "no answer from $1" >&2
	return 1
}
