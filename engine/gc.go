package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/firewall"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// live reports whether a record belongs to something that still runs: a
// ready container whose process (and netns) is there, or a setup whose hook
// is there. Nothing else may be reclaimed, and nothing that is may be.
func live(r *state.Record) bool {
	if r.Phase == state.PhaseReady {
		return containerAlive(r.Container)
	}
	return r.Owner != nil && alive(*r.Owner)
}

// GC removes what belongs to containers that no longer exist: records of
// dead containers or of setups whose hook is gone (with their links, rules,
// addresses and ports), host veths of ours that no record names, links a
// reclaimer left, allocations and names of unknown containers, and
// responders no container needs; a responder its containers need is
// started again. Everything is decided under the lock, so it may run at
// any time. Corrupt state files are reported and left alone. It returns
// one line per thing done.
func (e *Engine) GC() ([]string, error) {
	report, gone, err := e.gcLocked()
	for _, r := range gone {
		// Their names on overlay networks, once the lock is released;
		// what fails here `netshim overlay sync` does.
		e.withdrawNames(r)
	}
	return report, err
}

// gcLocked is GC under the lock; it returns the records it removed too.
func (e *Engine) gcLocked() (report []string, gone []*state.Record, err error) {
	lock, err := e.lock()
	if err != nil {
		return nil, nil, err
	}
	defer lock.Unlock()
	recs, errs := e.Store.List()
	keep := map[string]bool{}
	for _, r := range recs {
		if live(r) {
			keep[r.ID] = true
			lines, err := e.undoConnects(r)
			report = append(report, lines...)
			if err != nil {
				errs = append(errs, err)
			}
			continue
		}
		why := "its process is gone"
		if r.Phase != state.PhaseReady {
			why = "its setup was killed"
		}
		if err := e.teardownNow(r); err != nil {
			errs = append(errs, fmt.Errorf("container %s: %w", r.ID, err))
			keep[r.ID] = true // kept: its record names what is left
			continue
		}
		report = append(report, fmt.Sprintf("container %s (%s): %s; removed %s", r.ID, r.Name, why, describe(r)))
		gone = append(gone, r)
	}
	for _, step := range []func(map[string]bool) ([]string, error){e.gcIndexes, e.rebuild(recs), e.gcLinks, e.gcPorts, e.gcNetworks} {
		lines, err := step(keep)
		report = append(report, lines...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, err := range errs {
			msgs[i] = err.Error()
		}
		return report, gone, fmt.Errorf("gc: %s", strings.Join(msgs, "; "))
	}
	return report, gone, nil
}

func describe(r *state.Record) string {
	parts := []string{"record"}
	for _, a := range r.Attachments {
		if a.HostVeth != "" {
			parts = append(parts, "veth "+a.HostVeth)
		}
		for _, p := range a.Addrs {
			parts = append(parts, "address "+p.Addr().String())
		}
		for _, p := range a.Ports {
			parts = append(parts, fmt.Sprintf("port %d/%s", p.HostPort, p.Proto))
		}
	}
	return strings.Join(parts, ", ")
}

// gcIndexes drops index entries of containers without a live record, and
// restores the names of live ones; and removes the temporary files of
// state writes a killed hook left.
func (e *Engine) gcIndexes(keep map[string]bool) ([]string, error) {
	var report []string
	ids, err := e.Store.Creating()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if !keep[id] {
			if err := e.Store.UnmarkCreating(id); err != nil {
				return report, err
			}
		}
	}
	names, err := e.Store.Names()
	if err != nil {
		return report, err
	}
	for name, id := range names {
		if !keep[id] {
			if err := e.Store.DropName(name, id); err != nil {
				return report, err
			}
		}
	}
	for id := range keep {
		if rec, ok, err := e.Store.Get(id); err == nil && ok {
			if _, held, _ := e.Store.NameOwner(rec.Name); !held {
				if err := e.Store.SetName(rec.Name, rec.ID); err != nil {
					return report, err
				}
				report = append(report, fmt.Sprintf("name %s of %s, restored", rec.Name, rec.ID))
			}
		}
	}
	return report, e.Store.RemoveTemps(func(id string) bool { return !keep[id] })
}

// rebuild restores, from the live records, allocations and port
// reservations missing from the state (after a corrupt file was moved
// aside), so no address or port is handed out twice.
func (e *Engine) rebuild(recs []*state.Record) func(map[string]bool) ([]string, error) {
	return func(keep map[string]bool) ([]string, error) {
		var report []string
		nets := map[string]*state.Net{}
		idx, err := e.Store.GetPorts()
		if err != nil {
			return nil, err
		}
		portsDirty := false
		for _, r := range recs {
			if !keep[r.ID] {
				continue
			}
			for _, a := range r.Attachments {
				if a.Driver != ModeBridge || len(a.Addrs) == 0 {
					continue
				}
				ns, ok := nets[a.Network]
				if !ok {
					if ns, err = e.Store.GetNet(a.Network); err != nil {
						return report, err
					}
					if ns == nil {
						ns = e.Store.NewNet(a.Network)
						ns.Bridge, ns.Subnet, ns.Gateway, ns.Firewall = a.Bridge, a.Addrs[0].Masked(), a.Gateway, a.Firewall
						if a.Subnet6().IsValid() {
							ns.Subnet6, ns.Gateway6 = a.Subnet6(), a.Gateway6
						}
						// The network's file is lost: its rules are
						// taken to be what its definition makes today.
						if fw, err := firewall.New(a.Firewall); err == nil {
							if def, err := e.network(a.Network); err == nil {
								rules := firewall.RulesFor(def, ns, e.Config.TrustedHostInterfaces)
								ns.Installed, ns.Rules = fw.NetworkObjects(rules), &rules
							}
						}
						report = append(report, fmt.Sprintf("state of network %s, rebuilt from records", a.Network))
					}
					nets[a.Network] = ns
				}
				for _, p := range a.Addrs {
					if holder, err := ns.Holder(p.Addr()); err != nil {
						return report, err
					} else if holder != r.ID {
						ns.Hold(p.Addr(), r.ID)
						report = append(report, fmt.Sprintf("allocation of %s to %s, restored", p.Addr(), r.Name))
					}
				}
				for _, p := range a.Ports {
					if p.HostPort == 0 {
						continue
					}
					h, taken, err := idx.Holder(p.Proto, p.HostPort, p.HostIP, "")
					if err != nil {
						return report, err
					}
					if !taken || h.ID != r.ID {
						if err := idx.Reserve(p, r.ID, r.Name); err != nil {
							return report, err
						}
						portsDirty = true
						report = append(report, fmt.Sprintf("reservation of port %d/%s for %s, restored", p.HostPort, p.Proto, r.Name))
					}
				}
			}
		}
		for _, ns := range nets {
			if err := e.Store.PutNet(ns); err != nil {
				return report, err
			}
		}
		if portsDirty {
			return report, e.Store.PutPorts(idx)
		}
		return report, nil
	}
}

// gcLinks removes host veths of ours that no live record accounts for, and
// links a reclaimer that died left set aside.
func (e *Engine) gcLinks(keep map[string]bool) ([]string, error) {
	var report []string
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	links, err := netsetup.RetryDump(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	doomed := false
	for _, l := range links {
		if l.Attrs().Group == netsetup.DoomedGroup {
			doomed = true
			continue
		}
		id, ours := strings.CutPrefix(l.Attrs().Alias, "netshim:")
		if !ours || keep[id] || l.Type() != "veth" {
			continue
		}
		if err := h.LinkDel(l); err == nil {
			report = append(report, fmt.Sprintf("veth %s of unknown container %s", l.Attrs().Name, id))
		}
	}
	if doomed {
		if err := netsetup.DeleteDoomed(); err != nil {
			return report, err
		}
		report = append(report, "links set aside by teardowns, deleted")
	}
	return report, nil
}

// gcPorts drops port reservations of unknown containers.
func (e *Engine) gcPorts(keep map[string]bool) ([]string, error) {
	var report []string
	idx, err := e.Store.GetPorts()
	if err != nil {
		return nil, err
	}
	if err := idx.LoadAll(); err != nil {
		return nil, err
	}
	for _, key := range idx.Keys() {
		dead := false
		for _, r := range idx.Reserved[key] {
			if !keep[r.ID] {
				report = append(report, fmt.Sprintf("port reservation %s of unknown container %s", key, r.ID))
				dead = true
			}
		}
		if dead {
			idx.Drop(key, func(r state.Reservation) bool { return !keep[r.ID] })
		}
	}
	return report, e.Store.PutPorts(idx)
}

// gcNetworks frees addresses of unknown containers, stops responders no
// container needs and starts those needed again, and removes the rules of
// networks no container uses.
func (e *Engine) gcNetworks(keep map[string]bool) ([]string, error) {
	var report []string
	names, err := e.Store.NetNames()
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, name := range names {
		ns, err := e.Store.GetNet(name)
		if err != nil || ns == nil {
			if err != nil {
				report = append(report, "skipped "+err.Error())
			}
			continue
		}
		lines, err := e.gcNetwork(ns, keep)
		report = append(report, lines...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return report, errors.Join(errs...)
}

func (e *Engine) gcNetwork(ns *state.Net, keep map[string]bool) ([]string, error) {
	var report []string
	name := ns.Name
	all, err := ns.Allocations()
	if err != nil {
		return nil, err
	}
	for addr, id := range all {
		if !keep[id] {
			if err := ns.Release(id, addr); err != nil {
				return report, err
			}
			report = append(report, fmt.Sprintf("address %s on %s of unknown container %s", addr, name, id))
		}
	}
	if ns.DNS == nil || !alive(ns.DNS.Process()) {
		// A responder nobody recorded (its hook was killed): adopt it, so
		// it is stopped below if no container needs it.
		if p, ok := findResponder(e.Store.Dir, name); ok {
			if ns.DNS == nil {
				ns.DNS = &state.NetDNS{Endpoints: map[netip.Addr]state.DNSEntry{}}
			}
			ns.DNS.PID, ns.DNS.Start = p.PID, p.Start
		}
	}
	if ns.DNS != nil {
		for addr, entry := range ns.DNS.Endpoints {
			if !keep[entry.ID] {
				delete(ns.DNS.Endpoints, addr)
			}
		}
		switch {
		case len(ns.DNS.Endpoints) == 0:
			if alive(ns.DNS.Process()) {
				report = append(report, fmt.Sprintf("dns responder of %s (pid %d)", name, ns.DNS.PID))
			}
			stopProcess(ns.DNS.Process())
			ns.DNS = nil
		case !alive(ns.DNS.Process()):
			// Its containers need it: start it again.
			if err := e.ensureResponder(ns); err != nil {
				return report, err
			}
			report = append(report, fmt.Sprintf("dns responder of %s was not running; started again (pid %d)", name, ns.DNS.PID))
		}
	}
	inUse, err := ns.InUse()
	if err != nil {
		return report, err
	}
	if !inUse && ns.RulesInstalled() {
		fw, err := firewall.New(ns.Firewall)
		if err != nil {
			return report, err
		}
		last, err := e.noOtherRules(name)
		if err != nil {
			return report, err
		}
		if err := fw.RemoveNetwork(ns.Installed, last); err != nil {
			return report, err
		}
		report = append(report, fmt.Sprintf("firewall rules of network %s", name))
		ns.Installed, ns.Firewall, ns.Rules = nil, "", nil
	}
	if ns.Overlay != nil {
		removed, err := e.dropIdleOverlay(ns)
		if err != nil {
			return report, err
		}
		if removed {
			report = append(report, fmt.Sprintf("vxlan device %s of network %s", ns.Overlay.VXLAN, name))
		}
	}
	return report, e.Store.PutNet(ns)
}
