package netsetup

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EphemeralRange is the kernel's net.ipv4.ip_local_port_range, where Docker
// takes random host ports from.
func EphemeralRange() (int, int, error) {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, fmt.Errorf("read ip_local_port_range: %w", err)
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("parse ip_local_port_range %q", data)
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("parse ip_local_port_range %q", data)
	}
	return lo, hi, nil
}

// PortInUse reports whether a host process holds proto/port in the calling
// process's netns: a listening TCP socket, or a bound UDP socket, on any
// address (IPv4 or IPv6). It asks the kernel directly by binding the
// wildcard address; /proc/net/tcp would be read in full, which walks the
// whole (machine-wide) socket hash and costs milliseconds.
func PortInUse(proto string, port int) (bool, error) {
	typ := unix.SOCK_STREAM
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		fd, err := unix.Socket(fam, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			if fam == unix.AF_INET6 {
				continue // no IPv6
			}
			return false, fmt.Errorf("probe port %d/%s: %w", port, proto, err)
		}
		if typ == unix.SOCK_STREAM {
			// Connections in TIME_WAIT do not count, only listeners.
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		}
		var sa unix.Sockaddr = &unix.SockaddrInet4{Port: port}
		if fam == unix.AF_INET6 {
			unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
			sa = &unix.SockaddrInet6{Port: port}
		}
		err = unix.Bind(fd, sa)
		unix.Close(fd)
		switch {
		case errors.Is(err, unix.EADDRINUSE):
			return true, nil
		case err != nil && !errors.Is(err, unix.EADDRNOTAVAIL):
			return false, fmt.Errorf("probe port %d/%s: %w", port, proto, err)
		}
	}
	return false, nil
}

// FlushUDPConntrack drops conntrack entries of UDP traffic to a host port,
// so that a datagram flow keeps no stale mapping to a container that is
// gone and the next container on the port gets the traffic.
func FlushUDPConntrack(port int) error {
	f := &netlink.ConntrackFilter{}
	if err := f.AddProtocol(unix.IPPROTO_UDP); err != nil {
		return err
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, uint16(port)); err != nil {
		return err
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
		return fmt.Errorf("flush conntrack of udp port %d: %w", port, err)
	}
	return nil
}
