package state

import "net/netip"

// NetRules is what a network's firewall rules are made from. It is recorded
// with the network when its rules are installed, so that `netshim reload`
// re-creates exactly the rules teardown will remove, whatever the config
// says by then.
type NetRules struct {
	Name    string       `json:"name"`
	Bridge  string       `json:"bridge"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	// Subnet6 and Gateway6 are the network's IPv6 subnet and address, if
	// it is dual stack: its rules then cover IPv6 too.
	Subnet6  netip.Prefix `json:"subnet6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	// Mode is the network's gateway mode (config.Gateway*).
	Mode string `json:"mode"`
	// Masquerade: traffic from the subnet leaving through another
	// interface is source-NATed.
	Masquerade bool `json:"masquerade,omitempty"`
	// Internal drops traffic between the bridge and any other interface.
	Internal bool `json:"internal,omitempty"`
	// DNS says the network's responder listens on Gateway: an isolated
	// network lets its containers' queries through to it.
	DNS bool `json:"dns,omitempty"`
	// Trusted are host interfaces whose traffic may reach the containers'
	// published ports directly, by address, in nat mode.
	Trusted []string `json:"trusted,omitempty"`
	// Overlay is set on an overlay network: its subnet of every host,
	// reached through its VXLAN device, whose port takes packets of its
	// VNI from its peers' underlay addresses only.
	Overlay *OverlayRules `json:"overlay,omitempty"`
}

// OverlayRules are an overlay network's own firewall needs.
type OverlayRules struct {
	Subnet netip.Prefix `json:"subnet"`
	VXLAN  string       `json:"vxlan"`
	VNI    uint32       `json:"vni"`
	Peers  []netip.Addr `json:"peers,omitempty"`
}
