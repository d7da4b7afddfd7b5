package state

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Port is one published port as installed: traffic to HostIP:HostPort
// goes to the container's port. An invalid HostIP stands for every local
// address of both families (of those the container has an address of),
// 0.0.0.0 or :: for every one of that family.
type Port struct {
	Proto         string     `json:"proto"`
	HostIP        netip.Addr `json:"host_ip,omitzero"`
	HostPort      int        `json:"host_port"`
	ContainerPort int        `json:"container_port"`
}

// Reservation is a host port held by a container.
type Reservation struct {
	HostIP netip.Addr `json:"host_ip,omitzero"`
	ID     string     `json:"id"`
	Name   string     `json:"name"`
}

// Ports is the host-wide index of reserved host ports, keyed by
// "proto/port", so a conflict is found without reading every record. Each
// key is a file of its own (ports/<proto>-<port>): a setup reads and
// writes the keys it asks about, whatever the number of containers. Keys
// are read on first use and written by PutPorts.
type Ports struct {
	// Reserved holds the keys read so far (every key after LoadAll).
	Reserved map[string][]Reservation

	dir     string
	loaded  map[string]bool
	changed map[string]bool
}

func portKey(proto string, port int) string { return fmt.Sprintf("%s/%d", proto, port) }

func (s *Store) portsDir() string { return filepath.Join(s.Dir, "ports") }

func keyFile(key string) string { return strings.ReplaceAll(key, "/", "-") }

// GetPorts returns the port index; nothing is read until a key is asked.
func (s *Store) GetPorts() (*Ports, error) {
	return &Ports{Reserved: map[string][]Reservation{}, dir: s.portsDir(), loaded: map[string]bool{}, changed: map[string]bool{}}, nil
}

// load reads key's reservations unless already read.
func (p *Ports) load(key string) error {
	if p.loaded[key] || p.dir == "" {
		return nil
	}
	var rs []Reservation
	if err := readJSON(filepath.Join(p.dir, keyFile(key)), &rs); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	p.loaded[key] = true
	if len(rs) > 0 {
		p.Reserved[key] = rs
	}
	return nil
}

// LoadAll reads every key (gc, tests).
func (p *Ports) LoadAll() error {
	ents, err := os.ReadDir(p.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("list port reservations: %w", err)
	}
	for _, e := range ents {
		proto, port, ok := strings.Cut(e.Name(), "-")
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if err := p.load(proto + "/" + port); err != nil {
			return err
		}
	}
	return nil
}

// PutPorts writes the keys that changed; an empty key is removed.
func (s *Store) PutPorts(p *Ports) error {
	if len(p.changed) > 0 {
		if err := os.MkdirAll(p.dir, 0o700); err != nil {
			return fmt.Errorf("write port reservations: %w", err)
		}
	}
	for key := range p.changed {
		path := filepath.Join(p.dir, keyFile(key))
		var err error
		if rs := p.Reserved[key]; len(rs) == 0 {
			err = removeIfExists(path)
		} else {
			err = writeJSON(path, rs)
		}
		if err != nil {
			return fmt.Errorf("write port reservation %s: %w", key, err)
		}
		delete(p.changed, key)
	}
	return nil
}

// Holder returns who holds proto/port on an address overlapping ip (see
// Overlap), other than id.
func (p *Ports) Holder(proto string, port int, ip netip.Addr, id string) (Reservation, bool, error) {
	k := portKey(proto, port)
	if err := p.load(k); err != nil {
		return Reservation{}, false, err
	}
	for _, r := range p.Reserved[k] {
		if r.ID == id {
			continue
		}
		if Overlap(r.HostIP, ip) {
			return r, true, nil
		}
	}
	return Reservation{}, false, nil
}

// Overlap reports whether host addresses a and b of published ports share
// an address: no address is every one of both families, 0.0.0.0 and ::
// every one of theirs.
func Overlap(a, b netip.Addr) bool {
	switch {
	case !a.IsValid() || !b.IsValid():
		return true
	case a.Is4() != b.Is4():
		return false
	}
	return a.IsUnspecified() || b.IsUnspecified() || a == b
}

// Reserve records that container id (named name) holds the port.
func (p *Ports) Reserve(port Port, id, name string) error {
	k := portKey(port.Proto, port.HostPort)
	if err := p.load(k); err != nil {
		return err
	}
	p.Reserved[k] = append(p.Reserved[k], Reservation{HostIP: port.HostIP, ID: id, Name: name})
	p.changed[k] = true
	return nil
}

// Release drops every reservation of container id among ports.
func (p *Ports) Release(id string, ports []Port) error {
	for _, port := range ports {
		k := portKey(port.Proto, port.HostPort)
		if err := p.load(k); err != nil {
			return err
		}
		p.Drop(k, func(r Reservation) bool { return r.ID == id })
	}
	return nil
}

// Drop removes the reservations of key that match.
func (p *Ports) Drop(key string, match func(Reservation) bool) {
	kept := p.Reserved[key][:0]
	for _, r := range p.Reserved[key] {
		if !match(r) {
			kept = append(kept, r)
		}
	}
	if len(kept) == 0 {
		delete(p.Reserved, key)
	} else {
		p.Reserved[key] = kept
	}
	p.changed[key] = true
}

// Keys lists the reserved "proto/port" keys read so far, sorted (after
// LoadAll: every key).
func (p *Ports) Keys() []string {
	keys := make([]string, 0, len(p.Reserved))
	for k := range p.Reserved {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
