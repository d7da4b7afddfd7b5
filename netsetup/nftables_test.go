package netsetup

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/netshim/netshim/state"
)

func TestNetworkChainsData(t *testing.T) {
	n := NetRules{Name: "bridge", Bridge: "netshim0", Subnet: netip.MustParsePrefix("172.17.0.0/16"), Masquerade: true}
	chains := networkChains(n)
	if len(chains) != 2 || len(chains[0].Rules) != 3 || chains[1].object() != "ip/fwd-bridge" || len(chains[1].Rules) != 1 {
		t.Fatalf("want a postrouting chain of 3 rules (out, local, hairpin) and a forward chain (isolation), got %+v", chains)
	}
	if l, ok := chains[1].Rules[0][3].(*expr.Lookup); !ok || l.SetName != "bridges" {
		t.Errorf("isolation looks up the bridge set: %T", chains[1].Rules[0][3])
	}
	c := chains[0]
	if c.object() != "ip/post-bridge" || c.Hook != nftables.ChainHookPostrouting || c.Type != nftables.ChainTypeNAT {
		t.Fatalf("chain %+v", c)
	}
	r := c.Rules[0]
	bw := r[1].(*expr.Bitwise)
	if !reflect.DeepEqual(bw.Mask, []byte{255, 255, 0, 0}) {
		t.Errorf("mask %v", bw.Mask)
	}
	if got := r[2].(*expr.Cmp).Data; !reflect.DeepEqual(got, []byte{172, 17, 0, 0}) {
		t.Errorf("subnet %v", got)
	}
	oif := r[4].(*expr.Cmp)
	if oif.Op != expr.CmpOpNeq || string(oif.Data[:8]) != "netshim0" || len(oif.Data) != 16 {
		t.Errorf("oifname %+v", oif)
	}
	if _, ok := r[len(r)-1].(*expr.Masq); !ok {
		t.Errorf("last expression %T", r[len(r)-1])
	}

	internal := networkChains(NetRules{Name: "in", Bridge: "br-x", Subnet: netip.MustParsePrefix("192.0.2.0/24"), Internal: true})
	if len(internal) != 1 || internal[0].object() != "ip/fwd-in" || len(internal[0].Rules) != 3 {
		t.Fatalf("internal: %+v", internal)
	}
	var fw Nftables
	if got := fw.NetworkObjects(n); !reflect.DeepEqual(got, []string{"ip/@bridges/netshim0", "ip/post-bridge", "ip/fwd-bridge"}) {
		t.Errorf("objects %v", got)
	}
	if noMasq := networkChains(NetRules{Name: "x", Subnet: n.Subnet}); len(noMasq) != 2 || len(noMasq[0].Rules) != 2 {
		t.Errorf("ip_masquerade=false keeps only the published-port rules: %+v", noMasq)
	}
	for _, bad := range []string{"post-bridge", "inet/x", "ip/"} {
		if _, _, err := parseObject(bad); err == nil {
			t.Errorf("parseObject(%q) accepted", bad)
		}
	}
}

func TestPortElements(t *testing.T) {
	ip := [4]byte{172, 17, 0, 2}
	m, e := portElement(ip, state.Port{Proto: "tcp", HostPort: 8080, ContainerPort: 80})
	// As nft --debug=netlink shows `tcp . 8080 : 172.17.0.2 . 80`.
	if m != mapAny || !reflect.DeepEqual(e.Key, []byte{6, 0, 0, 0, 0x1f, 0x90, 0, 0}) || !reflect.DeepEqual(e.Val, []byte{172, 17, 0, 2, 0, 80, 0, 0}) {
		t.Errorf("any: %s %v %v", m, e.Key, e.Val)
	}
	m, e = portElement(ip, state.Port{Proto: "udp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 9090, ContainerPort: 53})
	if m != mapByIP || !reflect.DeepEqual(e.Key, []byte{17, 0, 0, 0, 127, 0, 0, 1, 0x23, 0x82, 0, 0}) || !reflect.DeepEqual(e.Val, []byte{172, 17, 0, 2, 0, 53, 0, 0}) {
		t.Errorf("by ip: %s %v %v", m, e.Key, e.Val)
	}
	if keyAny.Bytes != 8 || keyByIP.Bytes != 12 || dataTo.Bytes != 8 {
		t.Errorf("key sizes %d %d %d", keyAny.Bytes, keyByIP.Bytes, dataTo.Bytes)
	}
	chains := publishChains()
	if len(chains) != 3 || len(chains[0].Rules) != 2 || chains[1].Hook != nftables.ChainHookPrerouting || chains[2].Hook != nftables.ChainHookOutput {
		t.Errorf("publish chains %+v", chains)
	}
}
