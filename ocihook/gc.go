package ocihook

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// FaultEnv names a point at which the hook kills itself with SIGKILL: a
// test-only switch to prove that a hook killed anywhere leaves only what
// gc (or the next setup) undoes. "stop:<point>" stops it there instead
// (SIGSTOP), to show that a slow setup is not mistaken for a crashed one.
const FaultEnv = "NETSHIM_FAULT"

var faultPoint = os.Getenv(FaultEnv)

// fault dies, or stops, at the named point when the switch says so.
func fault(point string) {
	switch faultPoint {
	case point:
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously everywhere
	case "stop:" + point:
		syscall.Kill(os.Getpid(), syscall.SIGSTOP)
	}
}

// processMatches reports whether the record's container process still
// exists: same PID, same start time and (unless host mode) same netns. A
// PID reused by another process fails the start-time check.
func processMatches(r *state.Record) bool {
	if r.PID <= 0 {
		return false
	}
	start, err := netsetup.ProcStartTime(r.PID)
	if err != nil || start != r.StartTime {
		return false
	}
	if r.NetnsIno == 0 {
		return true
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", r.PID), &st); err != nil {
		return false
	}
	return st.Ino == r.NetnsIno && st.Dev == r.NetnsDev
}

// GC removes what belongs to containers that no longer exist: records of
// dead processes or of crashed setups (with their links, rules, addresses
// and ports), host veths of ours that no record names, allocations and
// names of unknown containers, and responders no container needs. Corrupt
// state files are reported and left alone. It returns one line per thing
// removed.
func (env *Env) GC() ([]string, error) {
	lock, err := env.Store.Lock(env.lockTimeout())
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	var report []string
	recs, errs := env.Store.List()
	live := map[string]bool{}
	for _, r := range recs {
		if (r.Phase == state.PhaseReady && processMatches(r)) || (r.Phase != state.PhaseReady && env.inFlight(r.ID)) {
			live[r.ID] = true // running, or being set up by a live hook
			continue
		}
		why := "its process is gone"
		if r.Phase != state.PhaseReady {
			why = "its setup did not finish"
		}
		if err := env.teardownLocked(r); err != nil {
			errs = append(errs, fmt.Errorf("container %s: %w", r.ID, err))
			live[r.ID] = true // kept: its record names what is left
			continue
		}
		report = append(report, fmt.Sprintf("container %s (%s): %s; removed %s", r.ID, r.Name, why, describe(r)))
	}
	lines, err := env.gcIndexes(live)
	report = append(report, lines...)
	if err != nil {
		errs = append(errs, err)
	}
	// Temporary files of state writes a killed hook left half done.
	if err := env.Store.RemoveTemps(func(id string) bool { return !live[id] && !env.inFlight(id) }); err != nil {
		errs = append(errs, err)
	}
	lines, err = env.rebuild(recs, live)
	report = append(report, lines...)
	if err != nil {
		errs = append(errs, err)
	}
	lines, err = env.gcOrphans(live)
	report = append(report, lines...)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		return report, fmt.Errorf("gc: %s", strings.Join(msgs, "; "))
	}
	return report, nil
}

func describe(r *state.Record) string {
	parts := []string{"record"}
	if r.HostVeth != "" {
		parts = append(parts, "veth "+r.HostVeth)
	}
	if r.IP.IsValid() {
		parts = append(parts, "address "+r.IP.String())
	}
	for _, p := range r.Ports {
		parts = append(parts, fmt.Sprintf("port %d/%s", p.HostPort, p.Proto))
	}
	return strings.Join(parts, ", ")
}

// gcIndexes drops index entries of containers without a live record, and
// restores the names of live ones.
func (env *Env) gcIndexes(live map[string]bool) ([]string, error) {
	var report []string
	ids, err := env.Store.Creating()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if !live[id] && !env.inFlight(id) {
			if err := env.Store.UnmarkCreating(id); err != nil {
				return report, err
			}
		}
	}
	names, err := env.Store.Names()
	if err != nil {
		return report, err
	}
	for name, id := range names {
		if !live[id] {
			if err := env.Store.DropName(name, id); err != nil {
				return report, err
			}
		}
	}
	for id := range live {
		if rec, ok, err := env.Store.Get(id); err == nil && ok {
			if _, held, _ := env.Store.NameOwner(rec.Name); !held {
				env.Store.SetName(rec.Name, rec.ID)
				report = append(report, fmt.Sprintf("name %s of %s, restored", rec.Name, rec.ID))
			}
		}
	}
	return report, nil
}

// rebuild restores, from the live records, allocations and port
// reservations missing from the state (after a corrupt file was moved
// aside), so no address or port is handed out twice.
func (env *Env) rebuild(recs []*state.Record, live map[string]bool) ([]string, error) {
	var report []string
	nets := map[string]*state.Net{}
	idx, err := env.Store.GetPorts()
	if err != nil {
		return nil, err
	}
	portsDirty := false
	for _, r := range recs {
		if !live[r.ID] || r.Network == "" || !r.IP.IsValid() {
			continue
		}
		ns, ok := nets[r.Network]
		if !ok {
			if ns, err = env.Store.GetNet(r.Network); err != nil {
				return report, err
			}
			if ns == nil {
				ns = env.Store.NewNet(r.Network)
				ns.Bridge, ns.Subnet, ns.Gateway, ns.Firewall = r.Bridge, r.Subnet, r.Gateway, r.Firewall
				if fw, err := netsetup.NewFirewall(r.Firewall); err == nil {
					// The network's file is lost: its rules are taken
					// to be what its definition makes today.
					if def, err := env.network(r.Network); err == nil {
						rules := netsetup.RulesFor(def, r.Subnet, r.Gateway, env.Config.TrustedHostInterfaces)
						ns.Installed, ns.Rules = fw.NetworkObjects(rules), &rules
					}
				}
				report = append(report, fmt.Sprintf("state of network %s, rebuilt from records", r.Network))
			}
			nets[r.Network] = ns
		}
		if holder, err := ns.Holder(r.IP); err != nil {
			return report, err
		} else if holder != r.ID {
			ns.Hold(r.IP, r.ID)
			report = append(report, fmt.Sprintf("allocation of %s to %s, restored", r.IP, r.Name))
		}
		for _, p := range r.Ports {
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
	for _, ns := range nets {
		if err := env.Store.PutNet(ns); err != nil {
			return report, err
		}
	}
	if portsDirty {
		return report, env.Store.PutPorts(idx)
	}
	return report, nil
}

// gcOrphans removes what no live record accounts for.
func (env *Env) gcOrphans(live map[string]bool) ([]string, error) {
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
	for _, l := range links {
		id, ours := strings.CutPrefix(l.Attrs().Alias, "netshim:")
		if !ours || live[id] || l.Type() != "veth" {
			continue
		}
		if err := h.LinkDel(l); err == nil {
			report = append(report, fmt.Sprintf("veth %s of unknown container %s", l.Attrs().Name, id))
		}
	}
	idx, err := env.Store.GetPorts()
	if err != nil {
		return report, err
	}
	if err := idx.LoadAll(); err != nil {
		return report, err
	}
	for _, key := range idx.Keys() {
		dead := false
		for _, r := range idx.Reserved[key] {
			if !live[r.ID] {
				report = append(report, fmt.Sprintf("port reservation %s of unknown container %s", key, r.ID))
				dead = true
			}
		}
		if dead {
			idx.Drop(key, func(r state.Reservation) bool { return !live[r.ID] })
		}
	}
	if err := env.Store.PutPorts(idx); err != nil {
		return report, err
	}
	ents, err := os.ReadDir(env.Store.Dir + "/networks")
	if err != nil {
		return report, err
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		ns, err := env.Store.GetNet(name)
		if err != nil || ns == nil {
			if err != nil {
				report = append(report, "skipped "+err.Error())
			}
			continue
		}
		dirty := false
		all, err := ns.Allocations()
		if err != nil {
			return report, err
		}
		for addr, id := range all {
			if !live[id] {
				if err := ns.Release(id, addr); err != nil {
					return report, err
				}
				report = append(report, fmt.Sprintf("address %s on %s of unknown container %s", addr, name, id))
				dirty = true
			}
		}
		if ns.DNS == nil || !alive(ns.DNS.PID, ns.DNS.Start) {
			// A responder nobody recorded (its hook was killed): adopt it
			// so it is stopped below if no container needs it.
			if pid, start, ok := findResponder(env.Store.Dir, name); ok {
				if ns.DNS == nil {
					ns.DNS = &state.NetDNS{Endpoints: map[netip.Addr]state.DNSEntry{}}
				}
				ns.DNS.PID, ns.DNS.Start = pid, start
				dirty = true
			}
		}
		if ns.DNS != nil {
			for addr, e := range ns.DNS.Endpoints {
				if !live[e.ID] {
					delete(ns.DNS.Endpoints, addr)
					dirty = true
				}
			}
			switch {
			case len(ns.DNS.Endpoints) == 0:
				if alive(ns.DNS.PID, ns.DNS.Start) {
					report = append(report, fmt.Sprintf("dns responder of %s (pid %d)", name, ns.DNS.PID))
				}
				stopProcess(ns.DNS.PID, ns.DNS.Start)
				ns.DNS = nil
				dirty = true
			case !alive(ns.DNS.PID, ns.DNS.Start):
				// Its containers need it: start it again.
				if err := env.ensureResponder(ns); err != nil {
					return report, err
				}
				report = append(report, fmt.Sprintf("dns responder of %s was not running; started again (pid %d)", name, ns.DNS.PID))
				dirty = true
			}
		}
		inUse, err := ns.InUse()
		if err != nil {
			return report, err
		}
		if !inUse && ns.RulesInstalled() {
			fw, err := netsetup.NewFirewall(ns.Firewall)
			if err != nil {
				return report, err
			}
			last, err := env.noOtherRules(name)
			if err != nil {
				return report, err
			}
			if err := fw.RemoveNetwork(ns.Installed, last); err != nil {
				return report, err
			}
			report = append(report, fmt.Sprintf("firewall rules of network %s", name))
			ns.Installed, ns.Firewall = nil, ""
			dirty = true
		}
		if dirty {
			if err := env.Store.PutNet(ns); err != nil {
				return report, err
			}
		}
	}
	return report, nil
}
