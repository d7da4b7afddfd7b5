package netsetup

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// VXLANPort is the IANA VXLAN port.
const VXLANPort = 4789

// VXLANOverhead is what VXLAN over IPv4 adds to a frame (outer IPv4, UDP,
// VXLAN and inner Ethernet headers): an overlay's MTU is the underlay's
// minus this.
const VXLANOverhead = 50

// Underlay is the host interface overlay traffic leaves by.
type Underlay struct {
	Name  string
	Index int
	Addr  netip.Addr
	MTU   int
}

// FindUnderlay returns the interface named name, or without a name the
// one of the IPv4 default route, with its first IPv4 address.
func FindUnderlay(h *netlink.Handle, name string) (Underlay, error) {
	var link netlink.Link
	var err error
	if name != "" {
		if link, err = h.LinkByName(name); err != nil {
			return Underlay{}, fmt.Errorf("underlay interface %s: %w", name, err)
		}
	} else {
		routes, err := RetryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return Underlay{}, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.LinkIndex > 0 {
				if link, err = h.LinkByIndex(r.LinkIndex); err != nil {
					return Underlay{}, fmt.Errorf("default route's interface: %w", err)
				}
				break
			}
		}
		if link == nil {
			return Underlay{}, errors.New("underlay interface: no IPv4 default route (set [cluster] underlay_interface)")
		}
	}
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil {
		return Underlay{}, fmt.Errorf("addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && a.Scope == unix.RT_SCOPE_UNIVERSE {
			return Underlay{Name: link.Attrs().Name, Index: link.Attrs().Index, Addr: ip, MTU: link.Attrs().MTU}, nil
		}
	}
	return Underlay{}, fmt.Errorf("underlay interface %s has no IPv4 address", link.Attrs().Name)
}

// VTEPMAC is a host's VXLAN device MAC on an overlay network: derived from
// its underlay address and the network's VNI, locally administered, so a
// re-created device keeps the MAC its peers know.
func VTEPMAC(underlay netip.Addr, vni uint32) net.HardwareAddr {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d", underlay, vni))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&0xfe | 0x02
	return mac
}

// VXLANSpec describes an overlay network's VXLAN device on one host.
type VXLANSpec struct {
	Name     string
	VNI      uint32
	MAC      net.HardwareAddr
	Underlay Underlay
	MTU      int
}

// EnsureVXLAN makes the VXLAN device exist, with learning off (peers are
// written, never learned), and up. An existing device is checked.
func EnsureVXLAN(h *netlink.Handle, s VXLANSpec) (netlink.Link, error) {
	vx := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: s.Name, MTU: s.MTU, HardwareAddr: s.MAC, Flags: net.FlagUp},
		VxlanId:   int(s.VNI), VtepDevIndex: s.Underlay.Index, SrcAddr: net.IP(s.Underlay.Addr.AsSlice()),
		Port: VXLANPort, Learning: false,
	}
	if err := h.LinkAdd(vx); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create vxlan %s: %w", s.Name, err)
	}
	link, err := h.LinkByName(s.Name)
	if err != nil {
		return nil, fmt.Errorf("find vxlan %s: %w", s.Name, err)
	}
	got, ok := link.(*netlink.Vxlan)
	if !ok || got.VxlanId != int(s.VNI) || got.Port != VXLANPort || !got.SrcAddr.Equal(vx.SrcAddr) {
		return nil, &BridgeError{Name: s.Name, Reason: fmt.Sprintf("a %s device of that name exists, not VNI %d from %s", link.Type(), s.VNI, s.Underlay.Addr)}
	}
	if link.Attrs().HardwareAddr.String() != s.MAC.String() {
		if err := h.LinkSetHardwareAddr(link, s.MAC); err != nil {
			return nil, fmt.Errorf("set mac of vxlan %s: %w", s.Name, err)
		}
	}
	return link, mtuAndUp(h, link, s.MTU, "vxlan")
}

// Peer is another host of an overlay network, as this host's VXLAN device
// reaches it: frames for its VTEP MAC go to its underlay address, its
// gateway's address resolves to that MAC, its subnet is routed through
// its gateway.
type Peer struct {
	Underlay netip.Addr
	MAC      net.HardwareAddr
	Subnet   netip.Prefix
}

// Gateway is the peer's bridge address: the first of its subnet.
func (p Peer) Gateway() netip.Addr { return p.Subnet.Masked().Addr().Next() }

// SyncPeers makes the VXLAN device's FDB entries, neighbours and routes
// exactly those of peers: what is missing is added, what names no peer is
// removed.
func SyncPeers(h *netlink.Handle, vx netlink.Link, peers []Peer) error {
	idx := vx.Attrs().Index
	wantFDB, wantNeigh, wantRoute := map[string]netip.Addr{}, map[netip.Addr]string{}, map[netip.Prefix]netip.Addr{}
	for _, p := range peers {
		wantFDB[p.MAC.String()] = p.Underlay
		wantNeigh[p.Gateway()] = p.MAC.String()
		wantRoute[p.Subnet.Masked()] = p.Gateway()
	}
	// Removals first: a peer whose subnet moved to another host must not
	// keep its route through the old one.
	routes, err := RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(unix.AF_INET, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF)
	})
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", vx.Attrs().Name, err)
	}
	for _, r := range routes {
		dst, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		ones, _ := r.Dst.Mask.Size()
		gw, _ := netip.AddrFromSlice(r.Gw.To4())
		if want, ok := wantRoute[netip.PrefixFrom(dst, ones)]; ok && want == gw {
			delete(wantRoute, netip.PrefixFrom(dst, ones))
			continue
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("remove route %s from %s: %w", r.Dst, vx.Attrs().Name, err)
		}
	}
	neighs, err := RetryDump(func() ([]netlink.Neigh, error) { return h.NeighList(idx, unix.AF_INET) })
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", vx.Attrs().Name, err)
	}
	for _, n := range neighs {
		ip, _ := netip.AddrFromSlice(n.IP.To4())
		if wantNeigh[ip] == n.HardwareAddr.String() && n.State == netlink.NUD_PERMANENT {
			continue
		}
		if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove neighbour %s from %s: %w", ip, vx.Attrs().Name, err)
		}
	}
	fdb, err := RetryDump(func() ([]netlink.Neigh, error) { return h.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return fmt.Errorf("list fdb of %s: %w", vx.Attrs().Name, err)
	}
	for _, n := range fdb {
		dst, _ := netip.AddrFromSlice(n.IP.To4())
		if wantFDB[n.HardwareAddr.String()] == dst {
			continue
		}
		if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove fdb entry %s from %s: %w", n.HardwareAddr, vx.Attrs().Name, err)
		}
	}
	for _, p := range peers {
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: netlink.NUD_PERMANENT, HardwareAddr: p.MAC, IP: net.IP(p.Underlay.AsSlice())}); err != nil {
			return fmt.Errorf("fdb entry %s -> %s on %s: %w", p.MAC, p.Underlay, vx.Attrs().Name, err)
		}
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			HardwareAddr: p.MAC, IP: net.IP(p.Gateway().AsSlice())}); err != nil {
			return fmt.Errorf("neighbour %s on %s: %w", p.Gateway(), vx.Attrs().Name, err)
		}
	}
	for dst, gw := range wantRoute {
		r := &netlink.Route{LinkIndex: idx, Dst: ipnet(dst), Gw: net.IP(gw.AsSlice()), Flags: int(netlink.FLAG_ONLINK)}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s via %s on %s: %w", dst, gw, vx.Attrs().Name, err)
		}
	}
	return nil
}
