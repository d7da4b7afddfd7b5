// Package config loads netshim's TOML configuration: the default network
// `bridge` (daemon.json's keys in snake_case), user-defined networks under
// [networks.NAME], and global settings. Loading is decode → defaults →
// canonicalize → validate; every rejection names the key and the value.
package config

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/netshim/netshim/internal/cidr"
	"github.com/netshim/netshim/internal/fastio"
	"github.com/netshim/netshim/internal/names"
)

// DefaultPath is where the config is read from when none is named.
const DefaultPath = "/etc/netshim/netshim.toml"

// DefaultStateDir is the state directory when neither flag, environment nor
// config names one. It is on tmpfs: container state does not outlive a boot.
const DefaultStateDir = "/run/netshim"

// DefaultDataDir holds what must survive a reboot: networks made with
// `netshim network create`.
const DefaultDataDir = "/var/lib/netshim"

// DefaultNetwork is the name of the default network, as in Docker.
const DefaultNetwork = "bridge"

// DefaultBridgeDevice is the bridge device of the default network. It is not
// docker0 so that netshim and a Docker daemon can live on one host.
const DefaultBridgeDevice = "netshim0"

// Firewall backend names.
const (
	FirewallNftables = "nftables"
	FirewallIptables = "iptables"
)

// Gateway modes of a bridge network, as Docker's
// com.docker.network.bridge.gateway_mode_ipv4: how the outside reaches the
// network's containers and how they reach it.
const (
	// GatewayNAT masquerades traffic leaving the network and drops, before
	// NAT, every packet for the network's addresses that did not come in on
	// its bridge: only published ports reach containers from outside.
	GatewayNAT = "nat"
	// GatewayNATUnprotected masquerades too but lets the outside reach
	// every container port directly (Docker's legacy behaviour).
	GatewayNATUnprotected = "nat-unprotected"
	// GatewayRouted neither masquerades nor maps host ports: containers are
	// reached by their own address, on published ports only.
	GatewayRouted = "routed"
	// GatewayIsolated has no way in or out, not even from the host.
	GatewayIsolated = "isolated"
)

// GatewayModes lists the gateway modes, for messages.
const GatewayModes = "nat, nat-unprotected, routed or isolated"

// File is the TOML document as written by the user.
type File struct {
	StateDir              string                  `toml:"state_dir"`
	DataDir               string                  `toml:"data_dir"`
	Firewall              string                  `toml:"firewall"`
	IPLocalPortRange      string                  `toml:"ip_local_port_range"`
	TrustedHostInterfaces []string                `toml:"trusted_host_interfaces"`
	Bridge                BridgeFile              `toml:"bridge"`
	Networks              map[string]*NetworkFile `toml:"networks"`
	Cluster               ClusterFile             `toml:"cluster"`
}

// BridgeFile holds daemon.json's bridge keys in snake_case.
type BridgeFile struct {
	Bridge              string     `toml:"bridge"`
	BIP                 string     `toml:"bip"`
	FixedCIDR           string     `toml:"fixed_cidr"`
	MTU                 int        `toml:"mtu"`
	DefaultGateway      string     `toml:"default_gateway"`
	DNS                 []string   `toml:"dns"`
	DNSSearch           []string   `toml:"dns_search"`
	DNSOptions          []string   `toml:"dns_opts"`
	ICC                 *bool      `toml:"icc"`
	IPMasquerade        *bool      `toml:"ip_masquerade"`
	GatewayMode         string     `toml:"gateway_mode"`
	DefaultAddressPools []PoolFile `toml:"default_address_pools"`
	// IPv6 gives the default network an IPv6 subnet too: fixed_cidr_v6,
	// else bip6's, else one from the IPv6 pools.
	IPv6        bool   `toml:"ipv6"`
	FixedCIDRv6 string `toml:"fixed_cidr_v6"`
	BIP6        string `toml:"bip6"`
}

// PoolFile is one entry of default_address_pools: subnets of prefix length
// Size carved out of Base.
type PoolFile struct {
	Base string `toml:"base"`
	Size int    `toml:"size"`
}

// NetworkFile is a user-defined network as written in [networks.NAME].
type NetworkFile struct {
	Subnet      string   `toml:"subnet"`
	Gateway     string   `toml:"gateway"`
	IPRange     string   `toml:"ip_range"`
	Internal    bool     `toml:"internal"`
	MTU         int      `toml:"mtu"`
	Bridge      string   `toml:"bridge"`
	ICC         *bool    `toml:"icc"`
	DNS         []string `toml:"dns"`
	GatewayMode string   `toml:"gateway_mode"`
	// IPv6 gives the network an IPv6 subnet too: subnet6, else one from
	// the IPv6 pools.
	IPv6     bool   `toml:"ipv6"`
	Subnet6  string `toml:"subnet6"`
	Gateway6 string `toml:"gateway6"`
	IPRange6 string `toml:"ip_range6"`
}

// Pool is a canonical address pool.
type Pool struct {
	Base netip.Prefix
	Size int
}

// Network is a canonical network definition, ready for setup.
type Network struct {
	Name string
	// ID is the 64-hex network id (derived from the name for networks of
	// the file, random for created ones).
	ID string
	// Bridge is the bridge device name.
	Bridge string
	// Subnet is the masked subnet; invalid when it is to be chosen from Pools
	// at first use (the default network without bip).
	Subnet netip.Prefix
	// Gateway is the bridge's address; invalid together with Subnet.
	Gateway netip.Addr
	// IPRange restricts allocation (fixed_cidr, ip_range); invalid means the
	// whole subnet.
	IPRange netip.Prefix
	// DefaultGateway, when valid, is the containers' default route instead of
	// Gateway (daemon.json default_gateway).
	DefaultGateway netip.Addr
	MTU            int
	DNS            []netip.Addr
	DNSSearch      []string
	DNSOptions     []string
	ICC            bool
	Masquerade     bool
	Internal       bool
	// GatewayMode is one of the Gateway* modes.
	GatewayMode string
	// Default marks the default network `bridge`.
	Default bool
	// IPv6 says the network is dual stack. Subnet6 and Gateway6 are its
	// IPv6 subnet and the bridge's address in it, invalid when the
	// subnet is to be chosen from the IPv6 pools at first use; IPRange6
	// restricts allocation in it.
	IPv6     bool
	Subnet6  netip.Prefix
	Gateway6 netip.Addr
	IPRange6 netip.Prefix
}

// Config is the canonical configuration.
type Config struct {
	// Path is the file it was read from; empty for built-in defaults.
	Path     string
	StateDir string
	// DataDir keeps created networks across reboots.
	DataDir  string
	Firewall string
	// PortRange is the range random host ports come from; zero means the
	// kernel's net.ipv4.ip_local_port_range.
	PortRange [2]int
	// Bridge is the default network.
	Bridge Network
	// Pools are the candidate subnets for networks created without one.
	Pools []Pool
	// Pools6 are the candidate IPv6 subnets; empty means the host's own
	// ULA pool (ULAPool).
	Pools6 []Pool
	// Networks are the user-defined networks of the file, by name.
	Networks map[string]Network
	// TrustedHostInterfaces are host interfaces whose traffic may reach
	// containers of nat-mode networks directly, by address (Docker's
	// trusted_host_interfaces), published ports only.
	TrustedHostInterfaces []string
	// Cluster is how this host reaches the etcd cluster of overlay
	// networks.
	Cluster Cluster
}

// Error is a configuration error naming the file, key and value.
type Error struct {
	File   string
	Key    string
	Value  string
	Reason string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("config")
	if e.File != "" {
		b.WriteString(" " + e.File)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		if e.Value != "" {
			fmt.Fprintf(&b, " = %q", e.Value)
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// DockerPools is Docker's default-address-pools list.
func DockerPools() []Pool {
	var pools []Pool
	for i := 17; i <= 31; i++ {
		pools = append(pools, Pool{Base: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(i), 0, 0}), 16), Size: 16})
	}
	pools = append(pools, Pool{Base: netip.MustParsePrefix("192.168.0.0/16"), Size: 20})
	return pools
}

// Load reads the config at path. A missing file is an error only when
// explicit is set (the user named it); otherwise built-in defaults apply.
func Load(path string, explicit bool) (*Config, error) {
	data, err := fastio.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !explicit {
			return Parse("", nil)
		}
		return nil, &Error{File: path, Reason: fmt.Sprintf("cannot read: %v", errors.Unwrap(err))}
	}
	return Parse(path, data)
}

// Parse decodes, defaults, canonicalizes and validates a TOML document. path
// is used in error messages only.
func Parse(path string, data []byte) (*Config, error) {
	var f File
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, &Error{File: path, Reason: oneLine(err)}
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return nil, &Error{File: path, Key: keys[0], Reason: "unknown key"}
	}
	c, err := canonicalize(&f)
	if err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			ce.File = path
		}
		return nil, err
	}
	c.Path = path
	return c, nil
}

func oneLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimPrefix(s, "toml: ")
}

func canonicalize(f *File) (*Config, error) {
	c := &Config{
		StateDir: f.StateDir,
		Firewall: f.Firewall,
		Networks: map[string]Network{},
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	} else if !strings.HasPrefix(c.StateDir, "/") {
		return nil, &Error{Key: "state_dir", Value: f.StateDir, Reason: "must be an absolute path"}
	}
	c.DataDir = f.DataDir
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	} else if !strings.HasPrefix(c.DataDir, "/") {
		return nil, &Error{Key: "data_dir", Value: f.DataDir, Reason: "must be an absolute path"}
	}
	switch c.Firewall {
	case "":
		c.Firewall = FirewallNftables
	case FirewallNftables, FirewallIptables:
	default:
		return nil, &Error{Key: "firewall", Value: f.Firewall, Reason: `must be "nftables" or "iptables"`}
	}
	if f.IPLocalPortRange != "" {
		var lo, hi int
		if n, err := fmt.Sscanf(f.IPLocalPortRange, "%d-%d", &lo, &hi); n != 2 || err != nil || lo < 1 || hi > 65535 || lo > hi {
			return nil, &Error{Key: "ip_local_port_range", Value: f.IPLocalPortRange, Reason: `must be "LOW-HIGH" within 1-65535`}
		}
		c.PortRange = [2]int{lo, hi}
	}
	for _, name := range f.TrustedHostInterfaces {
		if err := checkIfName("trusted_host_interfaces", name); err != nil {
			return nil, err
		}
		c.TrustedHostInterfaces = append(c.TrustedHostInterfaces, name)
	}

	cluster, err := canonCluster(&f.Cluster)
	if err != nil {
		return nil, err
	}
	c.Cluster = cluster

	pools, pools6, err := canonPools(f.Bridge.DefaultAddressPools)
	if err != nil {
		return nil, err
	}
	c.Pools, c.Pools6 = pools, pools6

	br, err := canonBridge(&f.Bridge)
	if err != nil {
		return nil, err
	}
	c.Bridge = br

	names := make([]string, 0, len(f.Networks))
	for name := range f.Networks {
		names = append(names, name)
	}
	sort.Strings(names)
	devices := map[string]string{br.Bridge: DefaultNetwork}
	for _, name := range names {
		n, err := canonNetwork(name, f.Networks[name])
		if err != nil {
			return nil, err
		}
		if other, ok := devices[n.Bridge]; ok {
			return nil, &Error{Key: "networks." + name + ".bridge", Value: n.Bridge, Reason: "already used by network " + other}
		}
		devices[n.Bridge] = name
		for _, o := range c.Networks {
			if o.Subnet.Overlaps(n.Subnet) {
				return nil, &Error{Key: "networks." + name + ".subnet", Value: n.Subnet.String(), Reason: "overlaps network " + o.Name}
			}
		}
		if br.Subnet.IsValid() && br.Subnet.Overlaps(n.Subnet) {
			return nil, &Error{Key: "networks." + name + ".subnet", Value: n.Subnet.String(), Reason: "overlaps the default network's bip"}
		}
		if n.Subnet6.IsValid() {
			for _, o := range c.Networks {
				if o.Subnet6.Overlaps(n.Subnet6) {
					return nil, &Error{Key: "networks." + name + ".subnet6", Value: n.Subnet6.String(), Reason: "overlaps network " + o.Name}
				}
			}
			if br.Subnet6.Overlaps(n.Subnet6) {
				return nil, &Error{Key: "networks." + name + ".subnet6", Value: n.Subnet6.String(), Reason: "overlaps the default network's IPv6 subnet"}
			}
		}
		c.Networks[name] = n
	}
	return c, nil
}

// canonPools splits default_address_pools by family. Without IPv4 pools,
// Docker's apply; without IPv6 ones, the host's ULA pool (see ULAPool).
func canonPools(in []PoolFile) (v4, v6 []Pool, err error) {
	for i, p := range in {
		key := fmt.Sprintf("bridge.default_address_pools[%d]", i)
		base, err := netip.ParsePrefix(p.Base)
		if err != nil {
			return nil, nil, &Error{Key: key + ".base", Value: p.Base, Reason: "not a CIDR"}
		}
		longest := 30
		if base.Addr().Is6() {
			longest = 124
		}
		if p.Size < base.Bits() || p.Size > longest {
			return nil, nil, &Error{Key: key + ".size", Value: fmt.Sprint(p.Size), Reason: fmt.Sprintf("must be between %d and %d", base.Bits(), longest)}
		}
		if base.Addr().Is4() {
			v4 = append(v4, Pool{Base: base.Masked(), Size: p.Size})
		} else {
			v6 = append(v6, Pool{Base: base.Masked(), Size: p.Size})
		}
	}
	if len(v4) == 0 {
		v4 = DockerPools()
	}
	return v4, v6, nil
}

// ULAPool is the IPv6 pool of a host without IPv6 pools configured, as
// Docker derives it: a /48 of unique local addresses, fd00::/8 with the
// next 40 bits from a hash of the host's id (machine-id), split in /64s.
func ULAPool(hostID []byte) Pool {
	sum := sha256.Sum256(hostID)
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], sum[:5])
	return Pool{Base: netip.PrefixFrom(netip.AddrFrom16(a), 48), Size: 64}
}

func canonBridge(b *BridgeFile) (Network, error) {
	n := Network{
		Name:       DefaultNetwork,
		ID:         NetworkID(DefaultNetwork),
		Bridge:     b.Bridge,
		MTU:        b.MTU,
		DNSSearch:  b.DNSSearch,
		DNSOptions: b.DNSOptions,
		ICC:        boolOr(b.ICC, true),
		Masquerade: boolOr(b.IPMasquerade, true),
		Default:    true,
	}
	if n.Bridge == "" {
		n.Bridge = DefaultBridgeDevice
	}
	if err := checkIfName("bridge.bridge", n.Bridge); err != nil {
		return n, err
	}
	if err := checkMTU("bridge.mtu", &n.MTU); err != nil {
		return n, err
	}
	dns, err := parseAddrs("bridge.dns", b.DNS)
	if err != nil {
		return n, err
	}
	n.DNS = dns
	if err := applyGatewayMode("bridge.gateway_mode", b.GatewayMode, &n); err != nil {
		return n, err
	}
	if b.BIP != "" {
		p, err := netip.ParsePrefix(b.BIP)
		if err != nil || !p.Addr().Is4() {
			return n, &Error{Key: "bridge.bip", Value: b.BIP, Reason: "not an IPv4 address with prefix length (like 172.17.0.1/16)"}
		}
		if p.Bits() > 30 {
			return n, &Error{Key: "bridge.bip", Value: b.BIP, Reason: "prefix too long: a /30 is the smallest usable subnet"}
		}
		n.Subnet, n.Gateway = p.Masked(), p.Addr()
		if n.Gateway == n.Subnet.Addr() || n.Gateway == cidr.Last(n.Subnet) {
			return n, &Error{Key: "bridge.bip", Value: b.BIP, Reason: "the bridge address cannot be the network or broadcast address"}
		}
	}
	if b.FixedCIDR != "" {
		p, err := netip.ParsePrefix(b.FixedCIDR)
		if err != nil || !p.Addr().Is4() {
			return n, &Error{Key: "bridge.fixed_cidr", Value: b.FixedCIDR, Reason: "not an IPv4 CIDR"}
		}
		p = p.Masked()
		if !n.Subnet.IsValid() {
			return n, &Error{Key: "bridge.fixed_cidr", Value: b.FixedCIDR, Reason: "needs bridge.bip to be set"}
		}
		if !cidr.Within(p, n.Subnet) {
			return n, &Error{Key: "bridge.fixed_cidr", Value: b.FixedCIDR, Reason: "outside bip " + n.Subnet.String()}
		}
		n.IPRange = p
	}
	if b.DefaultGateway != "" {
		a, err := netip.ParseAddr(b.DefaultGateway)
		if err != nil || !a.Is4() {
			return n, &Error{Key: "bridge.default_gateway", Value: b.DefaultGateway, Reason: "not an IPv4 address"}
		}
		if !n.Subnet.IsValid() {
			return n, &Error{Key: "bridge.default_gateway", Value: b.DefaultGateway, Reason: "needs bridge.bip to be set"}
		}
		if !n.Subnet.Contains(a) {
			return n, &Error{Key: "bridge.default_gateway", Value: b.DefaultGateway, Reason: "outside bip " + n.Subnet.String()}
		}
		n.DefaultGateway = a
	}
	return n, canonBridge6(b, &n)
}

// canonBridge6 settles the default network's IPv6 keys: bip6 is the
// bridge's address and subnet, fixed_cidr_v6 where containers' addresses
// come from (the subnet too, without bip6).
func canonBridge6(b *BridgeFile, n *Network) error {
	if !b.IPv6 {
		for _, k := range [][2]string{{"bridge.fixed_cidr_v6", b.FixedCIDRv6}, {"bridge.bip6", b.BIP6}} {
			if k[1] != "" {
				return &Error{Key: k[0], Value: k[1], Reason: "needs bridge.ipv6 = true"}
			}
		}
		return nil
	}
	n.IPv6 = true
	if b.BIP6 != "" {
		p, err := prefix6("bridge.bip6", b.BIP6, "an IPv6 address with prefix length (like fd00:1::1/64)")
		if err != nil {
			return err
		}
		n.Subnet6, n.Gateway6 = p.Masked(), p.Addr()
		if n.Gateway6 == n.Subnet6.Addr() {
			return &Error{Key: "bridge.bip6", Value: b.BIP6, Reason: "the bridge address cannot be the subnet's first address"}
		}
	}
	if b.FixedCIDRv6 != "" {
		p, err := prefix6("bridge.fixed_cidr_v6", b.FixedCIDRv6, "an IPv6 CIDR")
		if err != nil {
			return err
		}
		p = p.Masked()
		switch {
		case !n.Subnet6.IsValid():
			n.Subnet6, n.Gateway6 = p, p.Addr().Next()
		case !cidr.Within(p, n.Subnet6):
			return &Error{Key: "bridge.fixed_cidr_v6", Value: b.FixedCIDRv6, Reason: "outside bip6 " + n.Subnet6.String()}
		default:
			n.IPRange6 = p
		}
	}
	return nil
}

// prefix6 parses an IPv6 prefix with room for a gateway and a container.
func prefix6(key, value, want string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(value)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
		return p, &Error{Key: key, Value: value, Reason: "not " + want}
	}
	if p.Bits() > 124 {
		return p, &Error{Key: key, Value: value, Reason: "prefix too long: a /124 is the smallest usable subnet"}
	}
	return p, nil
}

// CheckNetworkName validates a user-defined network's name as Docker does.
func CheckNetworkName(name string) error {
	switch {
	case !names.Valid(name, "_.-", 64):
		return fmt.Errorf("invalid network name %q: use letters, digits, '_', '.', '-', at most 64", name)
	case name == DefaultNetwork || name == "host" || name == "none":
		return fmt.Errorf("network name %q is reserved", name)
	}
	return nil
}

// NetworkFromFile canonicalizes and validates one user-defined network, as
// in [networks.NAME]; id gives the default bridge name (NetworkID(name) for
// networks of the file).
func NetworkFromFile(name, id string, f *NetworkFile) (Network, error) {
	return canonNetworkID(name, id, f)
}

func canonNetwork(name string, f *NetworkFile) (Network, error) {
	return canonNetworkID(name, NetworkID(name), f)
}

func canonNetworkID(name, id string, f *NetworkFile) (Network, error) {
	key := "networks." + name
	if err := CheckNetworkName(name); err != nil {
		return Network{}, &Error{Key: key, Reason: err.Error()}
	}
	n := Network{
		Name:       name,
		Bridge:     f.Bridge,
		MTU:        f.MTU,
		Internal:   f.Internal,
		ICC:        boolOr(f.ICC, true),
		Masquerade: !f.Internal,
	}
	if f.Subnet == "" {
		return n, &Error{Key: key + ".subnet", Reason: "required"}
	}
	p, err := netip.ParsePrefix(f.Subnet)
	if err != nil || !p.Addr().Is4() {
		return n, &Error{Key: key + ".subnet", Value: f.Subnet, Reason: "not an IPv4 CIDR"}
	}
	if p.Bits() > 30 {
		return n, &Error{Key: key + ".subnet", Value: f.Subnet, Reason: "prefix too long: a /30 is the smallest usable subnet"}
	}
	n.Subnet = p.Masked()
	n.Gateway = n.Subnet.Addr().Next()
	if f.Gateway != "" {
		a, err := netip.ParseAddr(f.Gateway)
		if err != nil || !a.Is4() {
			return n, &Error{Key: key + ".gateway", Value: f.Gateway, Reason: "not an IPv4 address"}
		}
		if !n.Subnet.Contains(a) || a == n.Subnet.Addr() || a == cidr.Last(n.Subnet) {
			return n, &Error{Key: key + ".gateway", Value: f.Gateway, Reason: "outside subnet " + n.Subnet.String()}
		}
		n.Gateway = a
	}
	if f.IPRange != "" {
		r, err := netip.ParsePrefix(f.IPRange)
		if err != nil || !r.Addr().Is4() {
			return n, &Error{Key: key + ".ip_range", Value: f.IPRange, Reason: "not an IPv4 CIDR"}
		}
		r = r.Masked()
		if !cidr.Within(r, n.Subnet) {
			return n, &Error{Key: key + ".ip_range", Value: f.IPRange, Reason: "outside subnet " + n.Subnet.String()}
		}
		n.IPRange = r
	}
	if n.Bridge == "" {
		n.Bridge = BridgeNameFor(id)
	}
	n.ID = id
	if err := checkIfName(key+".bridge", n.Bridge); err != nil {
		return n, err
	}
	if err := checkMTU(key+".mtu", &n.MTU); err != nil {
		return n, err
	}
	dns, err := parseAddrs(key+".dns", f.DNS)
	if err != nil {
		return n, err
	}
	n.DNS = dns
	if err := applyGatewayMode(key+".gateway_mode", f.GatewayMode, &n); err != nil {
		return n, err
	}
	return n, canonNetwork6(key, f, &n)
}

// canonNetwork6 settles a user network's IPv6 keys.
func canonNetwork6(key string, f *NetworkFile, n *Network) error {
	if !f.IPv6 {
		for _, k := range [][2]string{{".subnet6", f.Subnet6}, {".gateway6", f.Gateway6}, {".ip_range6", f.IPRange6}} {
			if k[1] != "" {
				return &Error{Key: key + k[0], Value: k[1], Reason: "needs " + key + ".ipv6 = true"}
			}
		}
		return nil
	}
	n.IPv6 = true
	if f.Subnet6 == "" {
		for _, k := range [][2]string{{".gateway6", f.Gateway6}, {".ip_range6", f.IPRange6}} {
			if k[1] != "" {
				return &Error{Key: key + k[0], Value: k[1], Reason: "needs " + key + ".subnet6"}
			}
		}
		return nil // chosen from the IPv6 pools
	}
	p, err := prefix6(key+".subnet6", f.Subnet6, "an IPv6 CIDR")
	if err != nil {
		return err
	}
	n.Subnet6 = p.Masked()
	n.Gateway6 = n.Subnet6.Addr().Next()
	if f.Gateway6 != "" {
		a, err := netip.ParseAddr(f.Gateway6)
		if err != nil || !a.Is6() || a.Is4In6() {
			return &Error{Key: key + ".gateway6", Value: f.Gateway6, Reason: "not an IPv6 address"}
		}
		if !n.Subnet6.Contains(a) || a == n.Subnet6.Addr() {
			return &Error{Key: key + ".gateway6", Value: f.Gateway6, Reason: "outside subnet6 " + n.Subnet6.String()}
		}
		n.Gateway6 = a
	}
	if f.IPRange6 != "" {
		r, err := prefix6(key+".ip_range6", f.IPRange6, "an IPv6 CIDR")
		if err != nil {
			return err
		}
		if r = r.Masked(); !cidr.Within(r, n.Subnet6) {
			return &Error{Key: key + ".ip_range6", Value: f.IPRange6, Reason: "outside subnet6 " + n.Subnet6.String()}
		}
		n.IPRange6 = r
	}
	return nil
}

// CheckGatewayMode reports whether mode is a gateway mode ("" is nat).
func CheckGatewayMode(mode string) error {
	switch mode {
	case "", GatewayNAT, GatewayNATUnprotected, GatewayRouted, GatewayIsolated:
		return nil
	}
	return fmt.Errorf("must be %s", GatewayModes)
}

// applyGatewayMode sets n's gateway mode (nat when empty) and what it
// implies: no masquerade unless NAT, and no way out when isolated (Docker
// allows isolated only on internal networks; here it makes one).
func applyGatewayMode(key, mode string, n *Network) error {
	switch mode {
	case "":
		mode = GatewayNAT
	case GatewayNAT, GatewayNATUnprotected, GatewayRouted:
	case GatewayIsolated:
		n.Internal = true
	default:
		return &Error{Key: key, Value: mode, Reason: "must be " + GatewayModes}
	}
	n.GatewayMode = mode
	if n.Internal || mode == GatewayRouted {
		n.Masquerade = false
	}
	return nil
}

func checkIfName(key, name string) error {
	if len(name) == 0 || len(name) > 15 || strings.ContainsAny(name, "/ \t\n:") {
		return &Error{Key: key, Value: name, Reason: "not a valid interface name (1-15 characters, no '/', ':' or spaces)"}
	}
	return nil
}

func checkMTU(key string, mtu *int) error {
	if *mtu == 0 {
		*mtu = 1500
		return nil
	}
	if *mtu < 68 || *mtu > 65535 {
		return &Error{Key: key, Value: fmt.Sprint(*mtu), Reason: "must be between 68 and 65535"}
	}
	return nil
}

func parseAddrs(key string, in []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range in {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, &Error{Key: key, Value: s, Reason: "not an IP address"}
		}
		out = append(out, a)
	}
	return out, nil
}

func boolOr(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}
