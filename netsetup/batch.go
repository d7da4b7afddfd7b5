package netsetup

import (
	"encoding/binary"
	"fmt"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Conn is a route netlink socket bound to one network namespace, which
// sends a batch of requests in one write. The kernel handles the messages
// of a write in order and answers each one, so configuring a link costs
// one round trip instead of one per attribute.
//
// The socket is blocking and reads into one buffer kept with it: the
// kernel has answered every request of a write when the write returns,
// and a reader with a 64 KiB array in its frame (as vishvananda's has)
// costs each goroutine that calls it a stack of 128 KiB to grow and fault
// in.
type Conn struct {
	fd  int
	buf []byte
}

// NewConn opens a route socket in ns, or in the caller's netns when ns is
// not open. A socket stays in the netns it was made in: the thread that
// makes it is switched in only for that (see Do).
func NewConn(ns netns.NsHandle) (*Conn, error) {
	fd := -1
	open := func() (err error) {
		if fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE); err != nil {
			return err
		}
		// A bound answer to every request comes at once; the timeout is
		// for a kernel that never answers, not for waiting on RTNL.
		tv := unix.Timeval{Sec: 60}
		if err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err == nil {
			err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		}
		if err != nil {
			unix.Close(fd)
		}
		return err
	}
	var err error
	if ns.IsOpen() {
		err = Do(ns, open)
	} else {
		err = open()
	}
	if err != nil {
		return nil, fmt.Errorf("open route netlink socket: %w", err)
	}
	return &Conn{fd: fd}, nil
}

// Close closes the socket.
func (c *Conn) Close() { unix.Close(c.fd) }

// receive reads one datagram of answers from the kernel.
func (c *Conn) receive() ([]syscall.NetlinkMessage, error) {
	if c.buf == nil {
		c.buf = make([]byte, 32<<10)
	}
	for {
		n, _, flags, from, err := unix.Recvmsg(c.fd, c.buf, nil, 0)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return nil, err
		case flags&unix.MSG_TRUNC != 0:
			return nil, fmt.Errorf("netlink answer larger than %d bytes", len(c.buf))
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		return syscall.ParseNetlinkMessage(c.buf[:n])
	}
}

// Req is one request of a batch.
type Req struct {
	Msg *nl.NetlinkRequest
	// What names the operation in errors: "add address 172.17.0.2/16 to eth0".
	What string
	// OK lists errors that count as success (EEXIST for an idempotent add).
	OK []unix.Errno
	// Replies are the messages the kernel sent for the request besides its
	// acknowledgement (with NLM_F_ECHO, the object as made).
	Replies []syscall.NetlinkMessage
	// Errno is the kernel's answer, 0 for success (set even when in OK).
	Errno unix.Errno
}

// newReq makes a request that asks for an acknowledgement.
func newReq(what string, proto, flags int, data ...nl.NetlinkRequestData) *Req {
	m := nl.NewNetlinkRequest(proto, flags|unix.NLM_F_ACK)
	for _, d := range data {
		m.AddData(d)
	}
	return &Req{Msg: m, What: what}
}

// Exec sends reqs in one write and reads every answer. The kernel goes on
// with the next request after one fails; the first failure is returned,
// wrapped with what the request was for.
func (c *Conn) Exec(reqs ...*Req) error {
	var buf []byte
	pending := make(map[uint32]*Req, len(reqs))
	for _, r := range reqs {
		buf = append(buf, r.Msg.Serialize()...)
		pending[r.Msg.Seq] = r
	}
	if err := unix.Sendto(c.fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send netlink batch (%s...): %w", reqs[0].What, err)
	}
	var first error
	for len(pending) > 0 {
		msgs, err := c.receive()
		if err != nil {
			return fmt.Errorf("read netlink answers (%s...): %w", reqs[0].What, err)
		}
		for _, m := range msgs {
			r, ok := pending[m.Header.Seq]
			if !ok {
				continue
			}
			if m.Header.Type != unix.NLMSG_ERROR {
				// The message is in the read buffer, which the next
				// read overwrites.
				m.Data = append([]byte(nil), m.Data...)
				r.Replies = append(r.Replies, m)
				continue
			}
			delete(pending, m.Header.Seq)
			if len(m.Data) < 4 {
				return fmt.Errorf("%s: short netlink answer", r.What)
			}
			code := int32(binary.NativeEndian.Uint32(m.Data[:4]))
			if code == 0 {
				continue
			}
			errno := unix.Errno(-code)
			r.Errno = errno
			if slices.Contains(r.OK, errno) {
				continue
			}
			// Answers come in request order: the first is the earliest.
			if first == nil {
				first = fmt.Errorf("%s: %w", r.What, errno)
			}
		}
	}
	return first
}

// setLinkReq changes link index: flags under change, and attrs.
func setLinkReq(what string, index int, flags, change uint32, attrs ...*nl.RtAttr) *Req {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	msg.Flags, msg.Change = flags, change
	data := []nl.NetlinkRequestData{msg}
	for _, a := range attrs {
		data = append(data, a)
	}
	return newReq(what, unix.RTM_SETLINK, 0, data...)
}

// upReq sets link index up; extra attributes are applied first.
func upReq(what string, index int, attrs ...*nl.RtAttr) *Req {
	return setLinkReq(what, index, unix.IFF_UP, unix.IFF_UP, attrs...)
}

// noIPv6LinkLocalReq stops the kernel from giving link index an IPv6
// link-local address (IN6_ADDR_GEN_MODE_NONE). A kernel without IPv6 has
// nothing to stop.
func noIPv6LinkLocalReq(what string, index int) *Req {
	const in6AddrGenModeNone = 1 // linux/if_link.h
	mode := nl.NewRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{in6AddrGenModeNone})
	af := nl.NewRtAttr(unix.AF_INET6, mode.Serialize())
	r := setLinkReq(what, index, 0, 0, nl.NewRtAttr(unix.IFLA_AF_SPEC, af.Serialize()))
	r.OK = []unix.Errno{unix.EAFNOSUPPORT, unix.EOPNOTSUPP}
	return r
}

// bridgePortReq sets bridge port flags (IFLA_BRPORT_*) of link index.
func bridgePortReq(what string, index int, flags map[int]bool) *Req {
	msg := nl.NewIfInfomsg(unix.AF_BRIDGE)
	msg.Index = int32(index)
	info := nl.NewRtAttr(unix.IFLA_PROTINFO|unix.NLA_F_NESTED, nil)
	for attr, on := range flags {
		v := byte(0)
		if on {
			v = 1
		}
		info.AddRtAttr(attr, []byte{v})
	}
	return newReq(what, unix.RTM_SETLINK, 0, msg, info)
}

// echoedLink decodes the link a request made, from its NLM_F_ECHO reply.
func echoedLink(r *Req) (netlink.Link, bool) {
	for _, m := range r.Replies {
		if m.Header.Type == unix.RTM_NEWLINK {
			l, err := netlink.LinkDeserialize(nil, m.Data)
			if err == nil {
				return l, true
			}
		}
	}
	return nil, false
}
