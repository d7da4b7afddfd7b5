package ocihook

import (
	"context"
	"errors"

	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// Teardown undoes what setup recorded for container id. It needs no PID or
// netns, and succeeds for an id that has no record (never set up, or torn
// down already).
func (env *Env) Teardown(ctx context.Context, id string) (string, error) {
	lock, err := env.Store.Lock(env.lockTimeout())
	if err != nil {
		return "", err
	}
	defer lock.Unlock()
	env.mark("lock")
	rec, ok, err := env.Store.Get(id)
	if err != nil || !ok {
		return "", err
	}
	// The network's other containers keep their rules if the host's
	// firewall was flushed since; a failure to re-create them is logged
	// (by ensureRules) and does not stop this container's teardown.
	if rec.Network != "" {
		if ns, err := env.Store.GetNet(rec.Network); err == nil && ns != nil && ns.RulesInstalled() {
			env.ensureRules(ns.Rules, ns.Firewall)
		}
	}
	return rec.Name, env.teardownLocked(rec)
}

// teardownLocked removes, from the record alone, what setup created: the
// host veth (if still there and still ours), the address, the network's
// rules when its last container goes, and last the record itself, so an
// interrupted teardown can be run again. The caller holds the lock.
func (env *Env) teardownLocked(rec *state.Record) error {
	// Deleting a link and deleting firewall elements each wait for an RCU
	// grace period in the kernel: do both at once (or, in a hook, hand the
	// waits to the reclaimer: see netsetup.RetainNetfilterSockets).
	type linkResult struct {
		doomed bool
		err    error
	}
	linkDone := make(chan linkResult, 1)
	deferred := env.reclaim != nil
	env.Worker.Go(func() {
		if rec.HostVeth == "" {
			linkDone <- linkResult{}
			return
		}
		// The recorded netns id is only trusted for a finished setup.
		nsid := rec.PeerNSID
		if rec.Phase != state.PhaseReady {
			nsid = nil
		}
		// A setup killed between creating the veth and marking it leaves
		// it without an alias: for a record still being created, the
		// recorded (random) name is enough.
		d, err := removeOwnedLink(rec.HostVeth, vethAlias(rec.ID), nsid, rec.Phase != state.PhaseReady, deferred)
		linkDone <- linkResult{d, err}
	})
	// The network's state is read meanwhile too (the lock is held: no
	// other hook changes it).
	type netResult struct {
		ns  *state.Net
		err error
	}
	netDone := make(chan netResult, 1)
	if rec.Network == "" {
		netDone <- netResult{}
	} else {
		go func() {
			ns, err := env.Store.GetNet(rec.Network)
			netDone <- netResult{ns, err}
		}()
	}
	var errs []error
	if err := env.releasePorts(rec); err != nil {
		errs = append(errs, err)
	}
	fault("teardown:ports")
	if r := <-linkDone; r.err != nil {
		errs = append(errs, r.err)
	} else if r.doomed {
		env.reclaim.Doomed = true
	}
	fault("teardown:link")
	env.mark("link+ports")
	nr := <-netDone
	if rec.Network != "" && len(errs) == 0 {
		if err := env.releaseAddress(rec, nr.ns, nr.err); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	fault("teardown:address")
	env.mark("address")
	if err := env.Store.DropName(rec.Name, rec.ID); err != nil {
		return err
	}
	if err := env.Store.UnmarkCreating(rec.ID); err != nil {
		return err
	}
	err := env.Store.Delete(rec.ID)
	env.mark("record")
	return err
}

// removeOwnedLink removes the host link name if it carries alias: a link of
// that name without it belongs to someone else (names are reused once the
// kernel has removed ours with the container's netns). The usual poststop
// finds the container's netns (id nsid) being destroyed, which takes the
// pair with it: one round trip, no link operation. With deferred, the link
// is only stopped (StopLink) and doomed reports it, for the reclaimer to
// delete.
func removeOwnedLink(name, alias string, nsid *int, unmarkedToo, deferred bool) (doomed bool, err error) {
	c, err := netsetup.NewConn(netns.None())
	if err != nil {
		return false, err
	}
	defer c.Close()
	v, err := c.InspectVeth(name, nsid)
	if err != nil || v.PeerGone || v.Link == nil {
		return false, err
	}
	if a := v.Link.Attrs().Alias; a != alias && !(unmarkedToo && a == "" && v.Link.Type() == "veth") {
		return false, nil
	}
	if deferred {
		return true, c.StopLink(v.Link)
	}
	return false, c.DeleteLink(v.Link)
}

// releaseAddress frees the record's address and, when the network has no
// container left, removes its firewall rules.
// ns and err are the network's state as read (GetNet).
func (env *Env) releaseAddress(rec *state.Record, ns *state.Net, err error) error {
	if err != nil || ns == nil {
		return err
	}
	if err := ns.Release(rec.ID, rec.IP); err != nil {
		return err
	}
	env.removeName(ns, rec)
	inUse, err := ns.InUse()
	if err != nil {
		return err
	}
	if !inUse && ns.RulesInstalled() {
		fw, err := netsetup.NewFirewall(ns.Firewall)
		if err != nil {
			return err
		}
		last, err := env.noOtherRules(ns.Name)
		if err != nil {
			return err
		}
		if err := fw.RemoveNetwork(ns.Installed, last); err != nil {
			return err
		}
		if env.reclaim != nil {
			env.reclaim.deleted = true
		}
		ns.Installed, ns.Firewall = nil, ""
	}
	if !inUse {
		ns.BridgeIndex = 0 // checked again by the next setup
	}
	return env.Store.PutNet(ns)
}

// noOtherRules reports whether no network but name has rules installed.
func (env *Env) noOtherRules(name string) (bool, error) {
	names, err := env.Store.NetNames()
	if err != nil {
		return false, err
	}
	for _, n := range names {
		if n == name {
			continue
		}
		other, err := env.Store.GetNet(n)
		if err != nil {
			return false, err
		}
		if other != nil && other.RulesInstalled() {
			return false, nil
		}
	}
	return true, nil
}
