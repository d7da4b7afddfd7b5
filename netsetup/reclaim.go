package netsetup

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/google/nftables"
	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
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
//   - The release on close holds nftables' commit mutex while it waits, so a
//     process closing such a socket also holds up every other nftables
//     commit on the host for the rest of the grace period.
//
// A hook stops the traffic itself (map elements deleted, the host veth set
// down and put in DoomedGroup, both done when it returns) and hands the rest
// to a reclaimer: the last references to its netfilter sockets, and the
// deletion of the doomed links. The reclaimer closes the sockets once no
// deletion has come for a while (nothing is then pending, so closing costs
// nothing and holds up nobody) and deletes the doomed links in batches.

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

// DoomedGroup is the link group (IFLA_GROUP) of host veths whose traffic
// is stopped and that only wait to be deleted. Deleting a group is one
// RTM_DELLINK for all its links, so the kernel unregisters them in one
// batch: the RCU grace periods are paid once, not once per link.
const DoomedGroup = 0x6e73686d // "nshm"

// StopLink sets a host link down, which takes it out of its bridge's
// forwarding at once (no RCU grace period: RTNL is held, so the kernel
// expedites), and moves it to DoomedGroup, for a reclaimer to delete. Both
// go in one RTM_SETLINK: one turn with RTNL, which a reclaimer deleting
// links may be holding.
func (c *Conn) StopLink(link netlink.Link) error {
	a := link.Attrs()
	// Change IFF_UP, with flags without it: down.
	r := setLinkReq("set link "+a.Name+" down and aside for deletion", a.Index, 0, unix.IFF_UP,
		nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(DoomedGroup)))
	r.OK = []unix.Errno{unix.ENODEV}
	return c.Exec(r)
}

// DeleteDoomed deletes every link of DoomedGroup, in one batch.
func DeleteDoomed() error {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(DoomedGroup)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete links set aside: %w", err)
	}
	return nil
}
