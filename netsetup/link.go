package netsetup

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"

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

// BridgeMAC is the MAC EnsureBridge gives a bridge it makes, whose address
// is gateway; setup gives it to the host ends of a pair made before it
// knows the bridge's link (see VethSpec.HostMAC).
func BridgeMAC(gateway netip.Addr) net.HardwareAddr { return MACFor(gateway) }

// RandomVethName returns `veth` and 7 random hex digits, as Docker names the
// host end. The runtime's generator serves: it is seeded from the kernel at
// start, and a taken name is replaced (EEXIST). crypto/rand's first read
// cost 0.1 ms of every setup.
func RandomVethName() string {
	return fmt.Sprintf("veth%07x", rand.Uint32()>>4)
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
	snooping := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{
		Name:   s.Name,
		MTU:    s.MTU,
		TxQLen: -1,
		Flags:  net.FlagUp,
		// A fixed MAC keeps the bridge's address from following its lowest
		// port, which would make neighbours' ARP caches stale.
		HardwareAddr: BridgeMAC(s.Gateway),
	},
		// Without multicast snooping the bridge floods multicast to every
		// port, as a plain switch does. With it, each port that comes up
		// or goes down re-arms query timers on every port: 1 ms per setup
		// and per teardown at 800 containers (0.3 ms without), and
		// snooping without a querier on the network loses groups after a
		// few minutes anyway.
		MulticastSnooping: &snooping,
	}
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
		if b, ok := link.(*netlink.Bridge); ok && (b.MulticastSnooping == nil || *b.MulticastSnooping) {
			if err := mcastSnoopingOff(link); err != nil {
				return nil, false, fmt.Errorf("turn off multicast snooping on bridge %s: %w", s.Name, err)
			}
		}
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

// mcastSnoopingOff turns multicast snooping off on an existing bridge,
// changing nothing else (vishvananda's BridgeSetMcastSnoop sends back every
// attribute of the link, which the kernel refuses for a running bridge).
func mcastSnoopingOff(br netlink.Link) error {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(br.Attrs().Index)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.IFLA_BR_MCAST_SNOOPING, []byte{0})
	c, err := NewConn(netns.None())
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Exec(newReq("set bridge options of "+br.Attrs().Name, unix.RTM_NEWLINK, 0, msg, info))
}

// VethSpec describes a container's veth pair.
type VethSpec struct {
	HostName    string
	BridgeIndex int
	MTU         int
	// Netns is the container's network namespace; the container end is
	// created straight in it, so it never appears on the host.
	Netns netns.NsHandle
	MAC   net.HardwareAddr
	// HostMAC is the host end's MAC (nil: a random one); setup gives every
	// host end its bridge's MAC. A port's MAC is a local entry in the
	// bridge's forwarding table, unless one for that MAC exists (the kernel
	// lets ports share an address): with a MAC each, 1,000 containers are
	// 1,000 more entries, walked whenever a port is added, set down or
	// removed, and each new entry walks every port. At 1,000 ports, own MAC
	// against the bridge's (a loop of pairs): attach 0.40 against 0.33 ms;
	// setting down 0.19 against 0.17 and deleting 1.36 against 1.07 ms of
	// CPU. No frame is addressed to a host end (it has no IP address), and
	// the bridge's MAC already means "deliver here". A MAC given at creation
	// is also one udev's MACAddressPolicy leaves be.
	HostMAC net.HardwareAddr
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

// Veth is a pair made by CreateVeth.
type Veth struct {
	// Host is the host end.
	Host netlink.Link
	// PeerIndex is the container end's ifindex in the container's netns.
	PeerIndex int
	// PeerNSID is the container's netns id as the host sees it, -1 if the
	// kernel did not say.
	PeerNSID int
	// AttachedTo is the bridge the host end was put on, and brought up
	// on, when the pair was made (0: none yet), with its port flags.
	AttachedTo int
}

// CreateVeth creates the pair: the host end named and marked with the
// spec's alias, the container end as eth0 straight in the container's
// netns, down. It needs neither the bridge nor the address: setup makes
// the pair while it reserves them, and AttachHostVeth and
// ConfigureContainer finish it. With the spec's BridgeIndex, the host end
// is also put on that bridge and brought up, if it can be (see
// Veth.AttachedTo): it then needs nothing more, and it carries no traffic
// before the container's end comes up, configured. It returns EEXIST
// (wrapped) when a name is taken, so the caller can pick another host name.
func CreateVeth(c *Conn, s VethSpec) (*Veth, error) {
	// One queue each way on both ends, as the kernel leaves a veth in use
	// anyway; but asked for at creation. Otherwise each end is made with
	// a queue per CPU and cut down to one once registered, and that waits
	// for an (expedited) RCU grace period: 0.15 ms of each pair here.
	one := nl.Uint32Attr(1)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	attrs := []nl.NetlinkRequestData{msg, nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(s.HostName)),
		nl.NewRtAttr(unix.IFLA_NUM_TX_QUEUES, one), nl.NewRtAttr(unix.IFLA_NUM_RX_QUEUES, one)}
	if s.MTU > 0 {
		attrs = append(attrs, nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(s.MTU))))
	}
	if s.HostMAC != nil {
		attrs = append(attrs, nl.NewRtAttr(unix.IFLA_ADDRESS, []byte(s.HostMAC)))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	peer := info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.VETH_INFO_PEER, nil)
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(ContainerIfName))
	peer.AddRtAttr(unix.IFLA_NUM_TX_QUEUES, one)
	peer.AddRtAttr(unix.IFLA_NUM_RX_QUEUES, one)
	if s.MTU > 0 {
		peer.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(s.MTU)))
	}
	if s.MAC != nil {
		peer.AddRtAttr(unix.IFLA_ADDRESS, []byte(s.MAC))
	}
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(s.Netns)))
	attrs = append(attrs, info)
	// NLM_F_ECHO: the kernel answers with the link as made (its index,
	// its peer's index and netns id), which saves asking for it.
	add := newReq("create veth "+s.HostName, unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ECHO, attrs...)
	if err := c.Exec(add); err != nil {
		return nil, err
	}
	link, ok := echoedLink(add)
	if !ok { // a kernel that does not echo new links
		get := newReq("find veth "+s.HostName, unix.RTM_GETLINK, 0, nl.NewIfInfomsg(unix.AF_UNSPEC),
			nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(s.HostName)))
		if err := c.Exec(get); err != nil {
			return nil, err
		}
		if link, ok = echoedLink(get); !ok {
			return nil, fmt.Errorf("find veth %s: no answer", s.HostName)
		}
	}
	v := &Veth{Host: link, PeerIndex: link.Attrs().ParentIndex, PeerNSID: link.Attrs().NetNsID}
	if v.PeerIndex <= 0 {
		DeleteLinkIndex(c, link.Attrs().Index, s.HostName)
		return nil, fmt.Errorf("create veth %s: the kernel did not give the peer's index", s.HostName)
	}
	// The rest of the host end in one batch. Marked as ours at once, so
	// gc can find the pair should this hook die; a bridge port needs no
	// IPv6 address either (1,000 of them would be 1,000 link-local routes
	// for the host's IPv6 route walks): asked for before the link is up.
	idx := link.Attrs().Index
	reqs := []*Req{noIPv6LinkLocalReq("set IPv6 address generation of "+s.HostName, idx)}
	if s.Alias != "" {
		// The kernel ignores IFLA_IFALIAS when it creates a link.
		reqs = append(reqs, setLinkReq("mark veth "+s.HostName, idx, 0, 0, nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(s.Alias))))
	}
	marked := len(reqs)
	if s.BridgeIndex > 0 {
		reqs = append(reqs, attachReqs(idx, s)...)
	}
	err := c.Exec(reqs...)
	for _, r := range reqs[:marked] {
		if r.Errno != 0 && !slices.Contains(r.OK, r.Errno) {
			DeleteLinkIndex(c, idx, s.HostName)
			return nil, err
		}
	}
	// A bridge that is gone (or a stale index) only leaves the port to
	// attach later, when the bridge is known for sure.
	if s.BridgeIndex > 0 && err == nil {
		v.AttachedTo = s.BridgeIndex
	}
	return v, nil
}

// attachReqs put host end idx on the spec's bridge, with its port flags,
// and bring it up.
func attachReqs(idx int, s VethSpec) []*Req {
	reqs := []*Req{setLinkReq("attach veth "+s.HostName+" to the bridge", idx, 0, 0,
		nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(s.BridgeIndex))))}
	if s.Hairpin || s.Isolated {
		flags := map[int]bool{}
		if s.Hairpin {
			flags[nl.IFLA_BRPORT_MODE] = true
		}
		if s.Isolated {
			flags[nl.IFLA_BRPORT_ISOLATED] = true
		}
		reqs = append(reqs, bridgePortReq("set bridge port flags of "+s.HostName, idx, flags))
	}
	return append(reqs, upReq("set veth "+s.HostName+" up", idx))
}

// AttachHostVeth puts the host end on the bridge with its port flags and
// brings it up, unless CreateVeth did already. The container end may be
// configured meanwhile.
func AttachHostVeth(c *Conn, v *Veth, s VethSpec) error {
	if v.AttachedTo == s.BridgeIndex {
		return nil
	}
	if err := c.Exec(attachReqs(v.Host.Attrs().Index, s)...); err != nil {
		return err
	}
	v.AttachedTo = s.BridgeIndex
	return nil
}

// SetUpContainer configures the container's side from inside its netns:
// IPv6 off, lo up, and for a veth spec its eth0 (peer, its ifindex there).
func SetUpContainer(ns netns.NsHandle, s *VethSpec, peer int) error {
	var cs []*Conn
	err := Do(ns, func() (err error) {
		cs, err = PrepareContainer(netns.None(), 1)
		return err
	})
	if err != nil {
		return err
	}
	defer cs[0].Close()
	if err := UpLoopback(cs[0]); err != nil {
		return err
	}
	return ConfigureContainer(cs[0], s, peer)
}

// PrepareContainer prepares the container's netns ns for its links: IPv6
// off, and n route sockets there (one for each goroutine that will work
// there at the same time; the caller closes them). The calling thread is
// switched into ns and back, unless ns is not open: the caller is then in
// the container's netns already (see Do). Should the thread not come back,
// it stays locked to the calling goroutine, and the error says so: the
// caller must not go on (a hook returns the error and exits, and the
// thread with it).
//
// IPv6 is turned off for the whole netns (net.ipv6.conf.all.disable_ipv6,
// which new links take too), as Docker does on a network without IPv6:
// `ip a` in a container shows no inet6 address, not even lo's ::1. Bringing
// lo up then makes no IPv6 address and routes either, and a teardown has
// none to remove. A kernel without IPv6, or a read-only /proc/sys, leaves
// it on.
func PrepareContainer(ns netns.NsHandle, n int) ([]*Conn, error) {
	var cs []*Conn
	open := func() error {
		disableIPv6()
		for range n {
			c, err := NewConn(netns.None())
			if err != nil {
				return err
			}
			cs = append(cs, c)
		}
		return nil
	}
	var err error
	if ns.IsOpen() {
		err = doHere(ns, open)
	} else {
		err = open()
	}
	if err != nil {
		for _, c := range cs {
			c.Close()
		}
		return nil, fmt.Errorf("netlink in container netns: %w", err)
	}
	return cs, nil
}

// UpLoopback brings lo up, on a socket in the container's netns.
func UpLoopback(c *Conn) error {
	return c.Exec(upReq("set lo up in container", 1)) // lo is always ifindex 1
}

// disableIPv6 turns IPv6 off in the calling thread's netns, if it can.
// The kernel takes RTNL for it, or has the write retried while another
// holds it: the container's pair is made after, not meanwhile.
//
// The file is opened through a proc instance of our own, not the host's
// /proc. Every netns that has looked up /proc/sys/net/ipv6 leaves a dentry
// named ipv6 under the one /proc/sys/net, and a lookup from a new netns
// compares itself against each: with 1,000 containers that open took
// 1.2 ms instead of 0.2 (cold caches, each hook a new process). A fresh
// instance has only this netns's dentries; which netns a sysctl file
// belongs to is the opener's, whatever the instance. The instance is
// detached (never in any mount table) and goes with its last descriptor;
// that unmount waits for an RCU grace period, so it is left to a goroutine
// of its own rather than the setup's path. That goroutine waits on this
// thread's P while the pair is made, and in some setups (1 in 5 to 2 in 3
// in three traces) the runtime starts a thread for it; closing here, or at
// exit, measured no faster. Without the new mount API, or where mounting
// proc is refused, the host's /proc does it.
func disableIPv6() {
	const name = "sys/net/ipv6/conf/all/disable_ipv6"
	fd := -1
	if mnt, err := procInstance(); err == nil {
		fd, _ = unix.Openat(mnt, name, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		go unix.Close(mnt)
	}
	if fd < 0 {
		var err error
		if fd, err = unix.Open("/proc/"+name, unix.O_WRONLY|unix.O_CLOEXEC, 0); err != nil {
			return
		}
	}
	unix.Write(fd, []byte("1"))
	unix.Close(fd)
}

// procInstance is privateProc; a test puts a failing one in its place.
var procInstance = privateProc

// privateProc mounts a new proc instance, detached, and returns its
// descriptor (nothing on it to exec, to open as a device or to setuid).
func privateProc() (int, error) {
	fs, err := unix.Fsopen("proc", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, err
	}
	defer unix.Close(fs)
	if err := unix.FsconfigCreate(fs); err != nil {
		return -1, err
	}
	return unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
}

// ConfigureContainer runs on a socket prepared by PrepareContainer: for a
// veth spec, eth0 (ifindex eth) gets no IPv6 link-local address (should
// IPv6 be on), then its address, MAC, up, and the default route, all in one
// batch. The network has no IPv6, and each new eth0's duplicate address
// detection and MLD reports would be flooded by the bridge to every other
// container, a cost that grows with their number.
func ConfigureContainer(c *Conn, s *VethSpec, eth int) error {
	if s == nil {
		return nil
	}
	brd := ipv4.Last(s.Subnet).As4()
	ip := s.IP.As4()
	am := nl.NewIfAddrmsg(unix.AF_INET)
	am.Index, am.Prefixlen = uint32(eth), uint8(s.Subnet.Bits())
	add := newReq(fmt.Sprintf("add address %s to %s in container", s.IP, ContainerIfName),
		unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, am,
		nl.NewRtAttr(unix.IFA_LOCAL, ip[:]), nl.NewRtAttr(unix.IFA_ADDRESS, ip[:]), nl.NewRtAttr(unix.IFA_BROADCAST, brd[:]))
	add.OK = []unix.Errno{unix.EEXIST}
	reqs := []*Req{noIPv6LinkLocalReq("set IPv6 address generation of "+ContainerIfName+" in container", eth),
		add, upReq("set "+ContainerIfName+" up in container", eth, nl.NewRtAttr(unix.IFLA_ADDRESS, []byte(s.MAC)))}
	if s.Gateway.IsValid() {
		gw := s.Gateway.As4()
		rm := nl.NewRtMsg()
		rm.Family = unix.AF_INET
		route := newReq("add default route via "+s.Gateway.String()+" in container", unix.RTM_NEWROUTE,
			unix.NLM_F_CREATE|unix.NLM_F_EXCL, rm, nl.NewRtAttr(unix.RTA_GATEWAY, gw[:]), nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(eth))))
		route.OK = []unix.Errno{unix.EEXIST}
		reqs = append(reqs, route)
	}
	return c.Exec(reqs...)
}

// DeleteLinkIndex removes link index (named name, for errors). The link
// may be gone already (with its container netns).
func DeleteLinkIndex(c *Conn, index int, name string) error {
	r := newReq("delete veth "+name, unix.RTM_DELLINK, 0, &nl.IfInfomsg{IfInfomsg: unix.IfInfomsg{Index: int32(index)}})
	r.OK = []unix.Errno{unix.ENODEV}
	return c.Exec(r)
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

// HostVeth is what teardown learns of a container's host veth.
type HostVeth struct {
	// Link is the host link of that name, nil if there is none.
	Link netlink.Link
	// PeerGone says the container's netns is being destroyed: the kernel
	// removes the pair with it, and deleting it here would only wait for
	// an RCU grace period.
	PeerGone bool
}

// InspectVeth asks, when nsid is set (the container's netns id as recorded
// at setup), whether that netns is gone, and if not looks up the host link
// name. The kernel resolves a netns id only while its namespace is alive,
// so a namespace being destroyed answers ENOENT; that answer needs no RTNL,
// which the namespace's destruction holds, while a link lookup would wait
// for it. If the id was reused by another namespace the answer is "alive",
// which only sends the caller down the slower, exact path.
func (c *Conn) InspectVeth(name string, nsid *int) (HostVeth, error) {
	if nsid != nil && *nsid >= 0 && *nsid <= 1<<31-1 {
		ns := newReq("look up netns id", unix.RTM_GETNSID, 0, nl.NewRtGenMsg(),
			nl.NewRtAttr(unix.NETNSA_NSID, nl.Uint32Attr(uint32(*nsid))))
		ns.OK = []unix.Errno{unix.ENOENT}
		if err := c.Exec(ns); err != nil {
			return HostVeth{}, err
		}
		if ns.Errno == unix.ENOENT {
			return HostVeth{PeerGone: true}, nil
		}
	}
	get := getLinkReq(name)
	if err := c.Exec(get); err != nil {
		return HostVeth{}, err
	}
	link, ok := echoedLink(get)
	if !ok {
		return HostVeth{}, nil
	}
	v := HostVeth{Link: link}
	// The link's own view of its peer's netns, if that is not the one
	// just found alive.
	if id := link.Attrs().NetNsID; id != -1 && (nsid == nil || id != *nsid) {
		if uint32(id) == 0xFFFFFFFF { // NETNSA_NSID_NOT_ASSIGNED: unhashed, dying
			v.PeerGone = true
		} else {
			again := id
			w, err := c.InspectVeth(name, &again)
			if err != nil {
				return HostVeth{}, err
			}
			v.PeerGone = w.PeerGone
		}
	}
	return v, nil
}

// BridgeIndex returns the ifindex and MAC of the bridge named name, or 0
// if there is no link of that name or it is not a bridge.
func (c *Conn) BridgeIndex(name string) (int, net.HardwareAddr, error) {
	r := getLinkReq(name)
	if err := c.Exec(r); err != nil {
		return 0, nil, err
	}
	l, ok := echoedLink(r)
	if !ok {
		return 0, nil, nil
	}
	if _, isBridge := l.(*netlink.Bridge); !isBridge {
		return 0, nil, nil
	}
	return l.Attrs().Index, l.Attrs().HardwareAddr, nil
}

// getLinkReq asks for link name, without its statistics.
func getLinkReq(name string) *Req {
	const rtextFilterSkipStats = 1 << 3 // RTEXT_FILTER_SKIP_STATS, linux/rtnetlink.h
	r := newReq("find link "+name, unix.RTM_GETLINK, 0, nl.NewIfInfomsg(unix.AF_UNSPEC),
		nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)),
		nl.NewRtAttr(unix.IFLA_EXT_MASK, nl.Uint32Attr(rtextFilterSkipStats)))
	r.OK = []unix.Errno{unix.ENODEV}
	return r
}

// DeleteLink removes a link by index; one already gone is not an error.
func (c *Conn) DeleteLink(link netlink.Link) error {
	return DeleteLinkIndex(c, link.Attrs().Index, link.Attrs().Name)
}
