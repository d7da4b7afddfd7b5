// Package firewall installs netshim's rules, as data behind one interface
// with two backends: nftables (nftables.go, nftrules.go, publish_nft.go:
// netshim's own table, through netlink) and iptables (iptables.go: chains
// of its own, through go-iptables). A new backend implements Firewall in a
// file of its own here.
package firewall

import (
	"fmt"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/state"
)

// NetRules is what a network needs from the firewall (recorded in its
// state: see state.NetRules).
type NetRules = state.NetRules

// RulesFor derives a network's firewall needs from its definition, its
// subnets and gateways as settled in s, and the host's trusted interfaces.
func RulesFor(n *config.Network, s *state.Net, trusted []string) NetRules {
	r := NetRules{
		Name:       n.Name,
		Bridge:     n.Bridge,
		Subnet:     s.Subnet,
		Gateway:    s.Gateway,
		Subnet6:    s.Subnet6,
		Gateway6:   s.Gateway6,
		Mode:       n.GatewayMode,
		Masquerade: n.Masquerade && !n.Internal,
		Internal:   n.Internal,
		DNS:        !n.Default,
	}
	if r.Mode == "" {
		r.Mode = config.GatewayNAT
	}
	if r.Mode == config.GatewayNAT {
		r.Trusted = trusted
	}
	if o := s.Overlay; o != nil {
		r.Overlay = &state.OverlayRules{Subnet: o.Subnet, VXLAN: o.VXLAN, VNI: o.VNI}
		for _, p := range o.Peers {
			r.Overlay.Peers = append(r.Overlay.Peers, p.Underlay)
		}
	}
	return r
}

// NetworkState is one network's rules as recorded: what they are made of,
// and the objects the backend returned when it installed them.
type NetworkState struct {
	Rules     NetRules
	Installed []string
}

// Ruleset is everything of ours a backend should have, as the state
// records it: every network's rules and every container's ports.
type Ruleset struct {
	Networks []NetworkState
	Ports    []PortRules
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
	// AddPorts publishes a container's ports.
	AddPorts(p PortRules) error
	// RemovePorts withdraws them; ports already gone are not an error.
	RemovePorts(p PortRules) error
	// Present reports, with one cheap look, whether network n's rules
	// are still in place: a flush of the host's ruleset removes them
	// (nft flush ruleset, iptables -F, a firewalld reload). A hook asks
	// before it relies on them.
	Present(n NetRules) (bool, error)
	// Reload re-creates everything of ours exactly as s names it, in one
	// batch, replacing what is there. It returns each network's
	// installed objects, to record.
	Reload(s Ruleset) (installed map[string][]string, err error)
	// Missing lists what of s is not in place, for `netshim doctor`.
	Missing(s Ruleset) ([]string, error)
}

// DefaultBackend is the backend of a state that names none.
const DefaultBackend = config.FirewallNftables

// New returns the backend named in the config.
func New(name string) (Firewall, error) {
	switch name {
	case config.FirewallNftables, "":
		return &Nftables{}, nil
	case config.FirewallIptables:
		return &Iptables{}, nil
	default:
		return nil, fmt.Errorf("firewall backend %q is not available", name)
	}
}
