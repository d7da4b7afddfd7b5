package ocihook

import (
	"fmt"

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
func (env *Env) allocatePorts(id, name string, reqs []PortRequest, idx *state.Ports) ([]state.Port, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	lo, hi := env.Config.PortRange[0], env.Config.PortRange[1]
	inUse := netsetup.PortInUse
	var out []state.Port
	for _, r := range reqs {
		first, last := r.HostLo, r.HostHi
		random := first == 0
		if random {
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
			busy, err := inUse(r.Proto, port)
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

// needsRouteLocalnet reports whether a port is published on a loopback
// address: explicitly, or as every local address.
func needsRouteLocalnet(ports []state.Port) bool {
	for _, p := range ports {
		if p.HostPort > 0 && (!p.HostIP.IsValid() || p.HostIP.IsLoopback()) {
			return true
		}
	}
	return false
}

// releasePorts withdraws a record's published ports: firewall, conntrack of
// UDP flows, and reservations. The caller holds the lock.
func (env *Env) releasePorts(rec *state.Record) error {
	if len(rec.Ports) == 0 {
		return nil
	}
	fw, err := netsetup.NewFirewall(rec.Firewall)
	if err != nil {
		return err
	}
	if err := fw.RemovePorts(netsetup.PortRules{Bridge: rec.Bridge, IP: rec.IP.As4(), Ports: rec.Ports}); err != nil {
		return err
	}
	for _, p := range rec.Ports {
		if p.Proto != "udp" || p.HostPort == 0 {
			continue
		}
		// After the map element is gone: no new flow is DNATed to this
		// container, and the ones that were are forgotten.
		if env.reclaim != nil {
			env.reclaim.UDPPorts = append(env.reclaim.UDPPorts, p.HostPort)
		} else if err := netsetup.FlushUDPConntrack(p.HostPort); err != nil {
			return err
		}
	}
	if env.reclaim != nil {
		env.reclaim.deleted = true
	}
	idx, err := env.Store.GetPorts()
	if err != nil {
		return err
	}
	if err := idx.Release(rec.ID, hostPorts(rec.Ports)); err != nil {
		return err
	}
	return env.Store.PutPorts(idx)
}

// hostPorts are those of ports that hold a host port.
func hostPorts(ports []state.Port) []state.Port {
	var out []state.Port
	for _, p := range ports {
		if p.HostPort > 0 {
			out = append(out, p)
		}
	}
	return out
}
