package netsetup

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/netshim/netshim/config"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HostPrefixes lists the IPv4 prefixes in use on the host: its addresses'
// subnets and its routes (all tables), default routes excepted. Links named
// in ignore (our own bridges) do not count.
func HostPrefixes(h *netlink.Handle, ignore ...string) ([]netip.Prefix, error) {
	skip := map[int]bool{}
	for _, name := range ignore {
		if l, err := h.LinkByName(name); err == nil {
			skip[l.Attrs().Index] = true
		}
	}
	var out []netip.Prefix
	addrs, err := RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, unix.AF_INET) })
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if skip[a.LinkIndex] || a.IPNet == nil {
			continue
		}
		ones, _ := a.Mask.Size()
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if ok {
			out = append(out, netip.PrefixFrom(ip, ones).Masked())
		}
	}
	routes, err := RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	for _, r := range routes {
		if skip[r.LinkIndex] || r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		ip, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if ok && ones > 0 {
			out = append(out, netip.PrefixFrom(ip, ones).Masked())
		}
	}
	return out, nil
}

// RetryDump repeats a netlink dump interrupted by a concurrent change, which
// would otherwise return a partial list.
func RetryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for i := 0; i < 10; i++ {
		var out []T
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}

// ErrNoFreePool is returned when every pool subnet collides.
var ErrNoFreePool = errors.New("no free address pool")

// ChoosePool returns the first subnet of the pools, in order, that overlaps
// none of used.
func ChoosePool(pools []config.Pool, used []netip.Prefix) (netip.Prefix, error) {
	for _, p := range pools {
		step := uint32(1) << (32 - p.Size)
		base := p.Base.Masked().Addr().As4()
		start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		count := uint32(1) << (p.Size - p.Base.Bits())
		for i := uint32(0); i < count; i++ {
			v := start + i*step
			cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), p.Size)
			free := true
			for _, u := range used {
				if u.Overlaps(cand) {
					free = false
					break
				}
			}
			if free {
				return cand, nil
			}
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: every subnet of default_address_pools overlaps a host address or route", ErrNoFreePool)
}
