package netsetup

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/internal/cidr"
)

// ContainerIfName is the container end of the veth pair of its n-th
// network, as in Docker: eth0, eth1, …
func ContainerIfName(n int) string { return fmt.Sprintf("eth%d", n) }

// MACFor is Docker's MAC for an IPv4 address: 02:42 and the four bytes.
func MACFor(ip netip.Addr) net.HardwareAddr {
	b := ip.As4()
	return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}
}

// RandomVethName returns `veth` and 7 random hex digits, as Docker names the
// host end. A name found taken is replaced (EEXIST).
func RandomVethName() string {
	return fmt.Sprintf("veth%07x", rand.Uint32()>>4)
}

func ipnet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

// BridgeSpec describes a bridge device to ensure.
type BridgeSpec struct {
	Name    string
	Subnet  netip.Prefix
	Gateway netip.Addr
	// Subnet6 and Gateway6 are the IPv6 ones of a dual-stack network.
	Subnet6  netip.Prefix
	Gateway6 netip.Addr
	MTU      int
}

// BridgeError says the name is taken by something that is not our bridge.
type BridgeError struct {
	Name   string
	Reason string
}

func (e *BridgeError) Error() string { return fmt.Sprintf("bridge %s: %s", e.Name, e.Reason) }

// EnsureBridge makes the bridge exist, with STP off, the gateway address,
// the MTU, multicast snooping off, and up. It is idempotent: an existing
// bridge is checked and completed, an existing device of another type is
// refused.
func EnsureBridge(h *netlink.Handle, s BridgeSpec) (netlink.Link, error) {
	snooping := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{
		Name:  s.Name,
		MTU:   s.MTU,
		Flags: net.FlagUp,
		// A fixed MAC keeps the bridge's address from following its lowest
		// port, which would make neighbours' ARP caches stale.
		HardwareAddr: MACFor(s.Gateway),
	},
		// Without multicast snooping the bridge floods multicast to every
		// port, as a plain switch does; with it, every port that comes and
		// goes re-arms query timers on every port, and without a querier
		// on the network snooping loses groups after a few minutes anyway.
		MulticastSnooping: &snooping,
	}
	created := false
	switch err := h.LinkAdd(br); {
	case err == nil:
		created = true
	case errors.Is(err, unix.EEXIST):
	default:
		return nil, fmt.Errorf("create bridge %s: %w", s.Name, err)
	}
	link, err := h.LinkByName(s.Name)
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", s.Name, err)
	}
	b, ok := link.(*netlink.Bridge)
	if !ok {
		return nil, &BridgeError{Name: s.Name, Reason: fmt.Sprintf("a %s device of that name exists", link.Type())}
	}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(s.Gateway, s.Subnet.Bits()))}); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add address %s to bridge %s: %w", s.Gateway, s.Name, err)
	}
	if s.Gateway6.IsValid() {
		// IPv6 on for the bridge, whatever the host's default, and no
		// duplicate address detection for its link-local address: the
		// bridge has no carrier until its first container's veth joins,
		// and while that address is tentative the host does not resolve
		// the containers' addresses, so what is forwarded to them waits
		// a second. The address comes from the bridge's own MAC.
		for _, key := range []string{"accept_dad", "disable_ipv6"} {
			if err := EnsureIfSysctl("ipv6", s.Name, key, "0"); err != nil {
				return nil, fmt.Errorf("bridge %s: %w", s.Name, err)
			}
		}
		// Without DAD: the address is ours alone, and usable at once.
		a := &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(s.Gateway6, s.Subnet6.Bits())), Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(link, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("add address %s to bridge %s: %w", s.Gateway6, s.Name, err)
		}
	}
	if created {
		return link, nil
	}
	if b.MulticastSnooping == nil || *b.MulticastSnooping {
		if err := mcastSnoopingOff(link); err != nil {
			return nil, fmt.Errorf("turn off multicast snooping on bridge %s: %w", s.Name, err)
		}
	}
	return link, mtuAndUp(h, link, s.MTU, "bridge")
}

// mtuAndUp gives an existing device of ours (kind: bridge, vxlan) the MTU
// it should have, and sets it up.
func mtuAndUp(h *netlink.Handle, link netlink.Link, mtu int, kind string) error {
	if link.Attrs().MTU != mtu {
		if err := h.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set mtu of %s %s: %w", kind, link.Attrs().Name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s %s up: %w", kind, link.Attrs().Name, err)
		}
	}
	return nil
}

// mcastSnoopingOff turns multicast snooping off on an existing bridge,
// changing nothing else (vishvananda's BridgeSetMcastSnoop sends back every
// attribute of the link, which the kernel refuses for a running bridge).
func mcastSnoopingOff(br netlink.Link) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(br.Attrs().Index)
	req.AddData(msg)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.IFLA_BR_MCAST_SNOOPING, []byte{0})
	req.AddData(info)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// PairSpec is a container's veth pair.
type PairSpec struct {
	// HostName names the host end, PeerName the container end (eth0);
	// Alias marks the host end as ours (IFLA_IFALIAS).
	HostName string
	PeerName string
	Alias    string
	// Bridge is the bridge's ifindex.
	Bridge int
	MTU    int
	// MAC is the container end's.
	MAC net.HardwareAddr
	// Isolated makes the host end an isolated bridge port: it reaches the
	// bridge only, not other isolated ports (icc = false).
	Isolated bool
}

// CreatePair makes the pair: the container end as eth0 straight in the
// container's netns ns, down; the host end on its bridge and up, then
// marked as ours and made a hairpin port (so a container reaches its own
// published port through a host address when bridged traffic goes through
// the firewall), isolated with s.Isolated, with IPv6 address generation
// off (a bridge port needs no address of its own; without one its
// duplicate address detection and MLD reports are not flooded to every
// other container). Nothing passes the port before that: the container
// end is down. It returns an error wrapping EEXIST when the host name is
// taken. On failure nothing of the pair is left.
//
// Two requests: the kernel takes an alias and a port's flags only for a
// link that exists, on its bridge.
func CreatePair(ns netns.NsHandle, s PairSpec) error {
	create := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	up := nl.NewIfInfomsg(unix.AF_UNSPEC)
	up.Flags, up.Change = unix.IFF_UP, unix.IFF_UP
	create.AddData(up)
	for _, a := range vethAttrs(s.HostName, s.MTU) {
		create.AddData(a)
	}
	create.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(s.Bridge))))
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	peer := info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.VETH_INFO_PEER, nil)
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	for _, a := range vethAttrs(s.PeerName, s.MTU) {
		peer.AddChild(a)
	}
	peer.AddRtAttr(unix.IFLA_ADDRESS, []byte(s.MAC))
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(ns)))
	create.AddData(info)
	if _, err := create.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("create veth %s: %w", s.HostName, err)
	}
	err := setHostEnd(s, true)
	if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) {
		err = setHostEnd(s, false) // a kernel without IPv6
	}
	if err != nil {
		if link, lerr := netlink.LinkByName(s.HostName); lerr == nil {
			netlink.LinkDel(link)
		}
		return fmt.Errorf("set up veth %s: %w", s.HostName, err)
	}
	return nil
}

// setHostEnd is CreatePair's second request, with or without the IPv6
// setting: by name, as the link is named now.
func setHostEnd(s PairSpec, ipv6 bool) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(s.HostName)))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(s.Alias)))
	if ipv6 {
		const addrGenModeNone = 1 // IN6_ADDR_GEN_MODE_NONE
		spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
		spec.AddRtAttr(unix.AF_INET6, nil).AddRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{addrGenModeNone})
		req.AddData(spec)
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_SLAVE_KIND, nl.NonZeroTerminated("bridge"))
	port := info.AddRtAttr(nl.IFLA_INFO_SLAVE_DATA, nil)
	port.AddRtAttr(nl.IFLA_BRPORT_MODE, []byte{1}) // hairpin
	if s.Isolated {
		port.AddRtAttr(nl.IFLA_BRPORT_ISOLATED, []byte{1})
	}
	req.AddData(info)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// vethAttrs are the attributes of a veth end made with no queue (as
// Docker's: a veth's queue only adds latency).
func vethAttrs(name string, mtu int) []*nl.RtAttr {
	return []*nl.RtAttr{
		nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)),
		nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu))),
		nl.NewRtAttr(unix.IFLA_TXQLEN, nl.Uint32Attr(0)),
		nl.NewRtAttr(unix.IFLA_NUM_TX_QUEUES, nl.Uint32Attr(1)),
		nl.NewRtAttr(unix.IFLA_NUM_RX_QUEUES, nl.Uint32Attr(1)),
	}
}

// LinkIndex is the ifindex of the host's link name (an error wrapping
// ENODEV if there is none).
func LinkIndex(name string) (int, error) {
	link, err := netlink.LinkByName(name)
	if nf := (netlink.LinkNotFoundError{}); errors.As(err, &nf) {
		err = unix.ENODEV
	}
	if err != nil {
		return 0, fmt.Errorf("find link %s: %w", name, err)
	}
	return link.Attrs().Index, nil
}

// IfaceSpec is the configuration of a container's interface.
type IfaceSpec struct {
	Name  string
	Addrs []netip.Prefix
	// Route and Route6 are the default routes' gateways; invalid: no
	// default route of that family.
	Route, Route6 netip.Addr
}

// ConfigureInterface gives the container's interface its addresses (IPv6
// ones without duplicate address detection, as Docker adds them: the
// network's IPAM hands each out once, and DAD would keep it unusable for
// a second), brings it up and adds the default routes, through a handle
// in the container's netns.
func ConfigureInterface(ctr *netlink.Handle, s IfaceSpec) error {
	link, err := ctr.LinkByName(s.Name)
	if err != nil {
		return fmt.Errorf("find %s in the container: %w", s.Name, err)
	}
	for _, p := range s.Addrs {
		addr := &netlink.Addr{IPNet: ipnet(p)}
		if p.Addr().Is4() {
			addr.Broadcast = net.IP(cidr.Last(p).AsSlice())
		} else {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := ctr.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s to %s in the container: %w", p, s.Name, err)
		}
	}
	if err := ctr.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up in the container: %w", s.Name, err)
	}
	for _, gw := range []netip.Addr{s.Route, s.Route6} {
		if !gw.IsValid() {
			continue
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice())}
		if err := ctr.RouteAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add default route via %s in the container: %w", gw, err)
		}
	}
	return nil
}

// netSysctls is /proc/sys/net of the netns of the thread that opened it
// (openNetSysctls), as a directory descriptor.
type netSysctls int

// openNetSysctls opens /proc/sys/net of the calling thread's netns: what
// a file opened through it shows is the opener's netns.
func openNetSysctls() (netSysctls, error) {
	dir, err := unix.Open("/proc/sys/net", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/proc/sys/net", Err: err}
	}
	return netSysctls(dir), nil
}

// Close closes the directory.
func (d netSysctls) Close() { unix.Close(int(d)) }

// read returns the value of sysctl net.NAME (a path under /proc/sys/net).
func (d netSysctls) read(name string) (string, error) {
	fd, err := unix.Openat(int(d), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", &os.PathError{Op: "open", Path: "/proc/sys/net/" + name, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 64)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return "", &os.PathError{Op: "read", Path: "/proc/sys/net/" + name, Err: err}
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// write sets sysctl net.NAME (a path under /proc/sys/net) to value.
func (d netSysctls) write(name string, value []byte) error {
	fd, err := unix.Openat(int(d), name, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: "/proc/sys/net/" + name, Err: err}
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, value); err != nil {
		return &os.PathError{Op: "write", Path: "/proc/sys/net/" + name, Err: err}
	}
	return nil
}

// loopback6 reports whether lo has IPv6.
func (d netSysctls) loopback6() bool {
	v, err := d.read("ipv6/conf/lo/disable_ipv6")
	return err == nil && v == "0"
}

// Loopback6 reports whether lo has IPv6 (::1) in netns ns, as
// PrepareNetns does, changing nothing.
func Loopback6(ns netns.NsHandle) (bool, error) {
	var on bool
	err := Do(ns, func() error {
		sysctls, err := openNetSysctls()
		if err != nil {
			return err
		}
		defer sysctls.Close()
		on = sysctls.loopback6()
		return nil
	})
	return on, err
}

// PrepareNetns readies the container's netns ns in one visit: links made
// in it from now on (eth0) start with IPv6 on only with ipv6, as Docker 27
// does on a network without IPv6, while lo keeps ::1 (Docker 26 and
// later), so a program that binds "localhost" finds every address
// /etc/hosts gives it; with ipv6 they send no duplicate address detection
// and no router solicitations. It brings lo up, and returns a netlink handle bound
// to ns and whether lo has IPv6 (false on a kernel without it, or where the
// netns turned it off).
func PrepareNetns(ns netns.NsHandle, ipv6 bool) (ctr *netlink.Handle, loopback6 bool, err error) {
	off := []byte("1")
	if ipv6 {
		off = []byte("0")
	}
	err = Do(ns, func() error {
		// /proc/sys/net shows the netns of the thread that opens it.
		sysctls, err := openNetSysctls()
		if err != nil {
			return fmt.Errorf("set IPv6 for the container's interfaces: %w", err)
		}
		defer sysctls.Close()
		err = sysctls.write("ipv6/conf/default/disable_ipv6", off)
		switch {
		case errors.Is(err, os.ErrNotExist) && ipv6:
			return fmt.Errorf("the network is dual stack, and the kernel has no IPv6")
		case errors.Is(err, os.ErrNotExist): // a kernel without IPv6
		case err != nil:
			return fmt.Errorf("set IPv6 for the container's interfaces: %w", err)
		default:
			loopback6 = sysctls.loopback6()
		}
		if ipv6 {
			// The container's interfaces send no duplicate address
			// detection for their link-local address (it comes from the
			// MAC, which the network hands out once, as the bridge's
			// does) and no router solicitations (netshim gives the routes;
			// nothing advertises, and unanswered the kernel solicits
			// again and again). Each is multicast the bridge floods to
			// every other container (bench/HISTORY.md).
			for _, name := range []string{"ipv6/conf/default/accept_dad", "ipv6/conf/default/router_solicitations"} {
				if err := sysctls.write(name, []byte("0")); err != nil {
					return fmt.Errorf("set IPv6 for the container's interfaces: %w", err)
				}
			}
		}
		// A netlink socket belongs to the netns it was opened in.
		if ctr, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return fmt.Errorf("netlink in the container: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	// Outside Do: a netlink read needs a large stack, which the calling
	// goroutine has grown already, and Do's would grow again.
	// lo is ifindex 1 in every netns (LOOPBACK_IFINDEX).
	if err := ctr.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}); err != nil {
		ctr.Close()
		return nil, false, fmt.Errorf("set lo up in the container: %w", err)
	}
	return ctr, loopback6, nil
}

// DoomedGroup is the link group (IFLA_GROUP) of host veths whose traffic is
// stopped and that only wait to be deleted. Deleting a group is one
// RTM_DELLINK for all its links: a reclaimer deletes them in one batch, and
// gc deletes what a reclaimer that died left.
const DoomedGroup = 0x6e73686d // "nshm"

// SetAside stops a container's host veth named name, if it is ours: down
// (out of its bridge's forwarding at once) and into DoomedGroup, to be
// deleted later. A link of that name is ours when it carries alias, or,
// with unmarked, when it is a veth with no alias (a setup killed between
// making it and marking it). It reports whether a link was set aside.
func SetAside(h *netlink.Handle, name, alias string, unmarked bool) (bool, error) {
	link, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return false, nil
		}
		return false, fmt.Errorf("find veth %s: %w", name, err)
	}
	if a := link.Attrs().Alias; a != alias && !(unmarked && a == "" && link.Type() == "veth") {
		return false, nil // someone else's link, under a name reused
	}
	// Down and into the group in one request.
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index, msg.Change = int32(link.Attrs().Index), unix.IFF_UP
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(DoomedGroup)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !errors.Is(err, unix.ENODEV) {
		return false, fmt.Errorf("set veth %s down and aside: %w", name, err)
	}
	return true, nil
}

// DeleteDoomed deletes every link of DoomedGroup, in one request.
func DeleteDoomed() error {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(DoomedGroup)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete links set aside: %w", err)
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
