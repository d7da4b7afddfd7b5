package engine

import (
	"fmt"
	"sort"
	"time"

	"github.com/netshim/netshim/firewall"
	"github.com/netshim/netshim/state"
)

// recordedRules gathers, per firewall backend, what the state says is
// installed: the rules of every network that has them, as recorded when
// they were installed, and the published ports of every record. It also
// returns the networks' states, by name, to record what a reload
// installs.
func (e *Engine) recordedRules() (map[string]*firewall.Ruleset, map[string]*state.Net, error) {
	names, err := e.Store.NetNames()
	if err != nil {
		return nil, nil, err
	}
	sets := map[string]*firewall.Ruleset{}
	set := func(backend string) *firewall.Ruleset {
		if backend == "" {
			backend = firewall.DefaultBackend
		}
		if sets[backend] == nil {
			sets[backend] = &firewall.Ruleset{}
		}
		return sets[backend]
	}
	nets := map[string]*state.Net{}
	for _, name := range names {
		ns, err := e.Store.GetNet(name)
		if err != nil {
			return nil, nil, err
		}
		if ns == nil || !ns.RulesInstalled() || ns.Rules == nil {
			continue
		}
		nets[name] = ns
		rs := set(ns.Firewall)
		rs.Networks = append(rs.Networks, firewall.NetworkState{Rules: *ns.Rules, Installed: ns.Installed})
	}
	recs, errs := e.Store.List()
	if len(errs) > 0 {
		// A record that cannot be read may name published ports: a
		// reload without them would look complete and not be.
		return nil, nil, errs[0]
	}
	for _, r := range recs {
		for _, a := range r.Attachments {
			if len(a.Ports) > 0 && a.Addr().IsValid() {
				rs := set(a.Firewall)
				rs.Ports = append(rs.Ports, portRules(a))
			}
		}
	}
	return sets, nets, nil
}

// Reload re-creates every network's and every container's firewall rules
// from the state, one batch per backend, after something flushed them (a
// firewall reload): `netshim reload`. It returns what it did, in a line.
func (e *Engine) Reload() (string, error) {
	lock, err := e.lock()
	if err != nil {
		return "", err
	}
	defer lock.Unlock()
	return e.reloadLocked()
}

// reloadLocked is Reload under the lock.
func (e *Engine) reloadLocked() (string, error) {
	sets, nets, err := e.recordedRules()
	if err != nil {
		return "", err
	}
	backends := make([]string, 0, len(sets))
	for b := range sets {
		backends = append(backends, b)
	}
	sort.Strings(backends)
	networks, ports := 0, 0
	for _, b := range backends {
		fw, err := firewall.New(b)
		if err != nil {
			return "", err
		}
		installed, err := fw.Reload(*sets[b])
		if err != nil {
			return "", fmt.Errorf("reload %s rules: %w", b, err)
		}
		for name, objs := range installed {
			ns := nets[name]
			ns.Installed = objs
			if err := e.Store.PutNet(ns); err != nil {
				return "", err
			}
		}
		networks += len(sets[b].Networks)
		for _, p := range sets[b].Ports {
			ports += len(p.Ports)
		}
	}
	return fmt.Sprintf("reloaded the firewall rules of %d networks and %d published ports", networks, ports), nil
}

// ensureRules re-creates every rule of ours from the state if the
// network's rules are gone (the host's firewall was flushed or reloaded
// since they were installed), so a hook never goes on without them. The
// caller holds the lock. A reload is logged.
func (e *Engine) ensureRules(rules *state.NetRules, backend string) error {
	if rules == nil {
		return nil
	}
	fw, err := firewall.New(backend)
	if err != nil {
		return err
	}
	ok, err := fw.Present(*rules)
	if err != nil || ok {
		return err
	}
	start := time.Now()
	_, err = e.reloadLocked()
	e.Log("", "", "reload", time.Since(start), err)
	if err != nil {
		return fmt.Errorf("the rules of network %s are gone from the firewall, and re-creating them failed: %w", rules.Name, err)
	}
	return nil
}
