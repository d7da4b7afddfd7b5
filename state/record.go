package state

import (
	"net/netip"
	"time"
)

// Phase says how far setup got. A record is written in PhaseCreating before
// anything is created, so a crash leaves a record that names what may exist.
type Phase string

// Phases of a record.
const (
	PhaseCreating Phase = "creating"
	PhaseReady    Phase = "ready"
)

// Process identifies a process across PID reuse: its PID and the time it
// started, in clock ticks since boot.
type Process struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// Container identifies a container: its process, and its network
// namespace (device and inode of its nsfs file). The kernel reuses netns
// inode numbers as soon as a namespace is gone, so the inode alone never
// tells one container from the next.
type Container struct {
	Process
	NetnsDev uint64 `json:"netns_dev,omitempty"`
	NetnsIno uint64 `json:"netns_ino,omitempty"`
}

// Record is what setup created for one container: teardown, gc and reload
// work from it alone, never from recomputed names.
type Record struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Mode is the container's network mode: bridge (its attachments),
	// none or host.
	Mode    string    `json:"mode"`
	Phase   Phase     `json:"phase"`
	Created time.Time `json:"created"`
	Bundle  string    `json:"bundle,omitempty"`
	// Owner is the hook doing the setup, while Phase is creating.
	Owner *Process `json:"owner,omitempty"`
	// Cancelled says a teardown came while the setup was in flight: the
	// setup undoes itself when it sees it.
	Cancelled bool `json:"cancelled,omitempty"`
	// Container is the container the record is for.
	Container Container `json:"container"`
	// Attachments are the container's networks, in the order of its
	// interfaces.
	Attachments []Attachment `json:"attachments,omitempty"`
	// Links are the `IP alias name` entries written to /etc/hosts.
	Links []Link `json:"links,omitempty"`
	// Files are the host paths of the files setup wrote for the container.
	Files []string `json:"files,omitempty"`
}

// Attachment is a container's place on one network.
type Attachment struct {
	Network string `json:"network"`
	// Driver is the kind of network (bridge, host, none).
	Driver string `json:"driver"`
	// Interface is the container's interface (eth0), "" for host and none.
	Interface string `json:"interface,omitempty"`
	// Bridge is the network's bridge device; HostVeth the host end of the
	// container's veth pair.
	Bridge   string `json:"bridge,omitempty"`
	HostVeth string `json:"host_veth,omitempty"`
	MAC      string `json:"mac,omitempty"`
	// Addrs are the container's addresses on the network, with their
	// prefix length.
	Addrs []netip.Prefix `json:"addrs,omitempty"`
	// Gateway is the network's address on its bridge; Route the
	// container's default route (invalid: none, as on internal networks).
	Gateway netip.Addr `json:"gateway,omitzero"`
	Route   netip.Addr `json:"route,omitzero"`
	// Gateway6 and Route6 are the same for IPv6, on a dual-stack network.
	Gateway6 netip.Addr `json:"gateway6,omitzero"`
	Route6   netip.Addr `json:"route6,omitzero"`
	MTU      int        `json:"mtu,omitempty"`
	// Isolated: the host end is an isolated bridge port (icc = false).
	Isolated bool `json:"isolated,omitempty"`
	// Names are the container's names in the network's DNS.
	Names []string `json:"names,omitempty"`
	// Firewall is the backend that installed Ports.
	Firewall string `json:"firewall,omitempty"`
	// Ports are the published ports, reserved in the port index and
	// installed in the firewall.
	Ports []Port `json:"ports,omitempty"`
	// Connecting is the `netshim network connect` making this
	// attachment of a running container, until it is done: if it dies
	// first, the next hook or gc takes the attachment out again.
	Connecting *Process `json:"connecting,omitempty"`
}

// Addr is the attachment's IPv4 address, if it has one.
func (a *Attachment) Addr() netip.Addr {
	for _, p := range a.Addrs {
		if p.Addr().Is4() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// Addr6 is the attachment's IPv6 address, if it has one.
func (a *Attachment) Addr6() netip.Addr {
	for _, p := range a.Addrs {
		if p.Addr().Is6() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// Subnet6 is the attachment's network's IPv6 subnet, if it has an IPv6
// address.
func (a *Attachment) Subnet6() netip.Prefix {
	for _, p := range a.Addrs {
		if p.Addr().Is6() {
			return p.Masked()
		}
	}
	return netip.Prefix{}
}

// Bridged returns the record's first attachment with an address, if any:
// the one /etc/hosts, ps and links use.
func (r *Record) Bridged() *Attachment {
	for i := range r.Attachments {
		if r.Attachments[i].Addr().IsValid() {
			return &r.Attachments[i]
		}
	}
	return nil
}

// Link is one resolved --link.
type Link struct {
	Name  string     `json:"name"`
	Alias string     `json:"alias,omitempty"`
	IP    netip.Addr `json:"ip"`
}
