package engine

import (
	"fmt"
	"net"
	"strings"
)

// DNSName reports whether name can be a name in a network's DNS: labels of
// 1 to 63 bytes, 253 bytes in all.
func DNSName(name string) error {
	if len(strings.TrimSuffix(name, ".")) > 253 {
		return fmt.Errorf("%d characters: DNS names hold at most 253", len(name))
	}
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if len(l) == 0 || len(l) > 63 {
			return fmt.Errorf("label %q: DNS labels hold 1 to 63 characters", l)
		}
	}
	return nil
}

func parseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("MAC address %q in the record: %w", s, err)
	}
	return mac, nil
}
