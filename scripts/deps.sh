#!/usr/bin/env bash
# Installs the system packages netshim's demo and tests need, only those
# missing, with apt-get (Debian 12). Run as root.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
check() { # check COMMAND PACKAGE
	have "$1" || need+=("$2")
}
check runc runc
check busybox busybox-static
check nft nftables
check iptables iptables
check ip iproute2
check ping iputils-ping
check unshare util-linux
check conntrack conntrack
check curl curl
check crun crun
check podman podman
check python3 python3
check redis-server redis-server
check redis-cli redis-tools
check gcc gcc
check musl-gcc musl-tools
check xz xz-utils
check prlimit util-linux
check nsenter util-linux
check bridge iproute2
# The overlay tests start an etcd server of their own.
check etcd etcd-server
check etcdctl etcd-client
for extra in "$@"; do
	cmd=${extra%%:*} pkg=${extra#*:}
	check "$cmd" "$pkg"
done

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "netshim: missing packages ${need[*]}; run as root so apt-get can install them" >&2
		exit 1
	fi
	echo "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	if [[ " ${need[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
		# The package starts a host etcd; the tests need none.
		systemctl disable --now etcd.service >/dev/null 2>&1 || true
		echo "netshim: etcd-server installed for the tests; its etcd.service is disabled"
	fi
fi

if ! have go; then
	if [ -x /usr/local/go/bin/go ]; then
		echo "go is at /usr/local/go/bin but not on PATH: export PATH=/usr/local/go/bin:\$PATH" >&2
	else
		echo "netshim: Go 1.26 or newer is needed to build (https://go.dev/dl); Debian 12's golang-go is too old" >&2
	fi
	exit 1
fi
