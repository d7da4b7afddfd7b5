package firewall

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/state"
)

func overlayRules() NetRules {
	return NetRules{Name: "ov", Bridge: "ov-0123456789ab", Subnet: netip.MustParsePrefix("10.200.1.0/24"),
		Gateway: netip.MustParseAddr("10.200.1.1"), Mode: config.GatewayNAT, Masquerade: true, DNS: true,
		Overlay: &state.OverlayRules{Subnet: netip.MustParsePrefix("10.200.0.0/16"), VXLAN: "vx-0123456789ab", VNI: 0x010203,
			Peers: []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")}}}
}

func TestOverlayChains(t *testing.T) {
	chains := chainsByName(networkChains(overlayRules()))
	// The other hosts' containers come in through the VXLAN device, before
	// the direct-access drop.
	if v := verdicts(chains["raw-ov"]); !reflect.DeepEqual(v, []string{"accept", "drop"}) {
		t.Errorf("raw %v", v)
	}
	// No masquerade inside the overlay, masquerade out of it.
	if v := verdicts(chains["post-ov"]); !reflect.DeepEqual(v, []string{"accept", "masq", "masq", "masq"}) {
		t.Errorf("post %v", v)
	}
	// isolation, established, dnat, published, overlay, drop
	if v := verdicts(chains["fwd-ov"]); !reflect.DeepEqual(v, []string{"drop", "accept", "accept", "accept", "accept", "drop"}) {
		t.Errorf("fwd %v", v)
	}
	vx, ok := chains["vx-ov"]
	if !ok || vx.Hook != nftables.ChainHookInput || vx.Family != nftables.TableFamilyIPv4 {
		t.Fatalf("no input chain for the VXLAN port: %+v", chains)
	}
	// One accept per peer, then a drop of the VNI.
	if v := verdicts(vx); !reflect.DeepEqual(v, []string{"accept", "accept", "drop"}) {
		t.Fatalf("vxlan %v", v)
	}
	var sawVNI, sawPort, sawPeer bool
	for _, e := range vx.Rules[0] {
		switch x := e.(type) {
		case *expr.Payload:
			sawVNI = sawVNI || (x.Base == expr.PayloadBaseTransportHeader && x.Offset == 12 && x.Len == 3)
		case *expr.Cmp:
			sawVNI = sawVNI || reflect.DeepEqual(x.Data, []byte{1, 2, 3})
			sawPort = sawPort || reflect.DeepEqual(x.Data, []byte{0x12, 0xb5})
			sawPeer = sawPeer || reflect.DeepEqual(x.Data, []byte{192, 0, 2, 2})
		}
	}
	if !sawVNI || !sawPort || !sawPeer {
		t.Errorf("the first rule does not match VNI (%v), port 4789 (%v) and the first peer (%v)", sawVNI, sawPort, sawPeer)
	}
	var fw Nftables
	if got := fw.NetworkObjects(overlayRules()); !reflect.DeepEqual(got[len(got)-1], "ip/vx-ov") {
		t.Errorf("objects %v", got)
	}
	// Without peers, every packet of the VNI is dropped.
	lone := overlayRules()
	lone.Overlay.Peers = nil
	if v := verdicts(chainsByName(networkChains(lone))["vx-ov"]); !reflect.DeepEqual(v, []string{"drop"}) {
		t.Errorf("no peers: %v", v)
	}
}

func TestOverlayIptablesRules(t *testing.T) {
	var lines []string
	for _, r := range iptNetworkRules(overlayRules(), false) {
		lines = append(lines, r.object())
	}
	text := strings.Join(lines, "\n")
	for _, want := range []string{
		"raw NETSHIM-PREROUTING -s 10.200.0.0/16 -d 10.200.1.0/24 -i vx-0123456789ab -j RETURN\nraw NETSHIM-PREROUTING -d 10.200.1.0/24 ! -i ov-0123456789ab -j DROP",
		"nat NETSHIM-POSTROUTING -s 10.200.1.0/24 -d 10.200.0.0/16 -j RETURN\nnat NETSHIM-POSTROUTING -s 10.200.1.0/24 ! -o ov-0123456789ab -j MASQUERADE",
		"filter NETSHIM-FORWARD -s 10.200.0.0/16 -i vx-0123456789ab -o ov-0123456789ab -j ACCEPT\nfilter NETSHIM-FORWARD -o ov-0123456789ab -j DROP",
		`filter NETSHIM-INPUT -s 192.0.2.2/32 -p udp -m udp --dport 4789 -m u32 --u32 "0x0>>0x16&0x3c@0xc>>0x8=0x10203" -j RETURN`,
		`filter NETSHIM-INPUT -p udp -m udp --dport 4789 -m u32 --u32 "0x0>>0x16&0x3c@0xc>>0x8=0x10203" -j DROP`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("rules lack\n%s\nin\n%s", want, text)
		}
	}
	if r := iptNetworkRules(overlayRules(), true); len(r) != 0 {
		t.Errorf("an IPv4-only overlay network has ip6tables rules: %v", r)
	}
}
