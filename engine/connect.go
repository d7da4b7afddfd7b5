package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// Connect attaches a running container (by id, id prefix or name) to
// network ep.Network, as `docker network connect`: under the lock it
// reserves the container's share of the network and records it, marked as
// being connected by this process; without the lock it makes the
// interface in the container's netns (found from the record: its process
// and netns, not a re-guessed PID); under the lock again it clears the
// mark. The new interface is the first free ethN; the container's default
// route stays where it is, unless it had none. A connect that fails undoes
// itself; one that is killed is undone by the next hook or gc.
func (e *Engine) Connect(ref string, ep Endpoint) error {
	if err := e.checkConnectable(ep.Network); err != nil {
		return err
	}
	rec, n, err := e.reserveConnect(ref, &ep)
	if err != nil {
		return err
	}
	loopback6, err := e.wireConnect(rec, n)
	if err != nil {
		return e.undoConnect(rec.ID, ep.Network, err)
	}
	fault("connect:attached")
	if err := e.rewriteFiles(rec, loopback6); err != nil {
		return e.undoConnect(rec.ID, ep.Network, err)
	}
	lock, err := e.lock()
	if err != nil {
		return err
	}
	defer lock.Unlock()
	now, ok, err := e.Store.Get(rec.ID)
	switch {
	case err != nil:
		return err
	case !ok:
		return fmt.Errorf("container %s stopped while it was being connected to network %s", rec.Name, ep.Network)
	}
	for i := range now.Attachments {
		if now.Attachments[i].Network == ep.Network {
			now.Attachments[i].Connecting = nil
		}
	}
	if err := e.Store.Put(now); err != nil {
		return err
	}
	return e.Store.UnmarkCreating(rec.ID)
}

// checkConnectable refuses, before the lock, a network that no running
// container can be connected to: one that is nowhere ("not found", as
// Docker says), and one that is not a bridge network of this host (host,
// none, an overlay network). It asks etcd only for a name this host does
// not know, with a cluster configured.
func (e *Engine) checkConnectable(name string) error {
	local, err := e.isLocalNetwork(name)
	switch {
	case err != nil:
		return err
	case local && driverKind(name) == ModeBridge:
		return nil
	case !local && !e.Config.Cluster.Enabled():
		return fmt.Errorf("network %s not found", name)
	case !local:
		// Only etcd knows whether it is an overlay network.
		cl, err := e.clusterClient()
		if err != nil {
			return err
		}
		n, err := cl.GetNetwork(context.Background(), name)
		if err != nil {
			return fmt.Errorf("network %s: %w", name, err)
		}
		if n == nil {
			return fmt.Errorf("network %s not found", name)
		}
	}
	return fmt.Errorf("network %s: a running container can only be connected to bridge networks", name)
}

// reserveConnect is Connect's first step, under the lock: the checks, and
// the attachment reserved and recorded. It returns the record and the
// attachment's index.
func (e *Engine) reserveConnect(ref string, ep *Endpoint) (*state.Record, int, error) {
	lock, err := e.lock()
	if err != nil {
		return nil, 0, err
	}
	defer lock.Unlock()
	rec, err := e.runningBridged(ref)
	if err != nil {
		return nil, 0, err
	}
	if slices.ContainsFunc(rec.Attachments, func(a state.Attachment) bool { return a.Network == ep.Network }) {
		return nil, 0, fmt.Errorf("container %s is already attached to network %s", rec.Name, ep.Network)
	}
	def, err := e.network(ep.Network) // a bridge network (checkConnectable)
	if err != nil {
		return nil, 0, err
	}
	me, err := self()
	if err != nil {
		return nil, 0, err
	}
	ep.iface = freeIface(rec)
	hasRoute := slices.ContainsFunc(rec.Attachments, func(a state.Attachment) bool { return a.Route.IsValid() })
	hasRoute6 := slices.ContainsFunc(rec.Attachments, func(a state.Attachment) bool { return a.Route6.IsValid() })
	ep.route4, ep.route6 = !hasRoute && !def.Internal, !hasRoute6 && !def.Internal
	n := len(rec.Attachments)
	saved := false
	save := func() error {
		if len(rec.Attachments) > n {
			rec.Attachments[n].Connecting = &me
		}
		if !saved {
			saved = true
			if err := e.Store.MarkCreating(rec.ID, me.PID, me.Start); err != nil {
				return err
			}
		}
		return e.Store.Put(rec)
	}
	req := &Request{ID: rec.ID, Name: rec.Name, Endpoints: []Endpoint{*ep}}
	if err := e.driver(ModeBridge).Reserve(rec, req, ep, save); err != nil {
		if saved {
			return nil, 0, e.detachLocked(rec, ep.Network, err)
		}
		return nil, 0, err
	}
	fault("connect:record")
	return rec, n, nil
}

// runningBridged finds a running container's record, which may be
// connected to networks, with any connect of it that was killed taken back
// first. The caller holds the lock.
func (e *Engine) runningBridged(ref string) (*state.Record, error) {
	rec, err := e.Store.Find(ref)
	switch {
	case err != nil:
		return nil, err
	case rec.Phase != state.PhaseReady || !containerAlive(rec.Container):
		return nil, fmt.Errorf("container %s is not running", rec.Name)
	case rec.Mode != ModeBridge:
		return nil, fmt.Errorf("container %s is in network mode %s: it cannot be connected to or disconnected from networks", rec.Name, rec.Mode)
	}
	if _, err := e.undoConnects(rec); err != nil {
		return nil, err
	}
	if slices.ContainsFunc(rec.Attachments, func(a state.Attachment) bool { return a.Connecting != nil }) {
		return nil, fmt.Errorf("container %s is being connected to a network by another netshim", rec.Name)
	}
	return rec, nil
}

// freeIface is the container's first free interface name: eth0, eth1, …
func freeIface(rec *state.Record) string {
	for i := 0; ; i++ {
		name := netsetup.ContainerIfName(i)
		if !slices.ContainsFunc(rec.Attachments, func(a state.Attachment) bool { return a.Interface == name }) {
			return name
		}
	}
}

// wireConnect is Connect's second step, without the lock: the interface
// made in the container's netns, entered through its recorded process,
// whose netns must still be the recorded one. It reports whether the
// container's lo has ::1, for its /etc/hosts.
func (e *Engine) wireConnect(rec *state.Record, n int) (bool, error) {
	ns, err := e.recordedNetns(rec)
	if err != nil {
		return false, err
	}
	defer ns.Close()
	a := &rec.Attachments[n]
	cns := &ContainerNS{NS: ns}
	defer cns.Close()
	// Interfaces made from now on start with IPv6 on or off as this
	// network wants; the existing ones keep theirs.
	if err := cns.Prepare(a.Addr6().IsValid()); err != nil {
		return false, err
	}
	return cns.Loopback6, e.driver(a.Driver).Attach(rec, a, cns)
}

// recordedNetns opens the netns of a running container through its
// recorded process, and checks it is still the recorded one.
func (e *Engine) recordedNetns(rec *state.Record) (netns.NsHandle, error) {
	c, ns, err := container(rec.Container.PID)
	if err != nil {
		return ns, err
	}
	if c != rec.Container {
		ns.Close()
		return ns, fmt.Errorf("container %s: its process or network namespace is not the recorded one (it was restarted?)", rec.Name)
	}
	return ns, nil
}

// undoConnect takes back a connect that failed after its record was
// written, under the lock.
func (e *Engine) undoConnect(id, network string, cause error) error {
	lock, err := e.lock()
	if err != nil {
		return fmt.Errorf("%w (and undoing it: %v)", cause, err)
	}
	defer lock.Unlock()
	rec, ok, err := e.Store.Get(id)
	if err != nil || !ok {
		return errors.Join(cause, err)
	}
	return e.detachLocked(rec, network, cause)
}

// detachLocked takes rec's attachment to network out of the kernel and
// the record, at once, and clears a connect's mark; cause (nil for a
// disconnect) is returned with any error of the undoing. The caller holds
// the lock.
func (e *Engine) detachLocked(rec *state.Record, network string, cause error) error {
	i := slices.IndexFunc(rec.Attachments, func(a state.Attachment) bool { return a.Network == network })
	if i < 0 {
		return cause
	}
	r := &Reclaim{}
	err := e.driver(rec.Attachments[i].Driver).Detach(rec, rec.Attachments[i], r)
	err = errors.Join(err, r.Do())
	if err == nil {
		rec.Attachments = slices.Delete(rec.Attachments, i, i+1)
		err = e.Store.Put(rec)
	}
	if err == nil {
		err = e.Store.UnmarkCreating(rec.ID)
	}
	if cause != nil && err != nil {
		return fmt.Errorf("%w (and undoing it: %v)", cause, err)
	}
	return errors.Join(cause, err)
}

// Disconnect takes a running container off network, as `docker network
// disconnect`: its interface, address, names and rules there go at once;
// its other networks are untouched. Off its last network, it keeps lo
// only.
func (e *Engine) Disconnect(ref, network string) error {
	lock, err := e.lock()
	if err != nil {
		return err
	}
	defer lock.Unlock()
	rec, err := e.runningBridged(ref)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(rec.Attachments, func(a state.Attachment) bool { return a.Network == network }) {
		return fmt.Errorf("container %s is not connected to network %s", rec.Name, network)
	}
	if err := e.detachLocked(rec, network, nil); err != nil {
		return err
	}
	ns, err := e.recordedNetns(rec)
	if err != nil {
		return err
	}
	defer ns.Close()
	loopback6, err := netsetup.Loopback6(ns)
	if err != nil {
		return err
	}
	return e.rewriteFiles(rec, loopback6)
}

// rewriteFiles writes a running container's /etc/hosts and
// /etc/resolv.conf again for its networks of now, in place (they are
// bind-mounted), from its bundle (Reread); loopback6 says lo has ::1.
func (e *Engine) rewriteFiles(rec *state.Record, loopback6 bool) error {
	if e.Reread == nil {
		return nil
	}
	req, err := e.Reread(rec.ID, rec.Container.PID, rec.Bundle)
	if err != nil {
		return fmt.Errorf("container %s: %w", rec.Name, err)
	}
	_, err = e.writeFiles(req, rec, loopback6)
	return err
}

// undoConnects takes out the attachments of rec whose connect was killed.
// The caller holds the lock. It reports what it did.
func (e *Engine) undoConnects(rec *state.Record) ([]string, error) {
	var report []string
	for _, a := range slices.Clone(rec.Attachments) {
		if a.Connecting == nil || alive(*a.Connecting) {
			continue
		}
		if err := e.detachLocked(rec, a.Network, nil); err != nil {
			return report, fmt.Errorf("undo the killed connect of %s to network %s: %w", rec.Name, a.Network, err)
		}
		report = append(report, fmt.Sprintf("container %s (%s): its connect to network %s was killed; taken back", rec.ID, rec.Name, a.Network))
	}
	return report, nil
}
