package state

import (
	"errors"
	"io/fs"
	"net/netip"
	"path/filepath"
	"time"
)

// Overlay is this host's side of an overlay network (Net.Overlay): the
// network's definition as etcd holds it, the VXLAN device made for it,
// and the peers installed on that device. Net.Subnet is this host's
// leased share of Subnet.
type Overlay struct {
	ID         string       `json:"id"`
	Subnet     netip.Prefix `json:"subnet"`
	HostPrefix int          `json:"host_prefix"`
	VNI        uint32       `json:"vni"`
	// VXLAN is the device; Underlay the address it sends from.
	VXLAN    string     `json:"vxlan"`
	Underlay netip.Addr `json:"underlay"`
	MTU      int        `json:"mtu"`
	// Peers are the other hosts as installed on VXLAN; Fingerprint
	// identifies the leases they were read from (0: none installed).
	Peers       []Peer `json:"peers,omitempty"`
	Fingerprint uint64 `json:"fingerprint,omitempty"`
}

// Peer is another host of an overlay network.
type Peer struct {
	Underlay netip.Addr   `json:"underlay"`
	MAC      string       `json:"mac"`
	Subnet   netip.Prefix `json:"subnet"`
}

// HostLease is this host's etcd lease, which its subnet leases and
// published names live on.
type HostLease struct {
	ID       int64      `json:"id"`
	Underlay netip.Addr `json:"underlay"`
	// Expires is when etcd lets it go unless renewed, by this host's
	// clock when it was last renewed.
	Expires time.Time `json:"expires"`
}

func (s *Store) hostLeasePath() string { return filepath.Join(s.Dir, "cluster.json") }

// GetHostLease returns this host's etcd lease, or nil.
func (s *Store) GetHostLease() (*HostLease, error) {
	var l HostLease
	if err := readJSON(s.hostLeasePath(), &l); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	return &l, nil
}

// PutHostLease records this host's etcd lease (nil: none).
func (s *Store) PutHostLease(l *HostLease) error {
	if l == nil {
		return removeIfExists(s.hostLeasePath())
	}
	return writeJSON(s.hostLeasePath(), l)
}
