package netsetup

import (
	"fmt"
	"net/netip"

	"github.com/netshim/netshim/config"
)

// NetRules is what a network needs from the firewall.
type NetRules struct {
	Name   string
	Bridge string
	Subnet netip.Prefix
	// Masquerade: traffic from the subnet leaving through another
	// interface is source-NATed (ip_masquerade).
	Masquerade bool
	// Internal drops traffic between the bridge and any other interface.
	Internal bool
}

// RulesFor derives a network's firewall needs from its definition.
func RulesFor(n *config.Network, subnet netip.Prefix) NetRules {
	return NetRules{
		Name:       n.Name,
		Bridge:     n.Bridge,
		Subnet:     subnet,
		Masquerade: n.Masquerade && !n.Internal,
		Internal:   n.Internal,
	}
}

// Firewall installs and removes netshim's rules. Every method is one atomic
// change; what it installed is returned as opaque object names that are
// stored in the state and handed back for removal, so teardown never
// recomputes names.
type Firewall interface {
	// Name is the backend's config name.
	Name() string
	// NetworkObjects names what EnsureNetwork(n) will install, so the
	// intent can be recorded before the change is made.
	NetworkObjects(n NetRules) []string
	// EnsureNetwork installs n's rules, replacing those named in prev.
	EnsureNetwork(n NetRules, prev []string) (installed []string, err error)
	// RemoveNetwork removes what EnsureNetwork installed. With last, no
	// network remains and netshim's own tables go too.
	RemoveNetwork(installed []string, last bool) error
	// AddPorts publishes a container's ports (DNAT to it).
	AddPorts(p PortRules) error
	// RemovePorts withdraws them; ports already gone are not an error.
	RemovePorts(p PortRules) error
}

// NewFirewall returns the backend named in the config.
func NewFirewall(name string) (Firewall, error) {
	switch name {
	case config.FirewallNftables, "":
		return &Nftables{}, nil
	case config.FirewallIptables:
		return newIptables()
	default:
		return nil, fmt.Errorf("firewall backend %q is not available", name)
	}
}
