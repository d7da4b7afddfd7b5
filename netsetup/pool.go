package netsetup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/netshim/netshim/config"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HostPrefixes lists the prefixes of family (unix.AF_INET or AF_INET6)
// in use on the host: its addresses' subnets and its routes (all tables),
// default routes and link-local ones excepted. Links named in ignore (our
// own bridges) do not count.
func HostPrefixes(h *netlink.Handle, family int, ignore ...string) ([]netip.Prefix, error) {
	skip := map[int]bool{}
	for _, name := range ignore {
		if l, err := h.LinkByName(name); err == nil {
			skip[l.Attrs().Index] = true
		}
	}
	var out []netip.Prefix
	add := func(n *net.IPNet) {
		ones, _ := n.Mask.Size()
		ip, ok := netip.AddrFromSlice(n.IP)
		if ip = ip.Unmap(); ok && ones > 0 && !ip.IsLinkLocalUnicast() && !ip.IsLoopback() {
			out = append(out, netip.PrefixFrom(ip, ones).Masked())
		}
	}
	addrs, err := RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, family) })
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if !skip[a.LinkIndex] && a.IPNet != nil {
			add(a.IPNet)
		}
	}
	routes, err := RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	for _, r := range routes {
		if !skip[r.LinkIndex] && r.Dst != nil {
			add(r.Dst)
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
		count := uint64(1) << min(p.Size-p.Base.Bits(), 32)
		for i := uint64(0); i < count; i++ {
			cand := nthSubnet(p.Base, p.Size, i)
			if !slices.ContainsFunc(used, cand.Overlaps) {
				return cand, nil
			}
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: every subnet of default_address_pools overlaps a host address or route", ErrNoFreePool)
}

// nthSubnet is the i-th subnet of prefix length size in base.
func nthSubnet(base netip.Prefix, size int, i uint64) netip.Prefix {
	b := base.Masked().Addr().AsSlice()
	// Add i at bit position size-1 (counted from the left), byte by byte
	// from the right.
	shift := len(b)*8 - size
	for pos := len(b) - 1; pos >= 0 && (i > 0 || shift > 0); pos-- {
		if shift >= 8 {
			shift -= 8
			continue
		}
		v := uint64(b[pos]) + (i << shift)
		b[pos] = byte(v)
		i, shift = v>>8, 0
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, size)
}
