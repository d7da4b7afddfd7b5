package state

import (
	"errors"
	"fmt"
	"github.com/netshim/netshim/internal/ipv4"
	"io/fs"
	"net/netip"
	"path/filepath"
)

// Net is the persisted state of one network: its subnet once chosen (so the
// default network's pool stays stable) and its address allocations.
type Net struct {
	Name    string       `json:"name"`
	Bridge  string       `json:"bridge"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	// Allocated maps an address to the container id holding it.
	Allocated map[netip.Addr]string `json:"allocated"`
	// Low is a hint: every address of the allocation range below it is
	// taken, so the lowest free address is found from here, in O(1) when
	// addresses are handed out and returned in order.
	Low netip.Addr `json:"low,omitzero"`
	// BridgeIndex is the bridge's ifindex once setup ensured it (address,
	// MTU, up): later setups use it without asking the kernel, whose reply
	// for a bridge grows with its ports.
	BridgeIndex int `json:"bridge_index,omitempty"`
	// Firewall is the backend that installed the network rules.
	Firewall string `json:"firewall,omitempty"`
	// DNS is what the network's DNS responder serves (user networks).
	DNS *NetDNS `json:"dns,omitempty"`
	// Installed names the firewall objects of the network's rules, as the
	// backend returned them; removal hands them back.
	Installed []string `json:"installed,omitempty"`
}

func (s *Store) netPath(name string) string {
	return filepath.Join(s.Dir, "networks", name+".json")
}

// GetNet returns the state of network name, or nil when it has none yet.
func (s *Store) GetNet(name string) (*Net, error) {
	n := &Net{}
	if err := readJSON(s.netPath(name), n); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	if n.Allocated == nil {
		n.Allocated = map[netip.Addr]string{}
	}
	return n, nil
}

// PutNet writes a network's state atomically.
func (s *Store) PutNet(n *Net) error {
	return writeJSON(s.netPath(n.Name), n)
}

// DeleteNet removes a network's state.
func (s *Store) DeleteNet(name string) error {
	if err := removeIfExists(s.netPath(name)); err != nil {
		return fmt.Errorf("remove state of network %s: %w", name, err)
	}
	return nil
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

// Allocate gives container id an address of the network. With a valid
// static address it takes exactly that one; otherwise the lowest free
// address of rng (the subnet when rng is invalid). The network, broadcast,
// gateway and extra reserved addresses are never handed out. Allocating for
// an id that already holds an address returns that address.
func (n *Net) Allocate(id string, static netip.Addr, rng netip.Prefix, reserved ...netip.Addr) (netip.Addr, error) {
	for a, holder := range n.Allocated {
		if holder == id && (!static.IsValid() || static == a) {
			return a, nil
		}
	}
	isReserved := func(a netip.Addr) bool {
		if a == n.Subnet.Addr() || a == ipv4.Last(n.Subnet) || a == n.Gateway {
			return true
		}
		for _, r := range reserved {
			if a == r {
				return true
			}
		}
		return false
	}
	if static.IsValid() {
		switch {
		case !n.Subnet.Contains(static):
			return netip.Addr{}, &AddressError{Network: n.Name, Addr: static, Reason: "outside subnet " + n.Subnet.String()}
		case isReserved(static):
			return netip.Addr{}, &AddressError{Network: n.Name, Addr: static, Reason: "reserved (network, broadcast or gateway address)"}
		}
		if holder, taken := n.Allocated[static]; taken {
			return netip.Addr{}, &AddressError{Network: n.Name, Addr: static, Holder: holder, Err: ErrAddressInUse}
		}
		n.Allocated[static] = id
		return static, nil
	}
	if !rng.IsValid() {
		rng = n.Subnet
	}
	first, last := rng.Addr(), ipv4.Last(rng)
	start := first
	if n.Low.IsValid() && rng.Contains(n.Low) && first.Less(n.Low) {
		start = n.Low
	}
	for a := start; a.IsValid() && !last.Less(a); a = a.Next() {
		if isReserved(a) {
			continue
		}
		if _, taken := n.Allocated[a]; taken {
			continue
		}
		n.Allocated[a] = id
		n.Low = a.Next()
		return a, nil
	}
	return netip.Addr{}, &AddressError{Network: n.Name, Err: ErrPoolExhausted, Reason: rng.String()}
}

// Release frees addr if id holds it.
func (n *Net) Release(id string, addr netip.Addr) {
	if holder, ok := n.Allocated[addr]; ok && holder == id {
		delete(n.Allocated, addr)
		if !n.Low.IsValid() || addr.Less(n.Low) {
			n.Low = addr
		}
	}
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

// DNSEntry is one container's names.
type DNSEntry struct {
	ID        string   `json:"id"`
	Names     []string `json:"names"`
	Upstreams []string `json:"upstreams,omitempty"`
}
