package netsetup

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/internal/ipv4"
)

// ContainerIfName is the container end of the veth pair, as in Docker.
const ContainerIfName = "eth0"

// MACFor is Docker's MAC for an IPv4 address: 02:42 and the four bytes.
func MACFor(ip netip.Addr) net.HardwareAddr {
	b := ip.As4()
	return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}
}

// RandomVethName returns `veth` and 7 random hex digits, as Docker names the
// host end.
func RandomVethName() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand: " + err.Error())
	}
	return "veth" + hex.EncodeToString(b[:])[:7]
}

func ipnet(p netip.Prefix, a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}

// BridgeSpec describes a bridge device to ensure.
type BridgeSpec struct {
	Name    string
	Subnet  netip.Prefix
	Gateway netip.Addr
	MTU     int
}

// BridgeError says the name is taken by something that is not our bridge.
type BridgeError struct {
	Name   string
	Reason string
}

func (e *BridgeError) Error() string { return fmt.Sprintf("bridge %s: %s", e.Name, e.Reason) }

// EnsureBridge makes the bridge exist, with STP off, the gateway address,
// the MTU, and up. It is idempotent: an existing bridge is checked and
// completed, an existing device of another type is refused. created reports
// whether this call made the device.
func EnsureBridge(h *netlink.Handle, s BridgeSpec) (link netlink.Link, created bool, err error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{
		Name:   s.Name,
		MTU:    s.MTU,
		TxQLen: -1,
		Flags:  net.FlagUp,
		// A fixed MAC keeps the bridge's address from following its lowest
		// port, which would make neighbours' ARP caches stale.
		HardwareAddr: MACFor(s.Gateway),
	}}
	switch err := h.LinkAdd(br); {
	case err == nil:
		created = true
	case errors.Is(err, unix.EEXIST):
	default:
		return nil, false, fmt.Errorf("create bridge %s: %w", s.Name, err)
	}
	link, err = h.LinkByName(s.Name)
	if err != nil {
		return nil, created, fmt.Errorf("find bridge %s: %w", s.Name, err)
	}
	if link.Type() != "bridge" {
		return nil, false, &BridgeError{Name: s.Name, Reason: fmt.Sprintf("a %s device of that name exists", link.Type())}
	}
	addr := &netlink.Addr{IPNet: ipnet(s.Subnet, s.Gateway)}
	if err := h.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, created, fmt.Errorf("add address %s to bridge %s: %w", s.Gateway, s.Name, err)
	}
	if !created {
		attrs := link.Attrs()
		if attrs.MTU != s.MTU {
			if err := h.LinkSetMTU(link, s.MTU); err != nil {
				return nil, false, fmt.Errorf("set mtu of bridge %s: %w", s.Name, err)
			}
		}
		if attrs.Flags&net.FlagUp == 0 {
			if err := h.LinkSetUp(link); err != nil {
				return nil, false, fmt.Errorf("set bridge %s up: %w", s.Name, err)
			}
		}
	}
	return link, created, nil
}

// VethSpec describes a container's veth pair.
type VethSpec struct {
	HostName    string
	BridgeIndex int
	MTU         int
	// Netns is the container's network namespace; the container end is
	// created straight in it, so it never appears on the host.
	Netns   netns.NsHandle
	MAC     net.HardwareAddr
	Subnet  netip.Prefix
	IP      netip.Addr
	Gateway netip.Addr // default route; invalid for none
	// Alias marks the host end as ours (IFLA_IFALIAS).
	Alias string
	// Hairpin lets a frame leave by the bridge port it came in on: with
	// br_netfilter, a container reaching its own published port through a
	// host address is DNATed in the bridge path and sent back to itself.
	Hairpin bool
	// Isolated makes the host end an isolated bridge port: it cannot talk
	// to other isolated ports, only to the bridge (icc = false, without
	// firewall rules or br_netfilter).
	Isolated bool
}

// CreateVeth creates the pair: the host end (down) on the bridge, the
// container end as eth0 in the container's netns with the MAC, and returns
// the host end. It returns EEXIST (wrapped) when the host name is taken, so
// the caller can pick another.
func CreateVeth(h *netlink.Handle, s VethSpec) (netlink.Link, error) {
	// The host end is created down, and comes up in FinishHostVeth once
	// it has no IPv6 address generation: the pair's carrier, and with it
	// address generation, needs both ends up.
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:        s.HostName,
			MTU:         s.MTU,
			TxQLen:      -1,
			MasterIndex: s.BridgeIndex,
		},
		PeerName:         ContainerIfName,
		PeerHardwareAddr: s.MAC,
		PeerNamespace:    netlink.NsFd(s.Netns),
		PeerTxQLen:       -1,
	}
	// LinkAdd creates the pair, then looks up its index and attaches it to
	// the bridge: if that last step fails, the pair exists, nameless to
	// teardown and gc (no alias yet), so it is removed here.
	if err := h.LinkAdd(veth); err != nil {
		if !errors.Is(err, unix.EEXIST) && veth.Index > 0 {
			h.LinkDel(veth)
		}
		return nil, fmt.Errorf("create veth %s: %w", s.HostName, err)
	}
	if veth.Index == 0 {
		return nil, fmt.Errorf("create veth %s: no index", s.HostName)
	}
	return veth, nil
}

// FinishHostVeth configures the host end of a new pair and brings it up:
// it can run while the container end is configured.
func FinishHostVeth(h *netlink.Handle, link netlink.Link, s VethSpec) error {
	// A bridge port needs no IPv6 address; 1,000 of them would be 1,000
	// link-local routes that the host's IPv6 route walks go through.
	if err := noIPv6LinkLocal(h, link); err != nil {
		return err
	}
	// The kernel ignores IFLA_IFALIAS when creating a link: set it after.
	if s.Alias != "" {
		if err := h.LinkSetAlias(link, s.Alias); err != nil {
			return fmt.Errorf("mark veth %s: %w", s.HostName, err)
		}
	}
	if s.Hairpin {
		if err := h.LinkSetHairpin(link, true); err != nil {
			return fmt.Errorf("set hairpin on bridge port %s: %w", s.HostName, err)
		}
	}
	if s.Isolated {
		if err := h.LinkSetIsolated(link, true); err != nil {
			return fmt.Errorf("isolate bridge port %s: %w", s.HostName, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set veth %s up: %w", s.HostName, err)
	}
	return nil
}

// SetUpContainer configures the container's side from inside its netns,
// on one thread switched in once (see ConfigureContainer).
func SetUpContainer(ns netns.NsHandle, s *VethSpec) error {
	return Do(ns, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink in container netns: %w", err)
		}
		defer h.Close()
		return ConfigureContainer(h, s)
	})
}

// noIPv6LinkLocal stops the kernel from giving link an IPv6 link-local
// address. A kernel without IPv6 has nothing to stop.
func noIPv6LinkLocal(h *netlink.Handle, link netlink.Link) error {
	const in6AddrGenModeNone = 1 // IN6_ADDR_GEN_MODE_NONE, linux/if_link.h
	err := h.LinkSetIP6AddrGenMode(link, in6AddrGenModeNone)
	if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) && !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("set IPv6 address generation of %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// ConfigureContainer runs in the container's netns (through ch): lo up, and
// for a veth spec, eth0's address, up, and the default route.
func ConfigureContainer(ch *netlink.Handle, s *VethSpec) error {
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}} // lo is always ifindex 1
	if err := ch.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in container: %w", err)
	}
	if s == nil {
		return nil
	}
	eth, err := ch.LinkByName(ContainerIfName)
	if err != nil {
		return fmt.Errorf("find %s in container: %w", ContainerIfName, err)
	}
	addr := &netlink.Addr{IPNet: ipnet(s.Subnet, s.IP), Broadcast: net.IP(ipv4.Last(s.Subnet).AsSlice())}
	if err := ch.AddrAdd(eth, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s to %s in container: %w", s.IP, ContainerIfName, err)
	}
	// No IPv6 link-local address (set before the link comes up): the
	// network has no IPv6, and each new eth0's duplicate address detection
	// and MLD reports would be flooded by the bridge to every other
	// container, a cost that grows with their number.
	if err := noIPv6LinkLocal(ch, eth); err != nil {
		return err
	}
	if err := ch.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set %s up in container: %w", ContainerIfName, err)
	}
	if s.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(s.Gateway.AsSlice())}
		if err := ch.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add default route via %s in container: %w", s.Gateway, err)
		}
	}
	return nil
}

// LookupLink finds a link by name; ok is false when there is none.
func LookupLink(h *netlink.Handle, name string) (link netlink.Link, ok bool, err error) {
	link, err = h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("find link %s: %w", name, err)
	}
	return link, true, nil
}

// DeleteLink removes a host link by name; a link that is already gone is
// not an error (the kernel removes a veth when its container netns dies).
func DeleteLink(h *netlink.Handle, name string) error {
	link, ok, err := LookupLink(h, name)
	if err != nil || !ok {
		return err
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// NetnsGone reports whether no live network namespace has the netns id nsid
// (as seen from the calling process's namespace). The kernel resolves an id
// only while its namespace is alive, so a container netns being destroyed
// answers ENOENT: the kernel then removes the container's veth pair itself,
// and deleting it here would only wait for an RCU grace period. If the id
// was reused by another namespace the answer is "alive", which only sends
// the caller down the slower, exact path.
func NetnsGone(nsid int) bool {
	if nsid < 0 || nsid > 1<<31-1 {
		return false
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETNSID, unix.NLM_F_REQUEST)
	req.AddData(nl.NewRtGenMsg())
	req.AddData(nl.NewRtAttr(unix.NETNSA_NSID, nl.Uint32Attr(uint32(nsid))))
	_, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNSID)
	return errors.Is(err, unix.ENOENT)
}

// PeerNetnsDying reports whether the namespace at the other end of a veth
// is being destroyed: it has no netns id any more, or its id resolves to
// nothing.
func PeerNetnsDying(link netlink.Link) bool {
	id := link.Attrs().NetNsID
	if id == -1 {
		return false // no peer in another namespace
	}
	if uint32(id) == 0xFFFFFFFF { // NETNSA_NSID_NOT_ASSIGNED: unhashed, dying
		return true
	}
	return NetnsGone(id)
}
