// Package netsetup does the kernel work of a container's network, as
// plumbing the engine's drivers use: bridges, the veth pair created
// straight into the container's netns, addresses and routes, sysctls,
// namespaces and processes, address pools, host ports, and the
// container's /etc files. Firewall rules are package firewall's.
package netsetup

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strconv"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/internal/fastio"
)

// NSIdentity identifies a network namespace (device and inode of its nsfs
// file), so two namespaces can be compared and a reused PID told apart.
type NSIdentity struct {
	Dev uint64
	Ino uint64
}

// NetnsOf opens the network namespace of pid and returns it with its
// identity. The caller closes the handle.
func NetnsOf(pid int) (netns.NsHandle, NSIdentity, error) {
	path := fmt.Sprintf("/proc/%d/ns/net", pid)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return netns.None(), NSIdentity{}, fmt.Errorf("open netns of pid %d: %w", pid, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return netns.None(), NSIdentity{}, fmt.Errorf("stat netns of pid %d: %w", pid, err)
	}
	return netns.NsHandle(fd), NSIdentity{Dev: st.Dev, Ino: st.Ino}, nil
}

// SelfNetns returns the identity of the calling process's network namespace
// (the "host" the hook works on).
func SelfNetns() (NSIdentity, error) {
	var st unix.Stat_t
	// The thread's view, which is the process's: hooks never setns the
	// calling thread (netlink handles are bound to namespaces instead).
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return NSIdentity{}, fmt.Errorf("stat own netns: %w", err)
	}
	return NSIdentity{Dev: st.Dev, Ino: st.Ino}, nil
}

// ProcStartTime returns the start time of pid in clock ticks since boot
// (field 22 of /proc/PID/stat). With the PID it identifies a process across
// PID reuse. A zombie (exited, not yet reaped) is reported as gone.
func ProcStartTime(pid int) (uint64, error) {
	data, err := fastio.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces and parentheses: fields are
	// counted from the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no command field", pid)
	}
	fields := bytes.Fields(data[i+1:])
	// After ')' come fields 3.. : the state is field 3, start time field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fields))
	}
	if s := string(fields[0]); s == "Z" || s == "X" {
		return 0, fmt.Errorf("pid %d: %w", pid, ErrExited)
	}
	v, err := strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat start time: %w", pid, err)
	}
	return v, nil
}

// ErrExited says a process has exited (it may wait to be reaped).
var ErrExited = errors.New("process has exited")

// Do runs fn on an OS thread switched into ns and switches back. If the
// thread cannot be switched back it is left locked, so the Go runtime
// throws it away instead of reusing a thread in the wrong namespace.
func Do(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- doHere(ns, fn) }()
	return <-errc
}

// doHere is Do on the calling goroutine. If its thread cannot be switched
// back, it stays locked to it: the caller must not go on.
func doHere(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Stay locked, so that the thread is never reused: Do's
		// goroutine ends, and the thread with it; a caller on its own
		// goroutine returns this error and goes no further.
		return fmt.Errorf("return to original netns: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}
