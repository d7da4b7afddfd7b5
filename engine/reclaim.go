package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/firewall"
	"github.com/netshim/netshim/netsetup"
)

// Reclaim is the slow tail of a teardown, whose effect is already in place
// when the teardown returns: the traffic is stopped (the host veth down and
// set aside, the map elements gone); what remains costs RCU grace periods.
// Deleting a link waits for one holding RTNL, which every hook's netlink
// work needs; closing a netfilter socket after a deletion waits for one
// holding nftables' commit mutex (see firewall.RetainSockets). A teardown
// hook hands both to the host's reclaimer and returns: the reclaimer closes
// the sockets and deletes the links in one batch once no teardown has come
// for reclaimQuiet, so a burst of teardowns does not queue behind its own
// deletions. docs/design.md has the whole story.
//
// The reclaimer listens on a socket in the state dir, which only root can
// reach; hooks connect to it, and start it, only under the host lock, and
// it retires under the lock too, so a hook never finds a socket that leads
// nowhere, and nothing another user binds or fills can hold a hook up.
type Reclaim struct {
	// Links says host veths were set aside (netsetup.DoomedGroup).
	Links bool `json:"links,omitempty"`
	// UDPPorts are host ports whose UDP conntrack entries to drop, after
	// the port's mapping is gone, so no flow sticks to the old container.
	UDPPorts []int `json:"udp_ports,omitempty"`
}

func (r *Reclaim) empty() bool { return !r.Links && len(r.UDPPorts) == 0 }

// Do does the work here and now.
func (r *Reclaim) Do() error {
	var errs []error
	if r.Links {
		errs = append(errs, netsetup.DeleteDoomed())
	}
	for _, p := range r.UDPPorts {
		errs = append(errs, netsetup.FlushUDPConntrack(p))
	}
	return errors.Join(errs...)
}

// The reclaimer's timing.
const (
	// reclaimQuiet: links are deleted and sockets closed once no handoff
	// has come for this long (a burst of teardowns is over).
	reclaimQuiet = 100 * time.Millisecond
	// reclaimMaxHold bounds how long they wait under a steady stream of
	// handoffs.
	reclaimMaxHold = 2 * time.Second
	// reclaimLinger: with nothing to do for this long, the reclaimer exits.
	reclaimLinger = 2 * time.Second
)

// reclaimSocket is the reclaimer's socket, in the state dir.
const reclaimSocket = "reclaim.sock"

// handOff gives r and the netfilter sockets this process retained to the
// host's reclaimer, starting one if none runs, and does not wait. Should
// that fail, the work is done here. The caller holds the lock.
func (e *Engine) handOff(r *Reclaim) {
	socks := firewall.RetainedSockets()
	defer func() {
		for _, f := range socks {
			f.Close()
		}
	}()
	if r.empty() && len(socks) == 0 {
		return
	}
	work, err := json.Marshal(r)
	if err == nil {
		err = e.sendToReclaimer(work, socks)
	}
	if err != nil {
		e.Log("", "", "reclaim", 0, fmt.Errorf("hand over to the reclaimer: %w; reclaiming in the hook", err))
		if err := r.Do(); err != nil {
			e.Log("", "", "reclaim", 0, err)
		}
	}
}

// sendToReclaimer delivers work and files to the reclaimer, starting one
// if none listens. The connection and the message never block: a full
// backlog is an error, and the caller does the work itself.
func (e *Engine) sendToReclaimer(work []byte, files []*os.File) error {
	path := filepath.Join(e.Store.Dir, reclaimSocket)
	fd, err := dialReclaimer(path)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) {
		if err := e.startReclaimer(path); err != nil {
			return err
		}
		fd, err = dialReclaimer(path)
	}
	if err != nil {
		return fmt.Errorf("connect to the reclaimer: %w", err)
	}
	defer unix.Close(fd)
	if cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED); err != nil || cred.Uid != 0 {
		return errors.New("the reclaimer's socket is not root's")
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	return unix.Sendmsg(fd, work, oob, nil, unix.MSG_DONTWAIT)
}

func dialReclaimer(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// startReclaimer binds the reclaimer's socket (replacing one left by a
// reclaimer that died) and starts the reclaimer on it.
func (e *Engine) startReclaimer(path string) error {
	unix.Unlink(path)
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("listen for the reclaimer: %w", err)
	}
	l.SetUnlinkOnClose(false) // the reclaimer has it now
	defer l.Close()
	f, err := l.File()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := startHelper([]string{"--state-dir", e.Store.Dir, "reclaim"}, f); err != nil { // fd 3
		unix.Unlink(path)
		return fmt.Errorf("start the reclaimer: %w", err)
	}
	return nil
}

// handoff is one hook's work and netfilter sockets.
type handoff struct {
	work  Reclaim
	files []*os.File
}

// RunReclaimer is the reclaimer (`netshim reclaim`): it takes hooks'
// handoffs on l (fd 3, from the hook that started it), drops conntrack
// entries at once, and deletes the links set aside and closes the
// netfilter sockets in one batch once teardowns pause. With nothing to do
// for reclaimLinger it retires, under the host lock, and exits. Failures
// go to the hook log: nobody waits for it.
func (e *Engine) RunReclaimer(l *net.UnixListener) error {
	// The socket's file, to unlink when retiring if it is still this
	// one: while this reclaimer listens, no hook replaces it.
	var ours unix.Stat_t
	unix.Stat(filepath.Join(e.Store.Dir, reclaimSocket), &ours)
	msgs := make(chan handoff)
	go acceptHandoffs(l, msgs)
	var (
		links       bool       // links were set aside since the last deletion
		held        []*os.File // netfilter sockets to close
		first, last time.Time  // the first handoff not released yet, the latest
	)
	take := func(h handoff) {
		if !links && len(held) == 0 {
			first = time.Now()
		}
		last = time.Now()
		links = links || h.work.Links
		held = append(held, h.files...)
		// A flow must not stick to the old container: at once.
		if len(h.work.UDPPorts) > 0 {
			e.logErr((&Reclaim{UDPPorts: h.work.UDPPorts}).Do())
		}
	}
	release := func() {
		if links {
			e.logErr(netsetup.DeleteDoomed())
		}
		for _, f := range held {
			f.Close()
		}
		links, held = false, nil
	}
	last = time.Now()
	timer := time.NewTimer(reclaimLinger)
	defer timer.Stop()
	for {
		select {
		case h := <-msgs:
			take(h)
		case <-timer.C:
		}
		pending := links || len(held) > 0
		now := time.Now()
		if pending && (now.Sub(last) >= reclaimQuiet || now.Sub(first) >= reclaimMaxHold) {
			release()
			pending = false
		}
		if !pending && now.Sub(last) >= reclaimLinger {
			if queued, done := e.retire(l, ours, msgs); done {
				for _, h := range queued {
					take(h)
				}
				release()
				return nil
			}
			last = now // the lock is busy: try again later
		}
		// Wake for the next of: the end of a pause, the longest hold, or
		// the end of idling.
		wait := time.Until(last.Add(reclaimLinger))
		if pending {
			wait = min(time.Until(last.Add(reclaimQuiet)), time.Until(first.Add(reclaimMaxHold)))
		}
		timer.Reset(wait)
	}
}

// retire stops the reclaimer taking handoffs, under the host lock: its
// socket is unlinked, and every handoff made before is returned: those
// acceptHandoffs took (it may have taken some while the reclaimer waited
// here for the lock; it closes msgs when it stops) and those still in the
// listen queue. done is false if the lock could not be had: the reclaimer
// goes on and tries again later.
func (e *Engine) retire(l *net.UnixListener, ours unix.Stat_t, msgs <-chan handoff) ([]handoff, bool) {
	lock, err := e.Store.Lock(reclaimLinger)
	if errors.Is(err, unix.ENOENT) {
		// The state dir is gone (a test's, removed): no hook will come.
		l.Close()
		return nil, true
	}
	if err != nil {
		return nil, false
	}
	defer lock.Unlock()
	path := filepath.Join(e.Store.Dir, reclaimSocket)
	var there unix.Stat_t
	if err := unix.Stat(path, &there); err == nil && there.Ino == ours.Ino && there.Dev == ours.Dev {
		unix.Unlink(path)
	}
	// Hooks connect under the lock: those queued are all there will be.
	l.SetDeadline(time.Unix(1, 0)) // ends acceptHandoffs's Accept
	var last []handoff
	for h := range msgs {
		last = append(last, h)
	}
	r := newHandoffReader()
	for {
		// A deadline just ahead: Accept takes a queued connection at
		// once and gives up soon when there is none (with one already
		// past, it gives up before it looks).
		l.SetDeadline(time.Now().Add(10 * time.Millisecond))
		c, err := l.AcceptUnix()
		if err != nil {
			break
		}
		if h, ok := r.take(c); ok {
			last = append(last, h)
		}
	}
	l.Close()
	return last, true
}

func (e *Engine) logErr(err error) {
	if err != nil {
		e.Log("", "", "reclaim", 0, err)
	}
}

// acceptHandoffs passes each handoff on to msgs until the listener stops
// accepting (see retire), and then closes msgs.
func acceptHandoffs(l *net.UnixListener, msgs chan<- handoff) {
	defer close(msgs)
	r := newHandoffReader()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if h, ok := r.take(c); ok {
			msgs <- h
		}
	}
}

// handoffReader reads handoffs into its buffers.
type handoffReader struct{ buf, oob []byte }

func newHandoffReader() *handoffReader {
	return &handoffReader{buf: make([]byte, 64<<10), oob: make([]byte, unix.CmsgSpace(4*253))} // SCM_MAX_FD descriptors
}

// take reads one hook's handoff on c, from root only, and closes c.
func (r *handoffReader) take(c *net.UnixConn) (handoff, bool) {
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return handoff{}, false
	}
	root := false
	rc.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		root = err == nil && cred.Uid == 0
	})
	if !root {
		return handoff{}, false
	}
	c.SetDeadline(time.Now().Add(time.Second))
	n, oobn, _, _, err := c.ReadMsgUnix(r.buf, r.oob)
	if err != nil {
		return handoff{}, false
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
	if json.Unmarshal(r.buf[:n], &h.work) != nil {
		return handoff{}, false
	}
	return h, true
}

// ReclaimerListener is the listener a hook handed to the reclaimer, on fd 3.
func ReclaimerListener() (*net.UnixListener, error) {
	f := os.NewFile(3, "reclaim")
	if f == nil {
		return nil, errors.New("reclaim needs its listener on fd 3 (it is started by a hook)")
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("reclaim needs its listener on fd 3 (it is started by a hook): %w", err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, errors.New("reclaim: fd 3 is not a unix socket")
	}
	return ul, nil
}

// startHelper starts this binary with args, detached: its own session,
// stdio on /dev/null (a runtime that waits for the hook's output to end
// must not wait for a helper), a fixed PATH, and files as fds 3 onwards.
// It does not wait for it: the helper is reaped as an orphan.
func startHelper(args []string, files ...*os.File) error {
	p, err := startHelperProcess(args, nil, files...)
	if err != nil {
		return err
	}
	return p.Release()
}

func startHelperProcess(args, env []string, files ...*os.File) (*os.Process, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary's path: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = "/"
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	if len(files) > 0 {
		// How many descriptors it inherits from fd 3, as systemd's
		// socket activation says it.
		cmd.Env = append(cmd.Env, "LISTEN_FDS="+strconv.Itoa(len(files)))
	}
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd.Process, nil
}
