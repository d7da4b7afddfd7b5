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

// Record is what setup created for one container: teardown and gc work from
// it alone, never from recomputed names.
type Record struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Mode    string    `json:"mode"` // bridge, none or host
	Network string    `json:"network,omitempty"`
	Phase   Phase     `json:"phase"`
	Created time.Time `json:"created"`
	Bundle  string    `json:"bundle,omitempty"`

	// PID, NetnsIno and StartTime identify the container's process, so a
	// reused PID is not mistaken for the container.
	PID       int    `json:"pid,omitempty"`
	NetnsDev  uint64 `json:"netns_dev,omitempty"`
	NetnsIno  uint64 `json:"netns_ino,omitempty"`
	StartTime uint64 `json:"start_time,omitempty"`

	// Endpoint, for bridge mode.
	Bridge   string       `json:"bridge,omitempty"`
	IP       netip.Addr   `json:"ip,omitzero"`
	Subnet   netip.Prefix `json:"subnet,omitzero"`
	Gateway  netip.Addr   `json:"gateway,omitzero"`
	MAC      string       `json:"mac,omitempty"`
	HostVeth string       `json:"host_veth,omitempty"`
	// PeerNSID is the container netns's id as the host sees it: teardown
	// asks the kernel whether it still resolves, without touching links.
	PeerNSID      *int   `json:"peer_nsid,omitempty"`
	ContainerVeth string `json:"container_veth,omitempty"`

	// Firewall is the backend that installed Rules.
	Firewall string `json:"firewall,omitempty"`

	// Ports are the published ports, reserved in the port index and
	// installed in the firewall.
	Ports []Port `json:"ports,omitempty"`

	// Links are the `IP alias name` entries written to /etc/hosts.
	Links []Link `json:"links,omitempty"`
	// Files are the host paths of the files setup wrote for the container.
	Files []string `json:"files,omitempty"`
}

// Link is one resolved --link.
type Link struct {
	Name  string     `json:"name"`
	Alias string     `json:"alias,omitempty"`
	IP    netip.Addr `json:"ip"`
}
