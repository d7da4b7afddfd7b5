// Package cidr holds the few prefix helpers net/netip lacks, for IPv4 and
// IPv6 alike.
package cidr

import "net/netip"

// Last returns the highest address of p: its broadcast address in IPv4.
func Last(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Within reports whether inner lies entirely inside outer.
func Within(inner, outer netip.Prefix) bool {
	return inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}
