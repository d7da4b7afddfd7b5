package netsetup

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/netshim/netshim/internal/sandbox"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// disableIPv6 turns IPv6 off in the calling thread's netns and no other,
// through a proc instance of its own and, where mounting one is refused,
// through the host's /proc.
func TestDisableIPv6(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	defer func() { procInstance = privateProc }()
	for _, private := range []bool{true, false} {
		// The private path must work, not only fall back: its mounts
		// are counted and their errors kept.
		mounted := 0
		var mountErr error
		procInstance = func() (int, error) {
			if !private {
				return -1, unix.EPERM
			}
			mounted++
			fd, err := privateProc()
			mountErr = err
			return fd, err
		}
		got, err := inNewNetns(func() (string, error) {
			disableIPv6()
			return readSysctl()
		})
		if err != nil {
			t.Fatal(err)
		}
		if got != "1" {
			t.Errorf("private proc %v: disable_ipv6 in the new netns = %q, want 1", private, got)
		}
		if got, err := readSysctl(); err != nil || got != "0" {
			t.Errorf("private proc %v: disable_ipv6 in the caller's netns = %q (%v), want 0", private, got, err)
		}
		if private && (mounted != 1 || mountErr != nil) {
			t.Errorf("the proc instance was mounted %d times (last error %v), want once without error", mounted, mountErr)
		}
	}
}

// readSysctl reads net.ipv6.conf.all.disable_ipv6 of the calling
// thread's netns.
func readSysctl() (string, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return strings.TrimSpace(string(b)), err
}

// inNewNetns runs fn on a thread in a new netns, thrown away after.
func inNewNetns(fn func() (string, error)) (string, error) {
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends in the new netns
		ns, err := netns.New()
		if err != nil {
			ch <- result{err: fmt.Errorf("new netns: %w", err)}
			return
		}
		ns.Close()
		s, err := fn()
		ch <- result{s, err}
	}()
	r := <-ch
	return r.s, r.err
}
