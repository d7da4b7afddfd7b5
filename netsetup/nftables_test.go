package netsetup

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

func TestNetworkChainsData(t *testing.T) {
	n := NetRules{Name: "bridge", Bridge: "netshim0", Subnet: netip.MustParsePrefix("172.17.0.0/16"), Masquerade: true}
	chains := networkChains(n)
	if len(chains) != 1 {
		t.Fatalf("want only the masquerade chain, got %d", len(chains))
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
	if len(internal) != 1 || internal[0].object() != "ip/fwd-in" || len(internal[0].Rules) != 2 {
		t.Fatalf("internal: %+v", internal)
	}
	var fw Nftables
	if got := fw.NetworkObjects(n); !reflect.DeepEqual(got, []string{"ip/post-bridge"}) {
		t.Errorf("objects %v", got)
	}
	if none := networkChains(NetRules{Name: "x", Subnet: n.Subnet}); len(none) != 0 {
		t.Errorf("no masquerade, not internal: %d chains", len(none))
	}
	for _, bad := range []string{"post-bridge", "inet/x", "ip/"} {
		if _, _, err := parseObject(bad); err == nil {
			t.Errorf("parseObject(%q) accepted", bad)
		}
	}
}
