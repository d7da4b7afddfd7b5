package firewall

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/internal/sandbox"
	"github.com/netshim/netshim/state"
)

// A dual-stack network's rules and a container's ports go into the kernel
// in both families as the data says (nft lists them as written), Missing
// finds nothing, a reload lists the same ruleset, and removing them
// leaves no table.
func TestNftablesApplied6(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	fw := &Nftables{}
	n := NetRules{Name: "d", Bridge: "br-d", Subnet: netip.MustParsePrefix("10.60.0.0/24"), Gateway: netip.MustParseAddr("10.60.0.1"),
		Subnet6: netip.MustParsePrefix("fd00:60::/64"), Gateway6: netip.MustParseAddr("fd00:60::1"), Mode: config.GatewayNAT, Masquerade: true,
		Trusted: []string{"eth3"}}
	iso := NetRules{Name: "i", Bridge: "br-i", Subnet: netip.MustParsePrefix("10.61.0.0/24"), Gateway: netip.MustParseAddr("10.61.0.1"),
		Subnet6: netip.MustParsePrefix("fd00:61::/64"), Gateway6: netip.MustParseAddr("fd00:61::1"), Mode: config.GatewayIsolated, Internal: true, DNS: true}
	var rs Ruleset
	for _, nr := range []NetRules{n, iso} {
		installed, err := fw.EnsureNetwork(nr, nil)
		if err != nil {
			t.Fatal(err)
		}
		rs.Networks = append(rs.Networks, NetworkState{Rules: nr, Installed: installed})
	}
	p := PortRules{Bridge: "br-d", IP: netip.MustParseAddr("10.60.0.2"), IP6: netip.MustParseAddr("fd00:60::2"), Ports: []state.Port{
		{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
		{Proto: "udp", HostIP: netip.MustParseAddr("2001:db8::2"), HostPort: 5353, ContainerPort: 53},
	}}
	if err := fw.AddPorts(p); err != nil {
		t.Fatal(err)
	}
	rs.Ports = []PortRules{p}
	list := func() string {
		out, err := exec.Command("nft", "list", "ruleset").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list ruleset: %v %s", err, out)
		}
		return string(out)
	}
	got := list()
	for _, want := range []string{
		"table ip6 netshim",
		`ip6 daddr fd00:60::/64 iifname != "br-d" iifname != "lo" counter`,
		`ip6 saddr fd00:60::/64 oifname != "br-d" counter`,
		"dnat ip6 to meta l4proto . ip6 daddr . th dport map @publish-ip",
		"tcp . 8080 : fd00:60::2 . 80",
		"udp . 2001:db8::2 . 5353 : fd00:60::2 . 53",
		"fd00:60::2 . tcp . 80",
		`iifname "br-i" ip6 daddr fd00:61::1 udp dport 53 counter`,
		"tcp . 8080 : 10.60.0.2 . 80",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("nft list ruleset lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("ruleset:\n%s", got)
	}
	if missing, err := fw.Missing(rs); err != nil || len(missing) != 0 {
		t.Errorf("missing after install: %v %v", err, missing)
	}
	if _, err := fw.Reload(rs); err != nil {
		t.Fatal(err)
	}
	strip := func(s string) string { // counters differ
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if i := strings.Index(l, "counter packets"); i >= 0 {
				l = l[:i]
			}
			out = append(out, l)
		}
		return strings.Join(out, "\n")
	}
	if after := list(); strip(after) != strip(got) {
		t.Errorf("reload changed the ruleset:\n--- before\n%s\n--- after\n%s", got, after)
	}
	if err := fw.RemovePorts(p); err != nil {
		t.Fatal(err)
	}
	if got := list(); strings.Contains(got, "fd00:60::2") || strings.Contains(got, "10.60.0.2") {
		t.Errorf("after RemovePorts:\n%s", got)
	}
	if err := fw.RemoveNetwork(rs.Networks[1].Installed, false); err != nil {
		t.Fatal(err)
	}
	if err := fw.RemoveNetwork(rs.Networks[0].Installed, true); err != nil {
		t.Fatal(err)
	}
	if got := list(); strings.Contains(got, "netshim") {
		t.Errorf("after the last RemoveNetwork:\n%s", got)
	}
}
