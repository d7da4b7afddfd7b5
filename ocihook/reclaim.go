package ocihook

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/netsetup"
)

// Reclaim is what a hook leaves to the reclaimer: the slow tail of
// deletions whose effect is already in place when the hook returns (see
// netsetup.RetainNetfilterSockets). The traffic is stopped: the links are
// down, the map elements gone; what remains costs RCU grace periods.
type Reclaim struct {
	// Doomed says host veths were set down and put in
	// netsetup.DoomedGroup, to delete.
	Doomed bool `json:"doomed,omitempty"`
	// UDPPorts are host ports whose UDP conntrack entries to drop (after
	// the port's map element is gone, so no new flow goes to the old
	// container).
	UDPPorts []int `json:"udp_ports,omitempty"`

	// deleted says firewall objects were deleted: the netfilter sockets
	// must outlive the hook.
	deleted bool
}

func (r *Reclaim) empty() bool { return !r.Doomed && len(r.UDPPorts) == 0 && !r.deleted }

// Do deletes the doomed links and drops the conntrack entries, here and
// now.
func (r *Reclaim) Do() error {
	var errs []error
	if r.Doomed {
		if err := netsetup.DeleteDoomed(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range r.UDPPorts {
		if err := netsetup.FlushUDPConntrack(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DeferReclaim makes this Env's teardowns leave their slow tail to the
// reclaimer, handed over by HandOff. The hook does; commands a user waits
// on (gc) do not.
func (env *Env) DeferReclaim() {
	env.reclaim = &Reclaim{}
	netsetup.RetainNetfilterSockets()
}

// The reclaimer serves one state dir, on an abstract unix socket of the
// hook's network namespace; it exits when it has had nothing to do for
// reclaimLinger.
const (
	// reclaimQuiet: the netfilter sockets are closed once no handoff has
	// come for this long. Deletions are then no longer pending in the
	// kernel (a grace period is 8-25 ms here), so closing costs nothing.
	reclaimQuiet = 100 * time.Millisecond
	// reclaimMaxHold bounds how long sockets are held under a steady
	// stream of handoffs: then they are closed anyway, in one batch.
	reclaimMaxHold = 2 * time.Second
	reclaimLinger  = 2 * time.Second
)

func reclaimerAddr(stateDir string) *net.UnixAddr {
	sum := sha256.Sum256([]byte(stateDir))
	return &net.UnixAddr{Net: "unixpacket", Name: "@netshim-reclaim-" + hex.EncodeToString(sum[:8])}
}

// HandOff gives the reclaimer what this Env's teardowns deferred, with the
// netfilter sockets this process used. A setup (nothing deferred) hands
// its sockets over only to a reclaimer already running: one runs only
// after recent deletions, which closing them here would wait for. If the
// reclaimer cannot be reached, the work is done here.
func (env *Env) HandOff() {
	socks := netsetup.RetainedSockets()
	defer func() {
		for _, f := range socks {
			f.Close()
		}
	}()
	r := env.reclaim
	if r == nil || (r.empty() && len(socks) == 0) {
		return
	}
	needed := !r.empty()
	// A setup's handoff (sockets only) carries no work: no need to
	// encode it (encoding/json's first use costs ~30 µs).
	work, err := []byte("{}"), error(nil)
	if needed {
		work, err = json.Marshal(r)
	}
	if err == nil {
		if err = env.sendToReclaimer(work, socks, needed); err == nil || !needed {
			return
		}
	}
	env.logLine("-", "-", "reclaim", 0, fmt.Errorf("hand over to the reclaimer: %w; reclaiming in the hook", err))
	if err := r.Do(); err != nil {
		env.logLine("-", "-", "reclaim", 0, err)
	}
}

// sendToReclaimer delivers work and files to the reclaimer, starting one
// if none runs and start is set.
func (env *Env) sendToReclaimer(work []byte, files []*os.File, start bool) error {
	addr := reclaimerAddr(env.Store.Dir)
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var fd int
		if fd, err = dialReclaimer(addr); err == nil {
			// A connection accepted by the kernel is the reclaimer's:
			// one that is exiting refuses new ones (then another is
			// started) and still takes those already queued.
			err = send(fd, work, files)
			unix.Close(fd)
			if err == nil {
				return nil
			}
			continue
		}
		if !start {
			return err
		}
		var l *net.UnixListener
		if l, err = net.ListenUnix("unixpacket", addr); err != nil {
			continue // another hook just started one: use it
		}
		if err = env.startReclaimer(l); err != nil {
			return err
		}
		// The new reclaimer holds the listener: the connection waits in
		// its backlog, the message (and the files' references) in the
		// connection, until it accepts.
		if fd, err = dialReclaimer(addr); err == nil {
			err = send(fd, work, files)
			unix.Close(fd)
			if err == nil {
				return nil
			}
		}
	}
	return err
}

// peerIsRoot reports whether the other end of c runs as root. Abstract
// sockets have no permissions: anyone could bind the reclaimer's name
// first, or connect to it. A hook never hands its netfilter sockets (which
// carry its privileges) to anyone but root, and the reclaimer takes work
// from root only.
func peerIsRoot(c *net.UnixConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	root := false
	if err := rc.Control(func(fd uintptr) { root = fdPeerIsRoot(int(fd)) }); err != nil {
		return false
	}
	return root
}

// fdPeerIsRoot is peerIsRoot on a socket's descriptor.
func fdPeerIsRoot(fd int) bool {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	return err == nil && cred.Uid == 0
}

// errNotRoot refuses a peer that is not root.
var errNotRoot = errors.New("the reclaimer's socket is held by a process that is not root")

// dialReclaimer connects to the reclaimer listening on addr. A hook makes
// one connection and one write: plain syscalls, as net's dial would set up
// the runtime's poller for them (0.1 ms of a handoff).
func dialReclaimer(addr *net.UnixAddr) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("reclaimer socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: addr.Name}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect to the reclaimer: %w", err)
	}
	return fd, nil
}

// send hands work and files to the reclaimer at the other end of fd, which
// must run as root. It does not wait for an answer (see acceptHandoffs).
func send(fd int, work []byte, files []*os.File) error {
	if !fdPeerIsRoot(fd) {
		return errNotRoot
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	return unix.Sendmsg(fd, work, oob, nil, 0)
}

// startReclaimer starts the reclaimer on listener l, detached (see
// startHelper), with nothing but the listener.
func (env *Env) startReclaimer(l *net.UnixListener) error {
	defer l.Close()
	lf, err := l.File()
	if err != nil {
		return err
	}
	defer lf.Close()
	args := []string{"--state-dir", env.Store.Dir, "reclaim"}
	if env.Debug {
		args = append([]string{"--debug"}, args...)
	}
	p, err := startHelper(args, lf) // fd 3
	if err != nil {
		return fmt.Errorf("start reclaimer: %w", err)
	}
	return p.Release()
}

// handoff is one hook's work and netfilter sockets.
type handoff struct {
	work  Reclaim
	files []*os.File
}

// ReclaimerListener is the listener a hook handed to the reclaimer.
func ReclaimerListener() (*net.UnixListener, error) {
	f := os.NewFile(3, "reclaim")
	if f == nil {
		return nil, errors.New("reclaim needs its listener on fd 3 (it is started by the hook)")
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("reclaim needs its listener on fd 3 (it is started by the hook): %w", err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, errors.New("reclaim: fd 3 is not a unix socket")
	}
	return ul, nil
}

// RunReclaimer is the reclaimer: it takes hooks' handoffs on l, drops
// conntrack entries at once, and deletes doomed links and closes the
// netfilter sockets once no handoff has come for reclaimQuiet (at the
// latest after reclaimMaxHold), in batches. It exits after reclaimLinger
// with nothing to do. Failures go to the hook log: nobody waits for it.
func RunReclaimer(env *Env, l *net.UnixListener) error {
	msgs := make(chan handoff)
	stop := make(chan struct{})
	go acceptHandoffs(l, stop, msgs)
	var (
		held               []*os.File
		heldSince, lastMsg = time.Time{}, time.Now()
		doomedSince        time.Time
		pending            Reclaim
		busy               bool
		done               = make(chan error, 1)
		closing            bool
	)
	tick := time.NewTicker(reclaimQuiet / 4)
	defer tick.Stop()
	for {
		select {
		case h, ok := <-msgs:
			if !ok {
				msgs = nil
				break
			}
			if len(h.files) > 0 && len(held) == 0 {
				heldSince = time.Now()
			}
			held = append(held, h.files...)
			lastMsg = time.Now()
			pending.Doomed = pending.Doomed || h.work.Doomed
			pending.UDPPorts = append(pending.UDPPorts, h.work.UDPPorts...)
		case err := <-done:
			busy = false
			if err != nil {
				env.logLine("-", "-", "reclaim", 0, err)
			}
		case <-tick.C:
		}
		// Conntrack entries go at once (a flow must not stick to the old
		// container); links wait for a quiet moment like the sockets:
		// deleting one holds RTNL, which the hooks of a burst of
		// teardowns each need to set their veth aside.
		now := time.Now()
		quiet := now.Sub(lastMsg) >= reclaimQuiet
		if pending.Doomed && doomedSince.IsZero() {
			doomedSince = now
		}
		linksDue := pending.Doomed && (quiet || now.Sub(doomedSince) >= reclaimMaxHold)
		if !busy && (linksDue || len(pending.UDPPorts) > 0) {
			work := Reclaim{Doomed: linksDue, UDPPorts: pending.UDPPorts}
			pending.UDPPorts = nil
			if linksDue {
				pending.Doomed, doomedSince = false, time.Time{}
			}
			busy = true
			go func() {
				start := time.Now()
				err := work.Do()
				if env.Debug {
					env.logLine("-", "-", "reclaim", time.Since(start), err)
				}
				done <- err
			}()
		}
		if len(held) > 0 && (quiet || now.Sub(heldSince) >= reclaimMaxHold) {
			for _, f := range held {
				f.Close()
			}
			held = nil
		}
		idle := len(held) == 0 && !busy && pending.empty()
		if idle && !closing && now.Sub(lastMsg) >= reclaimLinger {
			// New hooks now fail to connect and start another; handoffs
			// already queued are still taken, through msgs.
			closing = true
			close(stop)
		}
		if idle && closing && msgs == nil {
			return nil
		}
	}
}

// acceptHandoffs receives handoffs until stop. Hooks do not wait for an
// answer, so every connection the kernel queued must be taken: on stop the
// listener first refuses new ones (shutdown, under the same name), then the
// queued ones are accepted, and only then is it closed.
func acceptHandoffs(l *net.UnixListener, stop <-chan struct{}, msgs chan<- handoff) {
	defer close(msgs)
	defer l.Close()
	r := &handoffReader{buf: make([]byte, 64<<10), oob: make([]byte, unix.CmsgSpace(4*253))} // SCM_MAX_FD descriptors
	go func() {
		<-stop
		l.SetDeadline(time.Unix(1, 0)) // wakes the Accept below
	}()
	for {
		c, err := l.AcceptUnix()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		r.take(c, msgs)
	}
	rc, err := l.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RD) })
	for {
		var nfd int
		var aerr error
		rc.Control(func(fd uintptr) { nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC) })
		if aerr != nil {
			return // EAGAIN: none left
		}
		f := os.NewFile(uintptr(nfd), "handoff")
		c, err := net.FileConn(f)
		f.Close()
		if uc, ok := c.(*net.UnixConn); err == nil && ok {
			r.take(uc, msgs)
		} else if err == nil {
			c.Close()
		}
	}
}

// handoffReader reads handoffs into its buffers.
type handoffReader struct{ buf, oob []byte }

// take reads one hook's handoff on c, from root only, and closes c.
func (r *handoffReader) take(c *net.UnixConn, msgs chan<- handoff) {
	defer c.Close()
	if !peerIsRoot(c) {
		return
	}
	c.SetDeadline(time.Now().Add(time.Second))
	n, oobn, _, _, err := c.ReadMsgUnix(r.buf, r.oob)
	if err != nil {
		return
	}
	var h handoff
	if cmsgs, err := unix.ParseSocketControlMessage(r.oob[:oobn]); err == nil {
		for _, cm := range cmsgs {
			if fds, err := unix.ParseUnixRights(&cm); err == nil {
				for _, fd := range fds {
					h.files = append(h.files, os.NewFile(uintptr(fd), "netfilter"))
				}
			}
		}
	}
	json.Unmarshal(r.buf[:n], &h.work)
	msgs <- h
}
