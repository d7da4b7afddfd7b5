package netsetup

import (
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/internal/sandbox"
)

// PrepareNetns turns IPv6 off in the container's netns and no other, and
// brings its lo up.
func TestPrepareNetns(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, _ := netns.Get()
	defer orig.Close()
	ns, err := netns.New() // switches this thread into it
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	netns.Set(orig)
	ctr, err := PrepareNetns(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Close()
	read := func() string {
		data, _ := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
		return strings.TrimSpace(string(data))
	}
	var inside string
	Do(ns, func() error { inside = read(); return nil })
	if inside != "1" || read() != "0" {
		t.Errorf("disable_ipv6: %q in the container's netns, %q in the caller's", inside, read())
	}
	lo, err := ctr.LinkByName("lo")
	if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("lo not up: %v %+v", err, lo)
	}
	// The handle is bound to the container's netns, not the caller's.
	if links, err := ctr.LinkList(); err != nil || len(links) != 1 {
		t.Errorf("links through the handle: %v %v, want lo alone", err, links)
	}
}
