package netsetup

import (
	"net"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netshim/netshim/internal/sandbox"
)

// PrepareNetns turns IPv6 off for the links made in the container's netns
// after it and for nothing else: lo keeps ::1, the caller's netns is
// untouched. It brings lo up.
func TestPrepareNetns(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	ns := newNetns(t, nil)
	ctr, loopback6, err := PrepareNetns(ns, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Close()
	if err := ctr.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}); err != nil {
		t.Fatal(err)
	}
	read := func(dev string) string {
		data, _ := os.ReadFile("/proc/sys/net/ipv6/conf/" + dev + "/disable_ipv6")
		return strings.TrimSpace(string(data))
	}
	var eth0, lo string
	Do(ns, func() error { eth0, lo = read("eth0"), read("lo"); return nil })
	if eth0 != "1" || lo != "0" || read("default") != "0" {
		t.Errorf("disable_ipv6: eth0 %q, lo %q in the container's netns, default %q in the caller's", eth0, lo, read("default"))
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
	ns := newNetns(t, nil)
	ctr, _, err := PrepareNetns(ns, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Close()
	if err := ctr.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}); err != nil {
		t.Fatal(err)
	}
	read := func(dev, key string) string {
		data, _ := os.ReadFile("/proc/sys/net/ipv6/conf/" + dev + "/" + key)
		return strings.TrimSpace(string(data))
	}
	keys := []string{"disable_ipv6", "accept_dad", "router_solicitations"}
	var eth0 []string
	Do(ns, func() error {
		for _, k := range keys {
			eth0 = append(eth0, read("eth0", k))
		}
		return nil
	})
	if strings.Join(eth0, " ") != "0 0 0" {
		t.Errorf("eth0's %v: %v, want 0 0 0", keys, eth0)
	}
	if read("default", "accept_dad") == "0" || read("default", "router_solicitations") == "0" {
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
