package engine

import (
	"errors"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// A Driver connects containers to one kind of network: bridge.go, and
// host and none below. Setup calls Reserve under the host lock, then
// Attach without it; teardown, gc and a failed setup call Detach under
// the lock. Each works from the record, never from recomputed names, and
// each step can be run again.
type Driver interface {
	// Reserve settles the network (its subnet, bridge, firewall rules and
	// DNS) and takes the container's share of it (address, host ports,
	// names): it appends the container's attachment to rec and has rec
	// written with save before it writes or creates anything else, so
	// that a hook killed at any point leaves a record naming what may
	// exist. What it reserved before a failure is given back by Detach.
	Reserve(rec *state.Record, req *Request, ep *Endpoint, save func() error) error
	// Attach creates what attachment a names in the kernel: the
	// container's interface in its network namespace, its published
	// ports. It may change a (a host name found taken) and then saves
	// the record again, under the lock.
	Attach(rec *state.Record, a *state.Attachment, c *ContainerNS) error
	// Detach takes a out of the kernel and gives its reservations back;
	// what can wait (links to delete, conntrack entries) goes to r.
	Detach(rec *state.Record, a state.Attachment, r *Reclaim) error
}

// driver returns the driver of an attachment's kind, or of a request's
// network.
func (e *Engine) driver(kind string) Driver {
	switch kind {
	case ModeHost:
		return hostDriver{}
	case ModeNone:
		return noneDriver{}
	case ModeOverlay:
		return &overlayDriver{bridgeDriver{e: e}}
	}
	return &bridgeDriver{e: e}
}

// driverKind is the kind of driver for a request's network.
func driverKind(network string) string {
	switch network {
	case ModeHost, ModeNone:
		return network
	}
	return ModeBridge
}

// ContainerNS is the container's network namespace as drivers work in it,
// prepared (IPv6 on or off for its interfaces, lo up) by the first
// driver, with a netlink handle bound to it.
type ContainerNS struct {
	NS netns.NsHandle
	// Loopback6 says lo has ::1, once prepared.
	Loopback6 bool
	h         *netlink.Handle
}

// Prepare readies the container's netns (netsetup.PrepareNetns), once:
// ipv6 says its interfaces get IPv6.
func (c *ContainerNS) Prepare(ipv6 bool) error {
	if c.h == nil {
		h, loopback6, err := netsetup.PrepareNetns(c.NS, ipv6)
		if err != nil {
			return err
		}
		c.h, c.Loopback6 = h, loopback6
	}
	return nil
}

// Handle returns the netlink handle bound to the container's netns, once
// prepared.
func (c *ContainerNS) Handle() (*netlink.Handle, error) {
	if c.h == nil {
		return nil, errors.New("the container's network namespace is not prepared")
	}
	return c.h, nil
}

// Close releases the netlink handle.
func (c *ContainerNS) Close() {
	if c.h != nil {
		c.h.Close()
	}
}

// noneDriver gives a container its own network namespace with lo only.
type noneDriver struct{}

func (noneDriver) Reserve(rec *state.Record, _ *Request, _ *Endpoint, save func() error) error {
	rec.Attachments = append(rec.Attachments, state.Attachment{Network: ModeNone, Driver: ModeNone})
	return save()
}

func (noneDriver) Attach(_ *state.Record, _ *state.Attachment, c *ContainerNS) error {
	return c.Prepare(false)
}

func (noneDriver) Detach(*state.Record, state.Attachment, *Reclaim) error { return nil }

// hostDriver leaves a container in the host's network namespace, which
// setup checks it shares.
type hostDriver struct{}

func (hostDriver) Reserve(rec *state.Record, _ *Request, _ *Endpoint, save func() error) error {
	rec.Attachments = append(rec.Attachments, state.Attachment{Network: ModeHost, Driver: ModeHost})
	return save()
}

func (hostDriver) Attach(*state.Record, *state.Attachment, *ContainerNS) error { return nil }

func (hostDriver) Detach(*state.Record, state.Attachment, *Reclaim) error { return nil }
