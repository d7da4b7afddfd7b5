package netsetup

import (
	"errors"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/internal/sandbox"
)

// CreatePair makes both ends as Docker's bridge driver does: the host end on
// its bridge, marked, a hairpin (and isolated) port, with no IPv6 address
// and no queue, up; the container end in its netns, down, with its MAC and
// MTU. A taken name is EEXIST, and leaves nothing.
func TestCreatePair(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := hostHandle(t)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-test"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	ns := newNetns(t, nil)
	ctr, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Close()

	mac := net.HardwareAddr{0x02, 0x42, 192, 0, 2, 9}
	spec := PairSpec{HostName: "vethtest", PeerName: "eth0", Alias: "netshim:c1", Bridge: br.Index, MTU: 1400, MAC: mac, Isolated: true}
	if err := CreatePair(ns, spec); err != nil {
		t.Fatal(err)
	}
	host, err := h.LinkByName("vethtest")
	if err != nil {
		t.Fatal(err)
	}
	a := host.Attrs()
	if a.Alias != spec.Alias || a.MasterIndex != br.Index || a.Flags&net.FlagUp == 0 || a.MTU != 1400 || a.TxQLen != 0 {
		t.Errorf("host end: alias %q master %d flags %v mtu %d txqlen %d", a.Alias, a.MasterIndex, a.Flags, a.MTU, a.TxQLen)
	}
	if p, err := h.LinkGetProtinfo(host); err != nil || !p.Hairpin || !p.Isolated {
		t.Errorf("host end's port flags: %v %+v, want hairpin and isolated", err, p)
	}
	peer, err := ctr.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	p := peer.Attrs()
	if p.HardwareAddr.String() != mac.String() || p.MTU != 1400 || p.Flags&net.FlagUp != 0 {
		t.Errorf("container end: mac %s mtu %d flags %v", p.HardwareAddr, p.MTU, p.Flags)
	}
	// IN6_ADDR_GEN_MODE_NONE shows as no link-local address once the
	// link has carrier.
	if err := ctr.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	if addrs, _ := h.AddrList(host, unix.AF_INET6); len(addrs) != 0 {
		t.Errorf("host end has IPv6 addresses: %v", addrs)
	}

	// The same host name again: EEXIST, and the existing pair untouched.
	ns2 := newNetns(t, nil)
	err = CreatePair(ns2, PairSpec{HostName: "vethtest", PeerName: "eth0", Alias: "netshim:c2", Bridge: br.Index, MTU: 1400, MAC: mac})
	if !errors.Is(err, unix.EEXIST) {
		t.Errorf("second pair named vethtest: %v, want EEXIST", err)
	}
	if l, err := h.LinkByName("vethtest"); err != nil || l.Attrs().Alias != "netshim:c1" {
		t.Errorf("existing host end after a refused pair: %v %+v", err, l)
	}
	// A bridge that is not there: nothing is left of the pair.
	if err := CreatePair(ns2, PairSpec{HostName: "vethnobr", PeerName: "eth0", Alias: "x", Bridge: 9999, MTU: 1500, MAC: mac}); err == nil {
		t.Error("pair on a missing bridge: no error")
	}
	if _, err := h.LinkByName("vethnobr"); err == nil {
		t.Error("pair on a missing bridge: host end left")
	}
}

// SetAside stops only a link of ours (its alias), down and into
// DoomedGroup in one request; DeleteDoomed deletes the group.
func TestSetAside(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := hostHandle(t)
	for _, name := range []string{"vethours", "vethother"} {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, Flags: net.FlagUp}, PeerName: name + "p"}
		if err := h.LinkAdd(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.LinkSetAlias(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "vethours"}}, "netshim:c1"); err != nil {
		t.Fatal(err)
	}
	if aside, err := SetAside(h, "vethother", "netshim:c1", false); err != nil || aside {
		t.Errorf("someone else's link: set aside %v, %v", aside, err)
	}
	if aside, err := SetAside(h, "vethgone", "netshim:c1", false); err != nil || aside {
		t.Errorf("a missing link: set aside %v, %v", aside, err)
	}
	if aside, err := SetAside(h, "vethours", "netshim:c1", false); err != nil || !aside {
		t.Fatalf("our link: set aside %v, %v", aside, err)
	}
	// Unmarked: a veth without alias is taken (a setup killed before it
	// marked its pair), a link of another kind is not.
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "brbare", Flags: net.FlagUp}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vethbare", Flags: net.FlagUp}, PeerName: "vethbarep"}); err != nil {
		t.Fatal(err)
	}
	if aside, err := SetAside(h, "brbare", "netshim:c2", true); err != nil || aside {
		t.Errorf("an unmarked link that is no veth: set aside %v, %v", aside, err)
	}
	if aside, err := SetAside(h, "vethbare", "netshim:c2", true); err != nil || !aside {
		t.Errorf("an unmarked veth: set aside %v, %v", aside, err)
	}
	for name, doomed := range map[string]bool{"brbare": false, "vethbare": true} {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Attrs().Group == DoomedGroup; got != doomed {
			t.Errorf("%s: in the doomed group %v, want %v", name, got, doomed)
		}
	}
	ours, _ := h.LinkByName("vethours")
	other, _ := h.LinkByName("vethother")
	if a := ours.Attrs(); a.Flags&net.FlagUp != 0 || a.Group != DoomedGroup {
		t.Errorf("our link after SetAside: flags %v group %#x", a.Flags, a.Group)
	}
	if a := other.Attrs(); a.Flags&net.FlagUp == 0 || a.Group == DoomedGroup {
		t.Errorf("someone else's link changed: flags %v group %#x", a.Flags, a.Group)
	}
	if err := DeleteDoomed(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName("vethours"); err == nil {
		t.Error("the link set aside is still there after DeleteDoomed")
	}
	if _, err := h.LinkByName("vethother"); err != nil {
		t.Errorf("someone else's link deleted: %v", err)
	}
}
