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

// DisableIPv6 turns IPv6 off in the netns the switch was opened in and no
// other, through a proc instance of its own and, where mounting one is
// refused, through the host's /proc, when written from that netns and
// when written from another.
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
			p := &Prepared{ipv6: openIPv6Switch()}
			p.DisableIPv6()
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
		// Opened in a new netns, written from this one.
		var p *Prepared
		var view *os.File
		if _, err := inNewNetns(func() (string, error) {
			p = &Prepared{ipv6: openIPv6Switch()}
			var err error
			view, err = os.Open("/proc/sys/net/ipv6/conf/all/disable_ipv6")
			return "", err
		}); err != nil {
			t.Fatal(err)
		}
		if p.ipv6 < 0 {
			t.Fatalf("private proc %v: the switch did not open", private)
		}
		p.DisableIPv6()
		p.DisableIPv6() // once only
		b := make([]byte, 8)
		n, err := view.ReadAt(b, 0)
		view.Close()
		if got := strings.TrimSpace(string(b[:n])); got != "1" {
			t.Errorf("private proc %v: written from outside, disable_ipv6 in the new netns = %q (%v), want 1", private, got, err)
		}
		if got, err := readSysctl(); err != nil || got != "0" {
			t.Errorf("private proc %v: written from outside, disable_ipv6 in the caller's netns = %q (%v), want 0", private, got, err)
		}
		if private && (mounted != 2 || mountErr != nil) {
			t.Errorf("the proc instance was mounted %d times (last error %v), want twice without error", mounted, mountErr)
		}
	}
}

// A prepared netns that is only closed keeps IPv6 on.
func TestPreparedCloseChangesNothing(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	got, err := inNewNetns(func() (string, error) {
		p, err := PrepareContainer(netns.None(), 2)
		if err != nil {
			return "", err
		}
		if len(p.Conns) != 2 {
			return "", fmt.Errorf("%d sockets, want 2", len(p.Conns))
		}
		p.Close()
		p.Close()       // twice: no harm
		p.DisableIPv6() // after Close: nothing to write
		return readSysctl()
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != "0" {
		t.Errorf("disable_ipv6 after Close = %q, want 0", got)
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
