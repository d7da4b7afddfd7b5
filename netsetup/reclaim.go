package netsetup

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/google/nftables"
	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Deleting kernel objects has a slow tail that is not the caller's business:
//
//   - nftables commits a deletion at once and frees the old objects later,
//     after an RCU grace period (8-25 ms on a small VM). But closing *any*
//     NETLINK_NETFILTER socket while such a release is pending waits for it
//     (nft_rcv_nl_event flushes the release work on NETLINK_URELEASE), so a
//     process that deleted a map element pays the grace period when it exits.
//   - Deleting a veth waits for the same grace periods in
//     unregister_netdevice, with RTNL held.
//
// A hook stops the traffic itself (map elements deleted, the host veth set
// down, both done when it returns) and hands the rest to a detached
// reclaimer: the last references to its netfilter sockets, and the links to
// delete. The reclaimer pays the grace periods; nobody waits for it.

var retained struct {
	sync.Mutex
	on      bool
	sockets []*os.File
}

// RetainNetfilterSockets makes every nftables connection this process opens
// from now on keep a duplicate of its socket, so closing the connection
// does not release the socket; RetainedSockets hands the duplicates over.
func RetainNetfilterSockets() {
	retained.Lock()
	retained.on = true
	retained.Unlock()
}

// RetainedSockets returns the retained netfilter sockets. The caller owns
// them: pass them to a reclaimer, or close them (and wait).
func RetainedSockets() []*os.File {
	retained.Lock()
	defer retained.Unlock()
	out := retained.sockets
	retained.sockets = nil
	return out
}

// retain is the nftables socket option that keeps a duplicate.
func retain(c *mnl.Conn) error {
	retained.Lock()
	defer retained.Unlock()
	if !retained.on {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil // not a real socket (tests): nothing to keep
	}
	var dup int
	var derr error
	if err := rc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || derr != nil {
		return nil // keeping it is an optimisation
	}
	retained.sockets = append(retained.sockets, os.NewFile(uintptr(dup), "netfilter"))
	return nil
}

// newNftConn opens an nftables connection; see RetainNetfilterSockets.
func newNftConn() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithSockOptions(retain))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// DoomedLink is a host link whose traffic is already stopped (it is down)
// and that only has to be deleted. Index, name and alias together identify
// it: none is enough alone once the kernel reuses them.
type DoomedLink struct {
	Index int
	Name  string
	Alias string
}

// StopLink sets a host link down, which takes it out of its bridge's
// forwarding at once (no RCU grace period: RTNL is held, so the kernel
// expedites), so that its deletion can be left to a reclaimer.
func StopLink(h *netlink.Handle, link netlink.Link) (DoomedLink, error) {
	a := link.Attrs()
	d := DoomedLink{Index: a.Index, Name: a.Name, Alias: a.Alias}
	if err := h.LinkSetDown(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return d, fmt.Errorf("set link %s down: %w", a.Name, err)
	}
	return d, nil
}

// DeleteDoomed deletes a stopped link if it is still the one recorded.
func DeleteDoomed(h *netlink.Handle, d DoomedLink) error {
	link, err := h.LinkByIndex(d.Index)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", d.Name, err)
	}
	if a := link.Attrs(); a.Name != d.Name || a.Alias != d.Alias {
		return nil // the index was reused
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", d.Name, err)
	}
	return nil
}
