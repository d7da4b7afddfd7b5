package netsetup

import (
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// hostHandle is a netlink handle in the test's netns, closed when the test ends.
func hostHandle(t *testing.T) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// newNetns makes a netns, as a runtime makes a container's, runs inside
// (if not nil) in it, and closes it when the test ends. The calling thread
// stays in the test's netns.
func newNetns(t *testing.T, inside func() error) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // switches this thread into it
	if err != nil {
		t.Fatal(err)
	}
	if inside != nil {
		err = inside()
	}
	if err := netns.Set(orig); err != nil {
		panic(err) // this thread must not run anything else in ns
	}
	t.Cleanup(func() { ns.Close() })
	if err != nil {
		t.Fatal(err)
	}
	return ns
}
