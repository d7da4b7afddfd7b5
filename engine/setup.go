package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// Setup wires the container's network: under the host lock it reserves
// what the container gets and records it, then, without the lock, makes
// it in the kernel and writes the container's files, and under the lock
// again marks the record ready, unless a teardown came meanwhile. Anything
// it created is undone before it returns an error.
func (e *Engine) Setup(req *Request) error {
	c, ns, err := container(req.PID)
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := checkNetns(req, c); err != nil {
		return err
	}
	me, err := self()
	if err != nil {
		return err
	}
	if err := e.joinOverlays(req); err != nil {
		return err
	}
	rec, done, err := e.reserve(req, c, me)
	if err != nil || done {
		return err
	}
	cns := &ContainerNS{NS: ns}
	defer cns.Close()
	if err := e.wire(req, rec, cns); err != nil {
		return e.undo(rec, err)
	}
	if err := e.finish(rec); err != nil {
		return err
	}
	e.publishNames(rec)
	return nil
}

// container identifies the container of pid and opens its netns.
func container(pid int) (state.Container, netns.NsHandle, error) {
	ns, id, err := netsetup.NetnsOf(pid)
	if err != nil {
		return state.Container{}, ns, err
	}
	start, err := netsetup.ProcStartTime(pid)
	if err != nil {
		ns.Close()
		return state.Container{}, ns, err
	}
	return state.Container{Process: state.Process{PID: pid, Start: start}, NetnsDev: id.Dev, NetnsIno: id.Ino}, ns, nil
}

// checkNetns refuses a host-mode container that has a netns of its own,
// and any other that shares the host's.
func checkNetns(req *Request, c state.Container) error {
	host, err := netsetup.SelfNetns()
	if err != nil {
		return err
	}
	shared := c.NetnsDev == host.Dev && c.NetnsIno == host.Ino
	switch {
	case req.Mode() == ModeHost && !shared:
		return fmt.Errorf("network host: container %s has its own network namespace; remove the network namespace from config.json (netshim bundle --network host does)", req.ID)
	case req.Mode() != ModeHost && shared:
		return fmt.Errorf("network %s: container %s shares the host's network namespace; add a network namespace to config.json (netshim bundle does)", req.Endpoints[0].Network, req.ID)
	}
	return nil
}

// reserve is setup's first step, under the lock: it settles any earlier
// record of the id, reserves the container's share of its network through
// the driver and records it, owned by this hook. done says the container
// was set up already (createRuntime run twice).
func (e *Engine) reserve(req *Request, c state.Container, me state.Process) (*state.Record, bool, error) {
	lock, err := e.lock()
	if err != nil {
		return nil, false, err
	}
	defer lock.Unlock()
	if old, ok, err := e.Store.Get(req.ID); err != nil {
		return nil, false, err
	} else if ok {
		switch {
		case old.Phase == state.PhaseReady && old.Container == c:
			return nil, true, nil // createRuntime run twice for this container
		case old.Phase == state.PhaseCreating && old.Owner != nil && *old.Owner != me && alive(*old.Owner):
			return nil, false, fmt.Errorf("the network of container %s is being set up by another hook (pid %d)", req.ID, old.Owner.PID)
		}
		// An earlier container of this id, whose poststop never came, or
		// whose setup was killed.
		if err := e.teardownNow(old); err != nil {
			return nil, false, fmt.Errorf("clean up the earlier setup of %s: %w", req.ID, err)
		}
	}
	if err := e.undoCrashed(); err != nil {
		return nil, false, err
	}
	if o, taken, err := e.Store.NameOwner(req.Name); err != nil {
		return nil, false, err
	} else if taken && o.ID != req.ID {
		return nil, false, fmt.Errorf("container name %q is already in use by container %s", req.Name, o.ID)
	}

	owner := me
	rec := &state.Record{ID: req.ID, Name: req.Name, Mode: req.Mode(), Phase: state.PhaseCreating,
		Created: time.Now().UTC(), Bundle: req.Bundle, Owner: &owner, Container: c}
	saved := false
	save := func() error {
		if err := e.Store.Put(rec); err != nil {
			return err
		}
		if !saved {
			saved = true
			return e.Store.MarkCreating(rec.ID, me.PID, me.Start)
		}
		return nil
	}
	err = e.planEndpoints(req)
	for i := range req.Endpoints {
		if err != nil {
			break
		}
		ep := &req.Endpoints[i]
		err = e.driver(e.driverOf(ep.Network)).Reserve(rec, req, ep, save)
	}
	if err == nil {
		err = e.resolveLinks(rec, req)
	}
	if err == nil {
		err = e.Store.SetName(rec.Name, rec.ID)
	}
	if err == nil && (!saved || len(rec.Links) > 0) {
		err = save() // drivers that write the record write it before this
	}
	if err != nil {
		if saved {
			if uerr := e.teardownNow(rec); uerr != nil {
				return nil, false, fmt.Errorf("%w (and undoing it: %v)", err, uerr)
			}
		}
		return nil, false, err
	}
	return rec, false, nil
}

// undoCrashed tears down setups marked as creating whose hook is gone: it
// was killed. The directory of markers normally holds only setups in
// flight. The caller holds the lock.
func (e *Engine) undoCrashed() error {
	ids, err := e.Store.Creating()
	if err != nil {
		return err
	}
	for _, id := range ids {
		rec, ok, err := e.Store.Get(id)
		switch {
		case err != nil:
			return err
		case ok && rec.Phase == state.PhaseCreating && rec.Owner != nil && alive(*rec.Owner):
			continue // in flight
		case ok && rec.Phase == state.PhaseCreating:
			if err := e.teardownNow(rec); err != nil {
				return fmt.Errorf("clean up the crashed setup of %s: %w", id, err)
			}
		case ok && rec.Phase == state.PhaseReady && slices.ContainsFunc(rec.Attachments, func(a state.Attachment) bool { return a.Connecting != nil }):
			// A network connect: in flight, or killed.
			if _, err := e.undoConnects(rec); err != nil {
				return err
			}
		default: // killed after the record was ready, or before it existed
			if err := e.Store.UnmarkCreating(id); err != nil {
				return err
			}
		}
	}
	// A hook killed in the middle of a state write leaves its temporary
	// file.
	if len(ids) > 0 {
		return e.Store.RemoveTemps(func(id string) bool {
			rec, ok, _ := e.Store.Get(id)
			return !ok || rec.Phase == state.PhaseCreating && (rec.Owner == nil || !alive(*rec.Owner))
		})
	}
	return nil
}

// planEndpoints names each endpoint's interface (eth0, eth1, … in order)
// and chooses those of the default routes, each family on its own as in
// Docker 28: the highest gw-priority among the networks that have a way
// out (not internal) and an address of the family, the first of equals.
// The published ports go with the IPv4 route. A request of one network
// needs no definition read: its only endpoint has both routes, which an
// internal network drops.
func (e *Engine) planEndpoints(req *Request) error {
	eps := req.Endpoints
	for i := range eps {
		eps[i].iface = netsetup.ContainerIfName(i)
		eps[i].route4, eps[i].route6, eps[i].ports = len(eps) == 1, len(eps) == 1, len(eps) == 1
	}
	if len(eps) == 1 {
		return nil
	}
	best4, best6 := -1, -1
	for i, ep := range eps {
		if driverKind(ep.Network) != ModeBridge {
			return fmt.Errorf("network %s: a container on several networks can only be on bridge networks", ep.Network)
		}
		def, err := e.network(ep.Network)
		if err != nil {
			return err
		}
		if def.Internal {
			continue
		}
		if best4 < 0 || ep.GwPriority > eps[best4].GwPriority {
			best4 = i
		}
		if def.IPv6 && (best6 < 0 || ep.GwPriority > eps[best6].GwPriority) {
			best6 = i
		}
	}
	if best4 >= 0 {
		eps[best4].route4, eps[best4].ports = true, true
	} else {
		eps[0].ports = true // refused by the driver: internal
	}
	if best6 >= 0 {
		eps[best6].route6 = true
	}
	return nil
}

// resolveLinks resolves the request's --links to the addresses of running
// containers on a network the container is on, for /etc/hosts.
func (e *Engine) resolveLinks(rec *state.Record, req *Request) error {
	for _, l := range req.Links {
		target, ok, err := e.Store.NameOwner(l.Name)
		if err != nil {
			return err
		}
		var ip netip.Addr
		if ok && target.Phase == state.PhaseReady {
			ip = sharedAddr(rec, target)
		}
		if !ip.IsValid() {
			return &FieldError{Field: FieldLinks, Reason: fmt.Sprintf("link %s:%s: no running container named %q on network %s", l.Name, l.Alias, l.Name, req.Endpoints[0].Network)}
		}
		rec.Links = append(rec.Links, state.Link{Name: target.Name, Alias: l.Alias, IP: ip})
	}
	return nil
}

// sharedAddr is target's IPv4 address on the first of rec's networks it is
// on too.
func sharedAddr(rec, target *state.Record) netip.Addr {
	for _, a := range rec.Attachments {
		for _, ta := range target.Attachments {
			if ta.Network == a.Network && ta.Addr().IsValid() {
				return ta.Addr()
			}
		}
	}
	return netip.Addr{}
}

// wire is setup's second step, without the lock: each attachment made in
// the kernel by its driver, then the container's files.
func (e *Engine) wire(req *Request, rec *state.Record, c *ContainerNS) error {
	if rec.Mode != ModeHost {
		// The container's interfaces start with IPv6 on if one of its
		// networks has it (then an IPv4-only network's interface has a
		// link-local address too).
		ipv6 := false
		for _, a := range rec.Attachments {
			ipv6 = ipv6 || a.Addr6().IsValid()
		}
		if err := c.Prepare(ipv6); err != nil {
			return err
		}
	}
	for i := range rec.Attachments {
		a := &rec.Attachments[i]
		if err := e.driver(a.Driver).Attach(rec, a, c); err != nil {
			return err
		}
	}
	fault("setup:container")
	paths, err := e.writeFiles(req, rec, c.Loopback6)
	if err != nil {
		return err
	}
	rec.Files = paths
	fault("setup:files")
	return nil
}

// errCancelled says a teardown came while the setup was in flight.
var errCancelled = errors.New("stopped while its network was being set up")

// finish is setup's last step, under the lock: the record is marked ready
// if it is still this setup's; a teardown that came meanwhile marked it
// cancelled, and then the setup undoes itself.
func (e *Engine) finish(rec *state.Record) error {
	lock, err := e.lock()
	if err != nil {
		return err
	}
	defer lock.Unlock()
	owner, cancelled, ok, err := e.Store.Progress(rec.ID)
	switch {
	case err != nil:
		return err
	case !ok || owner == nil || *owner != *rec.Owner:
		return fmt.Errorf("container %s: the record of its setup was taken over before the setup finished", rec.ID)
	case cancelled:
		if err := e.teardownNow(rec); err != nil {
			return fmt.Errorf("container %s: %w, and undoing its setup failed: %v", rec.ID, errCancelled, err)
		}
		return fmt.Errorf("container %s: %w", rec.ID, errCancelled)
	}
	rec.Phase, rec.Owner = state.PhaseReady, nil
	if err := e.Store.Put(rec); err != nil {
		return err
	}
	return e.Store.UnmarkCreating(rec.ID)
}

// undo tears down a setup that failed after its record was written, so
// that it leaves nothing behind when it returns err.
func (e *Engine) undo(rec *state.Record, err error) error {
	lock, lerr := e.lock()
	if lerr != nil {
		return fmt.Errorf("%w (and undoing it: %v)", err, lerr)
	}
	defer lock.Unlock()
	if uerr := e.teardownNow(rec); uerr != nil {
		return fmt.Errorf("%w (and undoing it: %v)", err, uerr)
	}
	return err
}
