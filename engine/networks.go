package engine

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// network returns the definition of a bridge network by name: the default
// network, one of the config file, or one made with `network create`.
func (e *Engine) network(name string) (*config.Network, error) {
	if name == config.DefaultNetwork {
		n := e.Config.Bridge
		return &n, nil
	}
	if n, ok := e.Config.Networks[name]; ok {
		return &n, nil
	}
	if j := e.overlays[name]; j != nil {
		return overlayNetwork(name, j.net.ID, j.subnet, j.underlay.MTU-netsetup.VXLANOverhead), nil
	}
	if e.Defs != nil {
		def, err := e.Defs.Get(name)
		if err != nil {
			return nil, err
		}
		if def != nil {
			n, err := def.Network()
			if err != nil {
				return nil, fmt.Errorf("network %s (%s): %w", name, e.Defs.Dir, err)
			}
			return &n, nil
		}
	}
	if ns, err := e.Store.GetNet(name); err != nil {
		return nil, err
	} else if ns != nil && ns.Overlay != nil && ns.Subnet.IsValid() {
		return overlayNetwork(name, ns.Overlay.ID, ns.Subnet, ns.Overlay.MTU), nil
	}
	return nil, fmt.Errorf("network %s not found", name)
}

// UserNetworks returns the user-defined networks, sorted by name.
func (e *Engine) UserNetworks() ([]config.Network, error) {
	var out []config.Network
	for _, n := range e.Config.Networks {
		out = append(out, n)
	}
	if e.Defs != nil {
		defs, err := e.Defs.List()
		if err != nil {
			return nil, err
		}
		for _, d := range defs {
			if _, dup := e.Config.Networks[d.Name]; dup {
				continue
			}
			n, err := d.Network()
			if err != nil {
				return nil, fmt.Errorf("network %s (%s): %w", d.Name, e.Defs.Dir, err)
			}
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// NetworkRequest is `netshim network create`'s flags.
type NetworkRequest struct {
	Name     string
	Driver   string
	Subnet   string
	Gateway  string
	IPRange  string
	Bridge   string
	Internal bool
	MTU      int
	// Options are -o KEY=VALUE driver options.
	Options []string
	// IPv6 makes the network dual stack, with Subnet6 (default: the next
	// free IPv6 pool), Gateway6 and IPRange6.
	IPv6     bool
	Subnet6  string
	Gateway6 string
	IPRange6 string
	// HostPrefix is each host's share of an overlay network's subnet.
	HostPrefix int
}

// networkOptions are the -o keys `network create` takes, with Docker's
// names for them, and the config key each sets.
var networkOptions = map[string]string{
	"gateway_mode": "gateway_mode", "com.docker.network.bridge.gateway_mode_ipv4": "gateway_mode",
}

// flagOfKey words a config error about a created network in terms of the
// flag that set the value.
func flagOfKey(err error) error {
	var ce *config.Error
	if !errors.As(err, &ce) {
		return err
	}
	_, field, _ := strings.Cut(strings.TrimPrefix(ce.Key, "networks."), ".")
	flag := map[string]string{"subnet": "--subnet", "gateway": "--gateway", "ip_range": "--ip-range", "mtu": "--mtu", "bridge": "--bridge",
		"gateway_mode": "-o gateway_mode", "subnet6": "--subnet", "gateway6": "--gateway", "ip_range6": "--ip-range"}[field]
	if strings.HasSuffix(ce.Reason, ".ipv6 = true") {
		return fmt.Errorf("%s %q: an IPv6 value needs --ipv6", flag, ce.Value)
	}
	if flag == "" {
		return fmt.Errorf("%s", ce.Reason)
	}
	if ce.Value == "" {
		return fmt.Errorf("%s: %s", flag, ce.Reason)
	}
	return fmt.Errorf("%s %q: %s", flag, ce.Value, ce.Reason)
}

// CreateNetwork defines a bridge network, persists it and creates its
// bridge. Without a subnet it takes the next free pool.
func (e *Engine) CreateNetwork(req NetworkRequest) (*state.NetworkDef, error) {
	if err := config.CheckNetworkName(req.Name); err != nil {
		return nil, err
	}
	switch req.Driver {
	case "", ModeBridge:
	case ModeOverlay:
		return e.createOverlay(req)
	default:
		return nil, fmt.Errorf("--driver %q: must be bridge or overlay", req.Driver)
	}
	gatewayMode := ""
	for _, o := range req.Options {
		k, v, ok := strings.Cut(o, "=")
		if !ok || networkOptions[k] == "" {
			return nil, fmt.Errorf("-o %q: want KEY=VALUE with KEY gateway_mode (or com.docker.network.bridge.gateway_mode_ipv4)", o)
		}
		if err := config.CheckGatewayMode(v); err != nil {
			return nil, fmt.Errorf("-o %s=%q: %w", k, v, err)
		}
		gatewayMode = v
	}
	lock, err := e.lock()
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	if _, err := e.network(req.Name); err == nil {
		return nil, fmt.Errorf("network with name %s already exists", req.Name)
	}
	nets, err := e.UserNetworks()
	if err != nil {
		return nil, err
	}
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer host.Close()
	ours := []string{e.Config.Bridge.Bridge}
	taken := map[string]netip.Prefix{}
	for _, n := range nets {
		ours = append(ours, n.Bridge)
		taken[n.Name] = n.Subnet
	}
	// As in Docker, where docker0 exists before any user network, the
	// default network takes its pool first: settle (and keep) its subnet now.
	defNet, err := e.settleDefaultSubnet(host)
	if err != nil {
		return nil, err
	}
	taken[config.DefaultNetwork] = defNet
	hostUsed, err := netsetup.HostPrefixes(host, unix.AF_INET, ours...)
	if err != nil {
		return nil, err
	}
	spec := config.NetworkFile{Subnet: req.Subnet, Gateway: req.Gateway, IPRange: req.IPRange, Internal: req.Internal, MTU: req.MTU, Bridge: req.Bridge,
		GatewayMode: gatewayMode, IPv6: req.IPv6, Subnet6: req.Subnet6, Gateway6: req.Gateway6, IPRange6: req.IPRange6}
	if spec.IPv6 && spec.Subnet6 == "" && spec.Gateway6 == "" && spec.IPRange6 == "" {
		p, err := e.freeSubnet6(host, req.Name, req.Bridge)
		if err != nil {
			return nil, err
		}
		spec.Subnet6 = p.String()
	}
	if spec.Subnet == "" {
		used := append([]netip.Prefix{}, hostUsed...)
		for _, p := range taken {
			used = append(used, p)
		}
		p, err := netsetup.ChoosePool(e.Config.Pools, used)
		if err != nil {
			return nil, err
		}
		spec.Subnet = p.String()
	}
	var idb [32]byte
	rand.Read(idb[:])
	def := &state.NetworkDef{Name: req.Name, ID: hex.EncodeToString(idb[:]), Created: time.Now().UTC(), Spec: spec}
	n, err := def.Network()
	if err != nil {
		return nil, flagOfKey(err)
	}
	names := make([]string, 0, len(taken))
	for name := range taken {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, other := range names {
		if taken[other].Overlaps(n.Subnet) {
			return nil, fmt.Errorf("--subnet %s overlaps network %s (%s)", n.Subnet, other, taken[other])
		}
	}
	for _, p := range hostUsed {
		if p.Overlaps(n.Subnet) {
			return nil, fmt.Errorf("--subnet %s overlaps %s, an address or route of the host", n.Subnet, p)
		}
	}
	if n.Subnet6.IsValid() {
		if err := e.checkSubnet6Free(host, n); err != nil {
			return nil, err
		}
	}
	for _, o := range nets {
		if o.Bridge == n.Bridge {
			return nil, fmt.Errorf("--bridge %q: already used by network %s", n.Bridge, o.Name)
		}
	}
	if n.Bridge == e.Config.Bridge.Bridge {
		return nil, fmt.Errorf("--bridge %q: already used by network %s", n.Bridge, config.DefaultNetwork)
	}
	if _, err := netsetup.EnsureBridge(host, netsetup.BridgeSpec{Name: n.Bridge, Subnet: n.Subnet, Gateway: n.Gateway,
		Subnet6: n.Subnet6, Gateway6: n.Gateway6, MTU: n.MTU}); err != nil {
		return nil, err
	}
	if err := e.Defs.Put(def); err != nil {
		netsetup.DeleteLink(host, n.Bridge)
		return nil, err
	}
	return def, nil
}

// checkSubnet6Free refuses a created network's IPv6 subnet that overlaps
// another network's or the host's.
func (e *Engine) checkSubnet6Free(host *netlink.Handle, n config.Network) error {
	nets, hostUsed, err := e.subnets6InUse(host, n.Name)
	if err != nil {
		return err
	}
	for _, o := range nets {
		if o.p.Overlaps(n.Subnet6) {
			return fmt.Errorf("--subnet %s overlaps network %s (%s)", n.Subnet6, o.name, o.p)
		}
	}
	for _, p := range hostUsed {
		if p.Overlaps(n.Subnet6) {
			return fmt.Errorf("--subnet %s overlaps %s, an address or route of the host", n.Subnet6, p)
		}
	}
	return nil
}

// namedPrefix is a network's subnet.
type namedPrefix struct {
	name string
	p    netip.Prefix
}

// subnets6InUse lists the IPv6 subnets of every network of ours but
// except (as defined, else as chosen at first use), and the host's IPv6
// prefixes but those of except's bridge.
func (e *Engine) subnets6InUse(host *netlink.Handle, except string, exceptBridge ...string) ([]namedPrefix, []netip.Prefix, error) {
	nets, err := e.UserNetworks()
	if err != nil {
		return nil, nil, err
	}
	var out []namedPrefix
	for _, n := range append(nets, e.Config.Bridge) {
		if n.Name == except {
			continue
		}
		sub := n.Subnet6
		if ns, err := e.Store.GetNet(n.Name); err != nil {
			return nil, nil, err
		} else if ns != nil {
			sub = cmp.Or(sub, ns.Subnet6)
		}
		if sub.IsValid() {
			out = append(out, namedPrefix{n.Name, sub})
		}
	}
	hostUsed, err := netsetup.HostPrefixes(host, unix.AF_INET6, exceptBridge...)
	return out, hostUsed, err
}

// settleDefaultSubnet returns the default network's subnet, choosing and
// storing it if it was not chosen yet. The caller holds the lock.
func (e *Engine) settleDefaultSubnet(host *netlink.Handle) (netip.Prefix, error) {
	if e.Config.Bridge.Subnet.IsValid() {
		return e.Config.Bridge.Subnet, nil
	}
	ns, err := e.Store.GetNet(config.DefaultNetwork)
	if err != nil {
		return netip.Prefix{}, err
	}
	if ns != nil && ns.Subnet.IsValid() {
		return ns.Subnet, nil
	}
	if ns == nil {
		ns = e.Store.NewNet(config.DefaultNetwork)
		ns.Bridge = e.Config.Bridge.Bridge
	}
	def := e.Config.Bridge
	if err := e.chooseSubnet(&def, ns); err != nil {
		return netip.Prefix{}, err
	}
	return ns.Subnet, e.Store.PutNet(ns)
}

// RemoveNetwork deletes a created network and its bridge; it refuses while
// containers are attached.
func (e *Engine) RemoveNetwork(name string) error {
	lock, err := e.lock()
	if err != nil {
		return err
	}
	defer lock.Unlock()
	switch name {
	case config.DefaultNetwork, ModeHost, ModeNone:
		return fmt.Errorf("network %s is predefined and cannot be removed", name)
	}
	if _, ok := e.Config.Networks[name]; ok {
		return fmt.Errorf("network %s is defined in %s: remove it there", name, e.Config.Path)
	}
	def, err := e.Defs.Get(name)
	if err != nil {
		return err
	}
	if def == nil && e.Config.Cluster.Enabled() {
		return e.removeOverlay(name)
	}
	if def == nil {
		return fmt.Errorf("network %s not found", name)
	}
	n, err := def.Network()
	if err != nil {
		return err
	}
	recs, errs := e.Store.List()
	if len(errs) > 0 {
		return errs[0]
	}
	var attached []string
	for _, r := range recs {
		for _, a := range r.Attachments {
			if a.Network == name {
				attached = append(attached, r.Name)
			}
		}
	}
	if len(attached) > 0 {
		return fmt.Errorf("network %s has active endpoints: %s", name, strings.Join(attached, ", "))
	}
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer host.Close()
	if l, err := host.LinkByName(n.Bridge); err == nil && l.Type() == "bridge" {
		if err := host.LinkDel(l); err != nil {
			return fmt.Errorf("delete bridge %s: %w", n.Bridge, err)
		}
	}
	if err := e.Store.DeleteNet(name); err != nil {
		return err
	}
	return e.Defs.Delete(name)
}

// NetworkEndpoint is one container of a network, for `network inspect`.
type NetworkEndpoint struct {
	Name        string `json:"Name"`
	ID          string `json:"EndpointID"`
	IPv4Address string `json:"IPv4Address"`
	IPv6Address string `json:"IPv6Address"`
	MacAddress  string `json:"MacAddress"`
}

// NetworkInfo is `netshim network inspect`'s view of a network.
type NetworkInfo struct {
	Name       string                     `json:"Name"`
	ID         string                     `json:"Id"`
	Driver     string                     `json:"Driver"`
	Subnet     string                     `json:"Subnet"`
	Gateway    string                     `json:"Gateway"`
	IPRange    string                     `json:"IPRange,omitempty"`
	EnableIPv6 bool                       `json:"EnableIPv6"`
	Subnet6    string                     `json:"Subnet6,omitempty"`
	Gateway6   string                     `json:"Gateway6,omitempty"`
	IPRange6   string                     `json:"IPRange6,omitempty"`
	Bridge     string                     `json:"Bridge"`
	Internal   bool                       `json:"Internal"`
	MTU        int                        `json:"MTU"`
	Options    map[string]string          `json:"Options"`
	Containers map[string]NetworkEndpoint `json:"Containers"`
}

// InspectNetwork describes a bridge network and its containers.
func (e *Engine) InspectNetwork(name string) (*NetworkInfo, error) {
	n, err := e.network(name)
	if err != nil {
		return nil, err
	}
	ns, err := e.Store.GetNet(name)
	if err != nil {
		return nil, err
	}
	info := &NetworkInfo{Name: n.Name, ID: n.ID, Driver: "bridge", Bridge: n.Bridge, Internal: n.Internal, MTU: n.MTU,
		Options: map[string]string{"gateway_mode": n.GatewayMode}, Containers: map[string]NetworkEndpoint{}}
	subnet, gw := n.Subnet, n.Gateway
	if !subnet.IsValid() && ns != nil {
		subnet, gw = ns.Subnet, ns.Gateway
	}
	if subnet.IsValid() {
		info.Subnet, info.Gateway = subnet.String(), gw.String()
	}
	if n.IPRange.IsValid() {
		info.IPRange = n.IPRange.String()
	}
	info.EnableIPv6 = n.IPv6
	subnet6, gw6 := n.Subnet6, n.Gateway6
	if !subnet6.IsValid() && ns != nil {
		subnet6, gw6 = ns.Subnet6, ns.Gateway6
	}
	if n.IPv6 && subnet6.IsValid() {
		info.Subnet6, info.Gateway6 = subnet6.String(), gw6.String()
	}
	if n.IPRange6.IsValid() {
		info.IPRange6 = n.IPRange6.String()
	}
	if ns != nil {
		all, err := ns.Allocations()
		if err != nil {
			return nil, err
		}
		for _, id := range all {
			if _, done := info.Containers[id]; done {
				continue // its other address
			}
			rec, ok, err := e.Store.Get(id)
			if err != nil || !ok {
				continue
			}
			for _, a := range rec.Attachments {
				if a.Network != name {
					continue
				}
				ep := NetworkEndpoint{Name: rec.Name, ID: a.HostVeth, MacAddress: a.MAC}
				for _, p := range a.Addrs {
					if p.Addr().Is4() {
						ep.IPv4Address = p.String()
					} else {
						ep.IPv6Address = p.String()
					}
				}
				info.Containers[id] = ep
			}
		}
	}
	return info, nil
}

// chooseSubnet6 settles a dual-stack network's IPv6 subnet, as
// chooseSubnet does the IPv4 one: from the IPv6 pools, or the host's ULA
// pool when none is configured.
func (e *Engine) chooseSubnet6(def *config.Network, ns *state.Net) error {
	if !ns.Subnet6.IsValid() {
		// IPv6 turned on for the network: its rules, installed by its
		// first container, know nothing of it yet.
		if inUse, err := ns.InUse(); err != nil {
			return err
		} else if inUse {
			return fmt.Errorf("network %s: IPv6 turned on while containers are attached; stop them first", def.Name)
		}
	}
	if def.Subnet6.IsValid() {
		return configuredSubnet(def.Name, ns, &ns.Subnet6, &ns.Gateway6, def.Subnet6, def.Gateway6)
	}
	if ns.Subnet6.IsValid() {
		return nil
	}
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer host.Close()
	p, err := e.freeSubnet6(host, def.Name, def.Bridge)
	if err != nil {
		return err
	}
	ns.Subnet6, ns.Gateway6 = p, p.Addr().Next()
	return nil
}

// freeSubnet6 is the first subnet of the IPv6 pools that no other network
// of ours, nor the host's addresses and routes, overlap.
func (e *Engine) freeSubnet6(host *netlink.Handle, name, bridge string) (netip.Prefix, error) {
	nets, used, err := e.subnets6InUse(host, name, bridge)
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, n := range nets {
		used = append(used, n.p)
	}
	pools := e.Config.Pools6
	if len(pools) == 0 {
		id, err := os.ReadFile("/etc/machine-id")
		if err != nil || len(bytes.TrimSpace(id)) == 0 {
			h, _ := os.Hostname()
			id = []byte(h)
		}
		pools = []config.Pool{config.ULAPool(bytes.TrimSpace(id))}
	}
	p, err := netsetup.ChoosePool(pools, used)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("network %s: IPv6 %w", name, err)
	}
	return p, nil
}

// configuredSubnet settles a subnet and gateway the network's definition
// gives into its state (*sub, *gw, of either family), refusing a change
// while containers are attached.
func configuredSubnet(name string, ns *state.Net, sub *netip.Prefix, gw *netip.Addr, want netip.Prefix, wantGW netip.Addr) error {
	if sub.IsValid() && (*sub != want || *gw != wantGW) {
		if inUse, err := ns.InUse(); err != nil {
			return err
		} else if inUse {
			return fmt.Errorf("network %s: subnet changed from %s to %s while containers are attached; stop them first", name, *sub, want)
		}
	}
	*sub, *gw = want, wantGW
	return nil
}

// chooseSubnet settles the network's subnet: the configured one, else the
// one chosen before (kept stable), else the address already on the bridge,
// else the first free pool.
func (e *Engine) chooseSubnet(def *config.Network, ns *state.Net) error {
	if def.Subnet.IsValid() {
		return configuredSubnet(def.Name, ns, &ns.Subnet, &ns.Gateway, def.Subnet, def.Gateway)
	}
	if ns.Subnet.IsValid() {
		return nil
	}
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer host.Close()
	if l, err := host.LinkByName(def.Bridge); err == nil {
		addrs, err := host.AddrList(l, unix.AF_INET)
		if err == nil && len(addrs) > 0 {
			a, _ := netip.AddrFromSlice(addrs[0].IP.To4())
			ones, _ := addrs[0].Mask.Size()
			ns.Subnet, ns.Gateway = netip.PrefixFrom(a, ones).Masked(), a
			return nil
		}
	}
	used, err := netsetup.HostPrefixes(host, unix.AF_INET, def.Bridge)
	if err != nil {
		return err
	}
	nets, err := e.UserNetworks()
	if err != nil {
		return err
	}
	for _, n := range nets {
		used = append(used, n.Subnet)
	}
	p, err := netsetup.ChoosePool(e.Config.Pools, used)
	if err != nil {
		return fmt.Errorf("network %s: %w", def.Name, err)
	}
	ns.Subnet, ns.Gateway = p, p.Addr().Next()
	return nil
}
