package firewall

import (
	"fmt"
	"os"
	"sync"

	"github.com/google/nftables"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftables commits a deletion at once and frees the old objects after an
// RCU grace period. Closing any NETLINK_NETFILTER socket while such a
// release is pending waits for it (the kernel flushes the release work when
// a netfilter socket is released), and holds nftables' commit mutex while
// it does. A process that deleted map elements would pay that wait when it
// exits, before its parent (the runtime) hears of it.
//
// So a process that wants to leave the wait to another (a teardown hook,
// to its reclaimer: see engine.Reclaim) retains a duplicate of each
// netfilter socket it opens, and hands the duplicates over.

var retained struct {
	sync.Mutex
	on      bool
	sockets []*os.File
}

// RetainSockets makes every nftables connection this process opens from now
// on keep a duplicate of its socket, so closing the connection does not
// release the socket; RetainedSockets hands the duplicates over.
func RetainSockets() {
	retained.Lock()
	retained.on = true
	retained.Unlock()
}

// RetainedSockets returns the retained netfilter sockets. The caller owns
// them: it passes them on, or closes them (and waits).
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
		return nil // the process then pays the wait itself
	}
	retained.sockets = append(retained.sockets, os.NewFile(uintptr(dup), "netfilter"))
	return nil
}

// ackRoom is the receive buffer of an nftables connection. The library
// sends a whole batch, asking an acknowledgement for each message, before
// it reads one: a reload of a few dual-stack networks is hundreds of
// messages, whose acknowledgements overflow the default buffer (ENOBUFS).
const ackRoom = 8 << 20

// roomForAcks gives the socket ackRoom, past net.core.rmem_max (the hook
// runs with CAP_NET_ADMIN); the kernel takes the memory only as
// acknowledgements arrive.
func roomForAcks(c *mnl.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil // not a real socket (tests)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ackRoom)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("nftables socket receive buffer: %w", serr)
	}
	return nil
}

// newNftConn opens an nftables connection; see RetainSockets.
func newNftConn() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithSockOptions(roomForAcks, retain))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}
