package firewall

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/state"
)

func iptObjects(n NetRules) string {
	var objs []string
	for _, r := range iptNetworkRules(n, false) {
		objs = append(objs, r.object())
	}
	return strings.Join(objs, "\n")
}

func TestIptablesRulesData(t *testing.T) {
	n := NetRules{Name: "bridge", Bridge: "netshim0", Subnet: netip.MustParsePrefix("172.17.0.0/16"),
		Gateway: netip.MustParseAddr("172.17.0.1"), Mode: config.GatewayNAT, Masquerade: true, Trusted: []string{"eth3"}}
	got := iptObjects(n)
	for _, want := range []string{
		"raw NETSHIM-PREROUTING -d 172.17.0.0/16 -i eth3 -j RETURN\nraw NETSHIM-PREROUTING -d 172.17.0.0/16 ! -i netshim0 -j DROP",
		"nat NETSHIM-POSTROUTING -s 172.17.0.0/16 ! -o netshim0 -j MASQUERADE",
		"nat NETSHIM-POSTROUTING -o netshim0 -m addrtype --src-type LOCAL -m conntrack --ctstate DNAT -j MASQUERADE",
		"filter NETSHIM-FORWARD -i netshim0 -j ACCEPT\nfilter NETSHIM-FORWARD -o netshim0 -j DROP",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	for _, o := range strings.Split(got, "\n") {
		if r, err := parseIptObject(o); err != nil || r.object() != o {
			t.Errorf("round trip %q: %v", o, err)
		}
	}
	routed := n
	routed.Mode, routed.Masquerade = config.GatewayRouted, false
	if got := iptObjects(routed); strings.Contains(got, "MASQUERADE") || strings.Contains(got, "raw ") ||
		!strings.Contains(got, "filter NETSHIM-FORWARD -o netshim0 -p icmp -j ACCEPT\nfilter NETSHIM-FORWARD -o netshim0 -j DROP") {
		t.Errorf("routed:\n%s", got)
	}
	unprot := n
	unprot.Mode = config.GatewayNATUnprotected
	if got := iptObjects(unprot); strings.Contains(got, "raw ") || !strings.HasSuffix(got, "filter NETSHIM-FORWARD -o netshim0 -j ACCEPT") {
		t.Errorf("nat-unprotected:\n%s", got)
	}
	// A dual-stack network, in any gateway mode: ip6tables drops the
	// multicast listener reports coming in on its bridge, before it floods
	// them; iptables has nothing of the kind.
	dual := routed
	dual.Subnet6, dual.Gateway6 = netip.MustParsePrefix("fd00:17::/64"), netip.MustParseAddr("fd00:17::1")
	var v6 []string
	for _, r := range iptNetworkRules(dual, true) {
		v6 = append(v6, r.object())
	}
	mld := "raw NETSHIM-PREROUTING -i netshim0 -p ipv6-icmp -m icmp6 --icmpv6-type 131 -j DROP\n" +
		"raw NETSHIM-PREROUTING -i netshim0 -p ipv6-icmp -m icmp6 --icmpv6-type 132 -j DROP\n" +
		"raw NETSHIM-PREROUTING -i netshim0 -p ipv6-icmp -m icmp6 --icmpv6-type 143 -j DROP\n"
	if got := strings.Join(v6, "\n"); !strings.HasPrefix(got, mld) || strings.Contains(iptObjects(dual), "icmp6") {
		t.Errorf("dual stack, ip6tables:\n%s\niptables:\n%s", got, iptObjects(dual))
	}
	for _, o := range v6 {
		if r, err := parseIptObject(o); err != nil || r.object() != o {
			t.Errorf("round trip %q: %v", o, err)
		}
	}
	isolated := NetRules{Name: "iso", Bridge: "br-i", Subnet: netip.MustParsePrefix("192.0.2.0/24"), Gateway: netip.MustParseAddr("192.0.2.1"),
		Mode: config.GatewayIsolated, Internal: true, DNS: true}
	if got := iptObjects(isolated); !strings.Contains(got, "raw NETSHIM-PREROUTING -d 192.0.2.0/24 ! -i br-i -j DROP") ||
		!strings.Contains(got, "filter NETSHIM-INPUT -d 192.0.2.1/32 -i br-i -p udp -m udp --dport 53 -j ACCEPT") ||
		!strings.HasSuffix(got, "filter NETSHIM-INPUT -i br-i -j DROP\nfilter NETSHIM-OUTPUT -o br-i -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nfilter NETSHIM-OUTPUT -o br-i -j DROP") {
		t.Errorf("isolated:\n%s", got)
	}

	ports := iptPortRules(PortRules{Bridge: "netshim0", IP: netip.MustParseAddr("172.17.0.2"), Ports: []state.Port{
		{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
		{Proto: "udp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 5353, ContainerPort: 53},
		{Proto: "tcp", ContainerPort: 443},                                                          // routed: no host port
		{Proto: "tcp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 9090, ContainerPort: 80}, // the same accept
	}}, false)
	want := []string{
		"nat NETSHIM -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
		"filter NETSHIM-PORTS -d 172.17.0.2/32 -o netshim0 -p tcp -m tcp --dport 80 -j ACCEPT",
		"nat NETSHIM -d 127.0.0.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 172.17.0.2:53",
		"filter NETSHIM-PORTS -d 172.17.0.2/32 -o netshim0 -p udp -m udp --dport 53 -j ACCEPT",
		"filter NETSHIM-PORTS -d 172.17.0.2/32 -o netshim0 -p tcp -m tcp --dport 443 -j ACCEPT",
		"nat NETSHIM -d 127.0.0.1/32 -p tcp -m tcp --dport 9090 -j DNAT --to-destination 172.17.0.2:80",
	}
	if len(ports) != len(want) {
		t.Fatalf("port rules %v", ports)
	}
	for i, r := range ports {
		if r.object() != want[i] {
			t.Errorf("port rule %d: %q want %q", i, r.object(), want[i])
		}
	}
	if c := coexistRules(n); len(c) != 2 || c[1].object() != "filter NETSHIM-FORWARD -o netshim0 -j ACCEPT" {
		t.Errorf("coexist rules %v", c)
	}
	if _, err := parseIptObject("mangle X -j Y"); err == nil {
		t.Error("foreign table accepted")
	}
	// Reload's input: shared rules first in their chains.
	rs := iptRuleset(Ruleset{Networks: []NetworkState{{Rules: n}}}, false)
	if rs[0].object() != "raw NETSHIM-PREROUTING -d 127.0.0.0/8 ! -i lo -j DROP" || rs[1].object() != "raw NETSHIM-PREROUTING -i lo -j RETURN" ||
		rs[2].Args[1] != iptChainIso1 || rs[3].Args[1] != iptChainPorts {
		t.Errorf("shared rules not first: %v", rs[:4])
	}
}

// A container's rules go in and out in one iptables-restore, table by
// table, never flushing a chain.
func TestIptablesRestoreInput(t *testing.T) {
	rules := iptPortRules(PortRules{Bridge: "netshim0", IP: netip.MustParseAddr("172.17.0.2"), Ports: []state.Port{
		{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
	}}, false)
	want := "*nat\n-D NETSHIM -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\nCOMMIT\n" +
		"*filter\n-D NETSHIM-PORTS -d 172.17.0.2/32 -o netshim0 -p tcp -m tcp --dport 80 -j ACCEPT\nCOMMIT\n"
	if got := string(iptRestoreInput(nil, iptOps("-D", rules))); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if got := string(iptRestoreInput(nil, iptOps("-A", rules[1:]))); got != "*filter\n-A NETSHIM-PORTS -d 172.17.0.2/32 -o netshim0 -p tcp -m tcp --dport 80 -j ACCEPT\nCOMMIT\n" {
		t.Errorf("filter only:\n%s", got)
	}
}

// Declarations come first in their table, then the commands in order; an
// insert carries its position.
func TestIptablesRestoreDeclare(t *testing.T) {
	fwd := iptRule{"filter", iptChainForward, nil}
	jump := iptRule{"filter", "FORWARD", []string{"-j", iptChainForward}}
	got := string(iptRestoreInput([]iptRule{fwd}, []iptCmd{{Op: "-I", Pos: 1, Rule: jump}, {Op: "-F", Rule: fwd}}))
	if want := "*filter\n:NETSHIM-FORWARD - [0:0]\n-I FORWARD 1 -j NETSHIM-FORWARD\n-F NETSHIM-FORWARD\nCOMMIT\n"; got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
