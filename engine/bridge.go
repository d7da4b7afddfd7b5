package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/firewall"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// bridgeDriver puts containers on a Linux bridge: the default network and
// user networks. A container gets a veth pair (eth0 in its netns, the host
// end on the bridge), an address of the network's subnet, a default route
// via its gateway, published ports, and on user networks names in the
// network's DNS.
type bridgeDriver struct{ e *Engine }

// vethAlias marks a host veth as ours: teardown and gc delete a link only
// when it carries the alias of the container they work for.
func vethAlias(id string) string { return "netshim:" + id }

// Reserve implements Driver.
func (b *bridgeDriver) Reserve(rec *state.Record, req *Request, ep *Endpoint, save func() error) error {
	e := b.e
	def, err := e.network(ep.Network)
	if err != nil {
		return err
	}
	ns, err := e.Store.GetNet(def.Name)
	if err != nil {
		return err
	}
	if ns == nil {
		ns = e.Store.NewNet(def.Name)
	}
	if err := e.chooseSubnet(def, ns); err != nil {
		return err
	}
	if err := e.settleIPv6(def, ns, ep); err != nil {
		return err
	}
	ns.Bridge = def.Bridge
	// The reservations are made in memory first (the network's state and
	// the port index write them later): nothing is written before the
	// record that names them.
	var reserved []netip.Addr
	if def.DefaultGateway.IsValid() {
		reserved = append(reserved, def.DefaultGateway)
	}
	ip, err := ns.Allocate(rec.ID, ep.IP, def.IPRange, reserved...)
	if err != nil {
		var ae *state.AddressError
		if errors.As(err, &ae) && ep.IP.IsValid() {
			return &FieldError{Field: FieldIP, Network: ep.Network, Reason: err.Error()}
		}
		return err
	}
	var ip6 netip.Addr
	if def.IPv6 {
		if ip6, err = ns.Allocate6(rec.ID, ep.IP6, def.IPRange6); err != nil {
			var ae *state.AddressError
			if errors.As(err, &ae) && ep.IP6.IsValid() {
				return &FieldError{Field: FieldIP6, Network: ep.Network, Reason: err.Error()}
			}
			return err
		}
	}
	fw, err := firewall.New(e.Config.Firewall)
	if err != nil {
		return err
	}
	mac := ep.MAC
	if mac == nil {
		mac = netsetup.MACFor(ip)
	}
	a := state.Attachment{
		Network: def.Name, Driver: ModeBridge, Interface: ep.iface,
		Bridge: def.Bridge, HostVeth: netsetup.RandomVethName(), MAC: mac.String(),
		Addrs: []netip.Prefix{netip.PrefixFrom(ip, ns.Subnet.Bits())}, Gateway: ns.Gateway, Route: ns.Gateway,
		MTU: def.MTU, Isolated: !def.ICC, Firewall: fw.Name(),
	}
	if def.DefaultGateway.IsValid() {
		a.Route = def.DefaultGateway
	}
	if ip6.IsValid() {
		a.Addrs = append(a.Addrs, netip.PrefixFrom(ip6, ns.Subnet6.Bits()))
		a.Gateway6, a.Route6 = ns.Gateway6, ns.Gateway6
	}
	if def.Internal || !ep.route4 {
		a.Route = netip.Addr{} // no way out, or another network's
	}
	if def.Internal || !ep.route6 {
		a.Route6 = netip.Addr{}
	}
	var ports *state.Ports
	if len(req.Ports) > 0 && ep.ports {
		switch {
		case def.Internal:
			kind := "internal"
			if def.GatewayMode == config.GatewayIsolated {
				kind = "isolated"
			}
			return &FieldError{Field: FieldPorts, Reason: "network " + def.Name + " is " + kind + ": ports cannot be published"}
		case !def.IPv6 && slices.ContainsFunc(req.Ports, func(p PortRequest) bool { return p.HostIP.Is6() }):
			return &FieldError{Field: FieldPorts, Reason: "network " + def.Name + " has no IPv6: ports cannot be published on an IPv6 host address"}
		case def.GatewayMode == config.GatewayRouted:
			// Opened on the container's own address: no host port.
			a.Ports = routedPorts(req.Ports)
		default:
			if ports, err = e.Store.GetPorts(); err != nil {
				return err
			}
			if a.Ports, err = e.allocatePorts(rec.ID, rec.Name, req.Ports, ports); err != nil {
				return err
			}
		}
	}
	if !def.Default {
		a.Names = dnsNames(rec, ep)
	}
	installRules := !ns.RulesInstalled()
	if installRules {
		// The intent first: a crash after the rules are in leaves a state
		// that names them.
		rules := firewall.RulesFor(def, ns, e.Config.TrustedHostInterfaces)
		ns.Firewall, ns.Installed, ns.Rules = fw.Name(), fw.NetworkObjects(rules), &rules
	}
	rec.Attachments = append(rec.Attachments, a)
	if err := save(); err != nil {
		return err
	}
	fault("setup:record")
	if err := e.Store.PutNet(ns); err != nil {
		return err
	}
	if ports != nil {
		if err := e.Store.PutPorts(ports); err != nil {
			return err
		}
	}
	fault("setup:ports-reserved")

	if installRules {
		// The network's first container makes its bridge; later ones find
		// it in Attach, which makes it again if it was deleted since.
		if err := e.ensureBridge(bridgeSpec(&a)); err != nil {
			return err
		}
	}
	fault("setup:bridge")
	if installRules {
		installed, err := fw.EnsureNetwork(*ns.Rules, ns.Installed)
		if err != nil {
			return err
		}
		ns.Installed = installed
		if err := e.Store.PutNet(ns); err != nil {
			return err
		}
	} else if err := e.ensureRules(ns.Rules, ns.Firewall); err != nil {
		return err
	}
	fault("setup:rules")
	if len(a.Names) > 0 {
		// From the moment this write is done, the responder answers.
		if err := e.addNames(ns, def, rec, &a, req.DNS); err != nil {
			return err
		}
		if err := e.Store.PutNet(ns); err != nil {
			return err
		}
		fault("setup:responder")
	}
	return nil
}

// settleIPv6 settles the IPv6 subnet of a dual-stack network, before any
// address is taken; on a network without IPv6 it refuses --ip6, and
// forgets an IPv6 subnet left from when the network had IPv6 once no
// container holds an address of it.
func (e *Engine) settleIPv6(def *config.Network, ns *state.Net, ep *Endpoint) error {
	switch {
	case def.IPv6:
		return e.chooseSubnet6(def, ns)
	case ep.IP6.IsValid():
		return &FieldError{Field: FieldIP6, Network: ep.Network, Reason: "network " + def.Name + " has no IPv6 subnet"}
	case ns.Subnet6.IsValid():
		if inUse, err := ns.InUse(); err != nil || inUse {
			return err
		}
		ns.Subnet6, ns.Gateway6, ns.Low6 = netip.Prefix{}, netip.Addr{}, netip.Addr{}
	}
	return nil
}

// dnsNames are a container's names in a network's DNS: its name, its
// aliases on that network and its short id, the ones DNS can carry (a name
// from a long container id may not be).
func dnsNames(rec *state.Record, ep *Endpoint) []string {
	var out []string
	seen := map[string]bool{}
	for _, n := range append(append([]string{rec.Name}, ep.Aliases...), ShortID(rec.ID)) {
		if !seen[n] && DNSName(n) == nil {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// bridgeSpec is the bridge of an attachment's network.
func bridgeSpec(a *state.Attachment) netsetup.BridgeSpec {
	s := netsetup.BridgeSpec{Name: a.Bridge, Subnet: a.Addrs[0].Masked(), Gateway: a.Gateway, MTU: a.MTU}
	if a.Subnet6().IsValid() {
		s.Subnet6, s.Gateway6 = a.Subnet6(), a.Gateway6
	}
	return s
}

// ensureBridge ensures a network's bridge, with forwarding on (as Docker
// sets it when it starts: `netshim doctor` tells if it was turned off
// since). The caller holds the lock.
func (e *Engine) ensureBridge(spec netsetup.BridgeSpec) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	if err := netsetup.EnsureSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	if spec.Gateway6.IsValid() {
		// As Docker does for its IPv6 networks; it also stops the host
		// from taking router advertisements on interfaces that take them
		// only while not forwarding (accept_ra = 1): `netshim doctor`
		// says so.
		if err := netsetup.EnsureSysctl("net.ipv6.conf.all.forwarding", "1"); err != nil {
			return err
		}
	}
	_, err = netsetup.EnsureBridge(h, spec)
	return err
}

// Attach implements Driver: the veth pair, made with its container end
// straight in the container's netns, the container end's address and
// route, and the published ports.
func (b *bridgeDriver) Attach(rec *state.Record, a *state.Attachment, c *ContainerNS) error {
	if err := c.Prepare(a.Addr6().IsValid()); err != nil {
		return err
	}
	bridge, err := netsetup.LinkIndex(a.Bridge)
	if errors.Is(err, unix.ENODEV) {
		bridge, err = b.reensureBridge(a)
	}
	if err != nil {
		return err
	}
	if needsRouteLocalnet(a.Ports) {
		// The host's own 127.0.0.1:PORT, DNATed, must be routable out of
		// the bridge (Docker's userland-proxy=false): only on a bridge
		// that publishes on loopback, and the firewall's loopback guard
		// keeps what comes in on it from reaching 127.0.0.0/8.
		if err := netsetup.EnsureIfSysctl("ipv4", a.Bridge, "route_localnet", "1"); err != nil {
			return err
		}
	}
	mac, err := parseMAC(a.MAC)
	if err != nil {
		return err
	}
	spec := netsetup.PairSpec{HostName: a.HostVeth, PeerName: a.Interface, Alias: vethAlias(rec.ID), Bridge: bridge, MTU: a.MTU, MAC: mac, Isolated: a.Isolated}
	for attempt := 0; ; attempt++ {
		err := netsetup.CreatePair(c.NS, spec)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EEXIST) || attempt == 5 {
			return err
		}
		// The host name is taken: another, recorded before it is made.
		a.HostVeth = netsetup.RandomVethName()
		spec.HostName = a.HostVeth
		if err := b.e.saveLocked(rec); err != nil {
			return err
		}
	}
	fault("setup:veth")
	ctr, err := c.Handle()
	if err != nil {
		return err
	}
	if err := netsetup.ConfigureInterface(ctr, netsetup.IfaceSpec{Name: a.Interface, Addrs: a.Addrs, Route: a.Route, Route6: a.Route6}); err != nil {
		return err
	}
	if len(a.Ports) > 0 {
		fw, err := firewall.New(a.Firewall)
		if err != nil {
			return err
		}
		if err := fw.AddPorts(portRules(*a)); err != nil {
			return err
		}
	}
	fault("setup:published")
	return nil
}

// reensureBridge makes the bridge of a's network again, under the lock:
// someone deleted it after the network's first container made it.
func (b *bridgeDriver) reensureBridge(a *state.Attachment) (int, error) {
	lock, err := b.e.lock()
	if err != nil {
		return 0, err
	}
	defer lock.Unlock()
	if err := b.e.ensureBridge(bridgeSpec(a)); err != nil {
		return 0, err
	}
	return netsetup.LinkIndex(a.Bridge)
}

// saveLocked writes a setup's record again, under the lock, keeping a
// cancellation a teardown wrote meanwhile.
func (e *Engine) saveLocked(rec *state.Record) error {
	lock, err := e.lock()
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if _, cancelled, _, err := e.Store.Progress(rec.ID); err != nil {
		return err
	} else if cancelled {
		rec.Cancelled = true
	}
	return e.Store.Put(rec)
}

// Detach implements Driver: the published ports withdrawn, the host veth
// set aside, the address and names given back, and with the network's last
// container its firewall rules removed.
func (b *bridgeDriver) Detach(rec *state.Record, a state.Attachment, r *Reclaim) error {
	e := b.e
	if err := e.releasePorts(rec, a, r); err != nil {
		return err
	}
	fault("teardown:ports")
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	// A setup (or connect) killed between making the veth and marking it
	// leaves it without its alias: for a record still being created, or
	// an attachment still being connected, the recorded (random) name is
	// enough.
	aside, err := netsetup.SetAside(h, a.HostVeth, vethAlias(rec.ID), rec.Phase != state.PhaseReady || a.Connecting != nil)
	if err != nil {
		return err
	}
	r.Links = r.Links || aside
	fault("teardown:link")
	ns, err := e.Store.GetNet(a.Network)
	if err != nil || ns == nil {
		return err
	}
	for _, p := range a.Addrs {
		if err := ns.Release(rec.ID, p.Addr()); err != nil {
			return err
		}
	}
	e.removeNames(ns, rec, a)
	inUse, err := ns.InUse()
	if err != nil {
		return err
	}
	if !inUse && ns.RulesInstalled() {
		fw, err := firewall.New(ns.Firewall)
		if err != nil {
			return err
		}
		last, err := e.noOtherRules(ns.Name)
		if err != nil {
			return err
		}
		if err := fw.RemoveNetwork(ns.Installed, last); err != nil {
			return err
		}
		ns.Installed, ns.Firewall, ns.Rules = nil, "", nil
	}
	fault("teardown:address")
	return e.Store.PutNet(ns)
}

// noOtherRules reports whether no network but name has rules installed.
func (e *Engine) noOtherRules(name string) (bool, error) {
	names, err := e.Store.NetNames()
	if err != nil {
		return false, err
	}
	for _, n := range names {
		if n == name {
			continue
		}
		other, err := e.Store.GetNet(n)
		if err != nil {
			return false, err
		}
		if other != nil && other.RulesInstalled() {
			return false, nil
		}
	}
	return true, nil
}
