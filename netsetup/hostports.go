package netsetup

import (
	"bufio"
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

// ListeningPorts returns the ports host processes listen on (TCP) or are
// bound to (UDP) in the calling process's netns, IPv4 and IPv6.
func ListeningPorts(proto string) (map[int]bool, error) {
	out := map[int]bool{}
	for _, suffix := range []string{"", "6"} {
		path := "/proc/net/" + proto + suffix
		f, err := os.Open(path)
		if err != nil {
			if os.IsNotExist(err) {
				continue // no IPv6
			}
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 {
				continue
			}
			// TCP: only listeners (state 0A); UDP: every bound socket.
			if proto == "tcp" && fields[3] != "0A" {
				continue
			}
			_, portHex, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			if port, err := strconv.ParseUint(portHex, 16, 16); err == nil && port != 0 {
				out[int(port)] = true
			}
		}
		f.Close()
	}
	return out, nil
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
