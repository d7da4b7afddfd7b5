package state

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"
	"sort"
)

// Port is one published port as installed: traffic to HostIP:HostPort
// (HostIP unspecified: any local address) goes to the container's port.
type Port struct {
	Proto         string     `json:"proto"`
	HostIP        netip.Addr `json:"host_ip,omitzero"`
	HostPort      int        `json:"host_port"`
	ContainerPort int        `json:"container_port"`
}

// HostIPString is the host address as Docker prints it.
func (p Port) HostIPString() string {
	if !p.HostIP.IsValid() {
		return "0.0.0.0"
	}
	return p.HostIP.String()
}

// Reservation is a host port held by a container.
type Reservation struct {
	HostIP netip.Addr `json:"host_ip,omitzero"`
	ID     string     `json:"id"`
	Name   string     `json:"name"`
}

// Ports is the host-wide index of reserved host ports, keyed by
// "proto/port", so a conflict is found without reading every record.
type Ports struct {
	Reserved map[string][]Reservation `json:"reserved"`
}

func portKey(proto string, port int) string { return fmt.Sprintf("%s/%d", proto, port) }

func (s *Store) portsPath() string { return filepath.Join(s.Dir, "ports.json") }

// GetPorts reads the port index (empty when absent).
func (s *Store) GetPorts() (*Ports, error) {
	p := &Ports{}
	if err := readJSON(s.portsPath(), p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if p.Reserved == nil {
		p.Reserved = map[string][]Reservation{}
	}
	return p, nil
}

// PutPorts writes the port index atomically; an empty index is removed.
func (s *Store) PutPorts(p *Ports) error {
	if len(p.Reserved) == 0 {
		if err := removeIfExists(s.portsPath()); err != nil {
			return fmt.Errorf("remove %s: %w", s.portsPath(), err)
		}
		return nil
	}
	return writeJSON(s.portsPath(), p)
}

// Holder returns who holds proto/port on an address overlapping ip (an
// unspecified address overlaps every address), other than id.
func (p *Ports) Holder(proto string, port int, ip netip.Addr, id string) (Reservation, bool) {
	for _, r := range p.Reserved[portKey(proto, port)] {
		if r.ID == id {
			continue
		}
		if !r.HostIP.IsValid() || !ip.IsValid() || r.HostIP == ip {
			return r, true
		}
	}
	return Reservation{}, false
}

// Reserve records that container id (named name) holds the port.
func (p *Ports) Reserve(port Port, id, name string) {
	k := portKey(port.Proto, port.HostPort)
	p.Reserved[k] = append(p.Reserved[k], Reservation{HostIP: port.HostIP, ID: id, Name: name})
}

// Release drops every reservation of container id among ports.
func (p *Ports) Release(id string, ports []Port) {
	for _, port := range ports {
		k := portKey(port.Proto, port.HostPort)
		kept := p.Reserved[k][:0]
		for _, r := range p.Reserved[k] {
			if r.ID != id {
				kept = append(kept, r)
			}
		}
		if len(kept) == 0 {
			delete(p.Reserved, k)
		} else {
			p.Reserved[k] = kept
		}
	}
}

// Keys lists the reserved "proto/port" keys, sorted (for gc and tests).
func (p *Ports) Keys() []string {
	keys := make([]string, 0, len(p.Reserved))
	for k := range p.Reserved {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
