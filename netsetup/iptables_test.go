package netsetup

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/netshim/netshim/state"
)

func TestIptablesRulesData(t *testing.T) {
	n := NetRules{Name: "bridge", Bridge: "netshim0", Subnet: netip.MustParsePrefix("172.17.0.0/16"), Masquerade: true}
	var objs []string
	for _, r := range iptNetworkRules(n) {
		objs = append(objs, r.object())
	}
	got := strings.Join(objs, "\n")
	for _, want := range []string{
		"nat POSTROUTING -s 172.17.0.0/16 ! -o netshim0 -j MASQUERADE",
		"nat POSTROUTING -o netshim0 -m addrtype --src-type LOCAL -m conntrack --ctstate DNAT -j MASQUERADE",
		"filter NETSHIM-FORWARD -i netshim0 -j ACCEPT",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	for _, o := range objs {
		if r, err := parseIptObject(o); err != nil || r.object() != o {
			t.Errorf("round trip %q: %v", o, err)
		}
	}
	internal := iptNetworkRules(NetRules{Name: "in", Bridge: "br-x", Subnet: netip.MustParsePrefix("192.0.2.0/24"), Internal: true})
	if len(internal) != 4 || internal[2].Args[len(internal[2].Args)-1] != "DROP" {
		t.Errorf("internal: %v", internal)
	}
	ports := iptPortRules(PortRules{Bridge: "netshim0", IP: [4]byte{172, 17, 0, 2}, Ports: []state.Port{
		{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
		{Proto: "udp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 5353, ContainerPort: 53},
	}})
	want := []string{
		"nat NETSHIM -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
		"filter NETSHIM-FORWARD -d 172.17.0.2/32 -o netshim0 -p tcp -m tcp --dport 80 -j ACCEPT",
		"nat NETSHIM -p udp -d 127.0.0.1/32 -m udp --dport 5353 -j DNAT --to-destination 172.17.0.2:53",
		"filter NETSHIM-FORWARD -d 172.17.0.2/32 -o netshim0 -p udp -m udp --dport 53 -j ACCEPT",
	}
	for i, r := range ports {
		if r.object() != want[i] {
			t.Errorf("port rule %d: %q want %q", i, r.object(), want[i])
		}
	}
	if c := coexistRules(n); len(c) != 5 || c[4].Args[len(c[4].Args)-3] != "DNAT" {
		t.Errorf("coexist rules %v", c)
	}
	if _, err := parseIptObject("mangle X -j Y"); err == nil {
		t.Error("foreign table accepted")
	}
}
