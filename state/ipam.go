package state

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/netshim/netshim/internal/cidr"
	"github.com/netshim/netshim/internal/fastio"
	"golang.org/x/sys/unix"
)

// Net is the persisted state of one network: its subnet once chosen (so the
// default network's pool stays stable) and its address allocations.
//
// The network's file holds what does not grow with its containers; each
// allocated address is a file of its own, networks/<name>.addrs/<address>,
// holding the container id. Setup and teardown then read and write a
// constant amount whatever the number of containers. Changes to
// allocations are kept in memory and written by PutNet.
type Net struct {
	Name    string       `json:"name"`
	Bridge  string       `json:"bridge"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	// Low is a hint: every address of the allocation range below it is
	// taken, so the lowest free address is found from here, in O(1) when
	// addresses are handed out and returned in order.
	Low netip.Addr `json:"low,omitzero"`
	// Subnet6, Gateway6 and Low6 are the same for the network's IPv6
	// subnet, if it has one.
	Subnet6  netip.Prefix `json:"subnet6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	Low6     netip.Addr   `json:"low6,omitzero"`
	// Firewall is the backend that installed the network rules.
	Firewall string `json:"firewall,omitempty"`
	// DNS is what the network's DNS responder serves (user networks).
	DNS *NetDNS `json:"dns,omitempty"`
	// Installed names the firewall objects of the network's rules, as the
	// backend returned them; removal hands them back.
	Installed []string `json:"installed,omitempty"`
	// Rules is what the installed rules were made from (reload).
	Rules *NetRules `json:"rules,omitempty"`
	// Overlay is set on an overlay network.
	Overlay *Overlay `json:"overlay,omitempty"`

	// dir holds the allocation files; "" keeps allocations in memory only.
	dir string
	// known caches holders read or set ("" = free); changed is what
	// PutNet must write ("" = remove).
	known   map[netip.Addr]string
	changed map[netip.Addr]string
}

func (s *Store) netPath(name string) string {
	return filepath.Join(s.Dir, "networks", name+".json")
}

func (s *Store) addrDir(name string) string {
	return filepath.Join(s.Dir, "networks", name+".addrs")
}

// NewNet returns the state of a network that has none yet.
func (s *Store) NewNet(name string) *Net {
	return &Net{Name: name, dir: s.addrDir(name)}
}

// GetNet returns the state of network name, or nil when it has none yet.
func (s *Store) GetNet(name string) (*Net, error) {
	n := s.NewNet(name)
	if err := readJSON(s.netPath(name), n); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	n.Name, n.dir = name, s.addrDir(name)
	return n, nil
}

// PutNet writes a network's state: its allocation changes, then its file
// (atomically).
func (s *Store) PutNet(n *Net) error {
	if n.dir == "" {
		n.dir = s.addrDir(n.Name)
	}
	if len(n.changed) > 0 {
		if err := os.MkdirAll(n.dir, 0o700); err != nil {
			return fmt.Errorf("write allocations of network %s: %w", n.Name, err)
		}
	}
	for a, id := range n.changed {
		p := filepath.Join(n.dir, a.String())
		var err error
		if id == "" {
			err = removeIfExists(p)
		} else {
			err = fastio.WriteFile(p, []byte(id), 0o600)
		}
		if err != nil {
			return fmt.Errorf("write allocation %s of network %s: %w", a, n.Name, err)
		}
		delete(n.changed, a)
	}
	return writeJSON(s.netPath(n.Name), n)
}

// DeleteNet removes a network's state.
func (s *Store) DeleteNet(name string) error {
	if err := removeIfExists(s.netPath(name)); err != nil {
		return fmt.Errorf("remove state of network %s: %w", name, err)
	}
	if err := os.RemoveAll(s.addrDir(name)); err != nil {
		return fmt.Errorf("remove allocations of network %s: %w", name, err)
	}
	return nil
}

// Holder returns the container id holding addr ("" when free).
func (n *Net) Holder(addr netip.Addr) (string, error) {
	if id, ok := n.changed[addr]; ok {
		return id, nil
	}
	if id, ok := n.known[addr]; ok || n.dir == "" {
		return id, nil
	}
	data, err := fastio.ReadFile(filepath.Join(n.dir, addr.String()))
	id := string(data)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		id = ""
	case err != nil:
		return "", fmt.Errorf("read allocation %s of network %s: %w", addr, n.Name, err)
	case id == "":
		id = "?" // torn write of a killed hook: held by nobody known (gc frees it)
	}
	n.remember(addr, id)
	return id, nil
}

func (n *Net) remember(addr netip.Addr, id string) {
	if n.known == nil {
		n.known = map[netip.Addr]string{}
	}
	n.known[addr] = id
}

// Hold records that container id holds addr (id "" frees it).
func (n *Net) Hold(addr netip.Addr, id string) {
	n.remember(addr, id)
	if n.changed == nil {
		n.changed = map[netip.Addr]string{}
	}
	n.changed[addr] = id
}

// Allocations lists every allocated address and its holder. It reads every
// allocation file: for gc, inspect and errors, not for setup.
func (n *Net) Allocations() (map[netip.Addr]string, error) {
	out := map[netip.Addr]string{}
	if n.dir != "" {
		ents, err := os.ReadDir(n.dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("list allocations of network %s: %w", n.Name, err)
		}
		for _, e := range ents {
			if a, err := netip.ParseAddr(e.Name()); err == nil {
				if _, err := n.Holder(a); err != nil {
					return nil, err
				}
			}
		}
	}
	for a, id := range n.known {
		if id != "" {
			out[a] = id
		}
	}
	for a, id := range n.changed {
		if id == "" {
			delete(out, a)
		} else {
			out[a] = id
		}
	}
	return out, nil
}

// InUse reports whether any address is allocated. It reads at most a
// directory block, whatever the number of containers.
func (n *Net) InUse() (bool, error) {
	for _, id := range n.changed {
		if id != "" {
			return true, nil
		}
	}
	if n.dir == "" {
		for _, id := range n.known {
			if id != "" {
				return true, nil
			}
		}
		return false, nil
	}
	fd, err := unix.Open(n.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("list allocations of network %s: %w", n.Name, err)
	}
	defer unix.Close(fd)
	// A small buffer: the kernel returns a few entries per call, and the
	// first one that is not being removed answers (os.File reads 8 KiB
	// of entries at a time, hundreds of them with 1,000 containers).
	buf := make([]byte, 512)
	for {
		nb, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("list allocations of network %s: %w", n.Name, err)
		}
		if nb == 0 {
			return false, nil // every file is one being removed
		}
		_, _, names := unix.ParseDirent(buf[:nb], -1, nil)
		for _, name := range names {
			a, perr := netip.ParseAddr(name)
			if perr != nil {
				continue
			}
			if id, ok := n.changed[a]; !ok || id != "" {
				return true, nil
			}
		}
	}
}

// RulesInstalled reports whether the network-level firewall rules exist
// (or are being installed): they are exactly what Installed names.
func (n *Net) RulesInstalled() bool { return len(n.Installed) > 0 }

// ErrAddressInUse is returned for a static address another container holds.
var ErrAddressInUse = errors.New("address already in use")

// ErrPoolExhausted is returned when no address is free.
var ErrPoolExhausted = errors.New("no free address")

// AddressError explains why an address cannot be had.
type AddressError struct {
	Network string
	Addr    netip.Addr
	Holder  string
	Err     error
	Reason  string
}

func (e *AddressError) Error() string {
	switch {
	case e.Holder != "":
		return fmt.Sprintf("address %s on network %s: %v by container %s", e.Addr, e.Network, e.Err, e.Holder)
	case e.Addr.IsValid():
		return fmt.Sprintf("address %s on network %s: %s", e.Addr, e.Network, e.Reason)
	default:
		return fmt.Sprintf("network %s: %v in %s", e.Network, e.Err, e.Reason)
	}
}

func (e *AddressError) Unwrap() error { return e.Err }

// Allocate gives container id an IPv4 address of the network. With a
// valid static address it takes exactly that one; otherwise the lowest
// free address of rng (the subnet when rng is invalid). The network,
// broadcast, gateway and extra reserved addresses are never handed out.
// The change is written by PutNet.
func (n *Net) Allocate(id string, static netip.Addr, rng netip.Prefix, reserved ...netip.Addr) (netip.Addr, error) {
	return n.allocate(n.Subnet, append(slices.Clip(reserved), n.Gateway, cidr.Last(n.Subnet)), &n.Low, id, static, rng)
}

// Allocate6 is Allocate in the network's IPv6 subnet. Its first address
// (the subnet-router anycast address) and the gateway are never handed
// out.
func (n *Net) Allocate6(id string, static netip.Addr, rng netip.Prefix) (netip.Addr, error) {
	return n.allocate(n.Subnet6, []netip.Addr{n.Gateway6}, &n.Low6, id, static, rng)
}

func (n *Net) allocate(subnet netip.Prefix, reserved []netip.Addr, low *netip.Addr, id string, static netip.Addr, rng netip.Prefix) (netip.Addr, error) {
	isReserved := func(a netip.Addr) bool {
		return a == subnet.Addr() || slices.Contains(reserved, a)
	}
	if static.IsValid() {
		switch {
		case !subnet.Contains(static):
			return netip.Addr{}, &AddressError{Network: n.Name, Addr: static, Reason: "outside subnet " + subnet.String()}
		case isReserved(static):
			return netip.Addr{}, &AddressError{Network: n.Name, Addr: static, Reason: "reserved (network, broadcast or gateway address)"}
		}
		holder, err := n.Holder(static)
		if err != nil {
			return netip.Addr{}, err
		}
		if holder != "" && holder != id {
			return netip.Addr{}, &AddressError{Network: n.Name, Addr: static, Holder: holder, Err: ErrAddressInUse}
		}
		n.Hold(static, id)
		return static, nil
	}
	if !rng.IsValid() {
		rng = subnet
	}
	first, last := rng.Addr(), cidr.Last(rng)
	start := first
	if low.IsValid() && rng.Contains(*low) && first.Less(*low) {
		start = *low
	}
	for a := start; a.IsValid() && !last.Less(a); a = a.Next() {
		if isReserved(a) {
			continue
		}
		holder, err := n.Holder(a)
		if err != nil {
			return netip.Addr{}, err
		}
		if holder != "" {
			continue
		}
		n.Hold(a, id)
		*low = a.Next()
		return a, nil
	}
	return netip.Addr{}, &AddressError{Network: n.Name, Err: ErrPoolExhausted, Reason: rng.String()}
}

// Release frees addr if id holds it.
func (n *Net) Release(id string, addr netip.Addr) error {
	holder, err := n.Holder(addr)
	if err != nil {
		return err
	}
	// A torn file ("?": a hook killed while writing it) at the address
	// id's record names is id's own: the only writer under the lock.
	if holder == id || holder == "?" {
		n.Hold(addr, "")
		low := &n.Low
		if addr.Is6() {
			low = &n.Low6
		}
		if !low.IsValid() || addr.Less(*low) {
			*low = addr
		}
	}
	return nil
}

// NetDNS is the DNS state of a user-defined network: the names of its
// containers, where other names are forwarded, and the responder process.
type NetDNS struct {
	// Endpoints maps a container address to its names and its own
	// upstream servers (--dns), if any.
	Endpoints map[netip.Addr]DNSEntry `json:"endpoints"`
	// Upstreams are "ip:port" servers for names that are not ours.
	Upstreams []string `json:"upstreams,omitempty"`
	// Internal networks do not forward.
	Internal bool `json:"internal,omitempty"`
	// PID and Start identify the responder process (start time tells a
	// reused PID apart).
	PID   int    `json:"pid,omitempty"`
	Start uint64 `json:"start,omitempty"`
}

// Process is the responder's process.
func (d *NetDNS) Process() Process { return Process{PID: d.PID, Start: d.Start} }

// DNSEntry is one container's names.
type DNSEntry struct {
	ID        string   `json:"id"`
	Names     []string `json:"names"`
	Upstreams []string `json:"upstreams,omitempty"`
}

// NetNames lists the networks that have a state, sorted.
func (s *Store) NetNames() ([]string, error) {
	dir := filepath.Join(s.Dir, "networks")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var names []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && !strings.HasPrefix(n, ".") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}
