package engine

import (
	"fmt"

	"github.com/netshim/netshim/firewall"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// PortAllocatedError is a host port another container already publishes.
type PortAllocatedError struct {
	Port   int
	Proto  string
	Holder string
}

func (e *PortAllocatedError) Error() string {
	return fmt.Sprintf("port %d/%s is already allocated by %s", e.Port, e.Proto, e.Holder)
}

// allocatePorts turns port requests into host ports: an explicit port must
// be free (not published by another container on an overlapping address,
// not listened on by a host process); a random one is the lowest free port
// of the ephemeral range (or the requested host range). The reservations
// are made in idx. The caller holds the lock.
func (e *Engine) allocatePorts(id, name string, reqs []PortRequest, idx *state.Ports) ([]state.Port, error) {
	lo, hi := e.Config.PortRange[0], e.Config.PortRange[1]
	var out []state.Port
	for _, r := range reqs {
		first, last := r.HostLo, r.HostHi
		if first == 0 {
			if lo == 0 { // the kernel's range, read only when needed
				var err error
				if lo, hi, err = netsetup.EphemeralRange(); err != nil {
					return nil, err
				}
			}
			first, last = lo, hi
		}
		chosen := 0
		for port := first; port <= last && chosen == 0; port++ {
			holder, taken, err := idx.Holder(r.Proto, port, r.HostIP, id)
			if err != nil {
				return nil, err
			}
			if taken {
				if first == last {
					return nil, &PortAllocatedError{Port: port, Proto: r.Proto, Holder: holder.Name}
				}
				continue
			}
			busy, err := netsetup.PortInUse(r.Proto, port)
			if err != nil {
				return nil, err
			}
			if busy {
				if first == last {
					return nil, fmt.Errorf("port %d/%s is in use by a host process", port, r.Proto)
				}
				continue
			}
			chosen = port
		}
		if chosen == 0 {
			return nil, fmt.Errorf("no free host port in %d-%d/%s", first, last, r.Proto)
		}
		p := state.Port{Proto: r.Proto, HostIP: r.HostIP, HostPort: chosen, ContainerPort: r.ContainerPort}
		if err := idx.Reserve(p, id, name); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// routedPorts are the ports a routed network opens for reqs: the
// container's own, once each; host addresses and ports do not apply (as in
// Docker).
func routedPorts(reqs []PortRequest) []state.Port {
	var out []state.Port
	seen := map[state.Port]bool{}
	for _, r := range reqs {
		p := state.Port{Proto: r.Proto, ContainerPort: r.ContainerPort}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// needsRouteLocalnet reports whether a port is published on an IPv4
// loopback address: explicitly, or as every local address.
func needsRouteLocalnet(ports []state.Port) bool {
	for _, p := range ports {
		if p.HostPort > 0 && (!p.HostIP.IsValid() || p.HostIP.Is4() && (p.HostIP.IsUnspecified() || p.HostIP.IsLoopback())) {
			return true
		}
	}
	return false
}

// releasePorts withdraws an attachment's published ports: firewall, the
// conntrack entries of UDP flows (left to r), and the reservations. The
// caller holds the lock.
func (e *Engine) releasePorts(rec *state.Record, a state.Attachment, r *Reclaim) error {
	if len(a.Ports) == 0 {
		return nil
	}
	fw, err := firewall.New(a.Firewall)
	if err != nil {
		return err
	}
	if err := fw.RemovePorts(portRules(a)); err != nil {
		return err
	}
	var held []state.Port
	for _, p := range a.Ports {
		if p.HostPort == 0 {
			continue // routed: no host port
		}
		held = append(held, p)
		if p.Proto == "udp" {
			r.UDPPorts = append(r.UDPPorts, p.HostPort)
		}
	}
	idx, err := e.Store.GetPorts()
	if err != nil {
		return err
	}
	if err := idx.Release(rec.ID, held); err != nil {
		return err
	}
	return e.Store.PutPorts(idx)
}

// portRules is what an attachment's published ports need from the
// firewall.
func portRules(a state.Attachment) firewall.PortRules {
	return firewall.PortRules{Bridge: a.Bridge, IP: a.Addr(), IP6: a.Addr6(), Ports: a.Ports}
}
