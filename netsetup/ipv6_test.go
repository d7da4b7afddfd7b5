package netsetup

import (
	"net"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/internal/sandbox"
)

// prepared is a fresh netns readied by PrepareNetns, with a veth pair
// (eth0, eth1) made in it afterwards, as a setup makes eth0.
func prepared(t *testing.T, ipv6 bool) (netns.NsHandle, *netlink.Handle, bool) {
	t.Helper()
	ns := newNetns(t, nil)
	ctr, loopback6, err := PrepareNetns(ns, ipv6)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctr.Close() })
	if err := ctr.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}); err != nil {
		t.Fatal(err)
	}
	return ns, ctr, loopback6
}

// ipv6Conf reads net.ipv6.conf.DEV.KEY in the calling thread's netns.
func ipv6Conf(dev, key string) string {
	data, _ := os.ReadFile("/proc/sys/net/ipv6/conf/" + dev + "/" + key)
	return strings.TrimSpace(string(data))
}

// PrepareNetns turns IPv6 off for the links made in the container's netns
// after it and for nothing else: lo keeps ::1, the caller's netns is
// untouched. It brings lo up.
func TestPrepareNetns(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	ns, ctr, loopback6 := prepared(t, false)
	var eth0, lo string
	Do(ns, func() error { eth0, lo = ipv6Conf("eth0", "disable_ipv6"), ipv6Conf("lo", "disable_ipv6"); return nil })
	if eth0 != "1" || lo != "0" || ipv6Conf("default", "disable_ipv6") != "0" {
		t.Errorf("disable_ipv6: eth0 %q, lo %q in the container's netns, default %q in the caller's", eth0, lo, ipv6Conf("default", "disable_ipv6"))
	}
	if !loopback6 {
		t.Error("PrepareNetns says lo has no IPv6")
	}
	loLink, err := ctr.LinkByName("lo")
	if err != nil || loLink.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("lo not up: %v %+v", err, loLink)
	}
	addrs, err := ctr.AddrList(loLink, netlink.FAMILY_V6)
	if err != nil || len(addrs) != 1 || !addrs[0].IP.Equal(net.IPv6loopback) {
		t.Errorf("lo's IPv6 addresses: %v %v, want ::1", err, addrs)
	}
	// The handle is bound to the container's netns, not the caller's.
	if links, err := ctr.LinkList(); err != nil || len(links) != 3 {
		t.Errorf("links through the handle: %v %v, want lo, eth0 and eth1", err, links)
	}
}

// For a dual-stack network, the links made after PrepareNetns have IPv6 on,
// and send neither duplicate address detection nor router solicitations;
// the caller's netns keeps its defaults.
func TestPrepareNetns6(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	ns, _, _ := prepared(t, true)
	keys := []string{"disable_ipv6", "accept_dad", "router_solicitations"}
	var eth0 []string
	Do(ns, func() error {
		for _, k := range keys {
			eth0 = append(eth0, ipv6Conf("eth0", k))
		}
		return nil
	})
	if strings.Join(eth0, " ") != "0 0 0" {
		t.Errorf("eth0's %v: %v, want 0 0 0", keys, eth0)
	}
	if ipv6Conf("default", "accept_dad") == "0" || ipv6Conf("default", "router_solicitations") == "0" {
		t.Error("the caller's netns defaults changed")
	}
}

// Where the netns turned IPv6 off on lo, PrepareNetns says so.
func TestPrepareNetnsLoopbackIPv6Off(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	ns := newNetns(t, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0)
	})
	ctr, loopback6, err := PrepareNetns(ns, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Close()
	if loopback6 {
		t.Error("PrepareNetns says lo has IPv6")
	}
}
