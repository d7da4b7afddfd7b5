package firewall

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/internal/sandbox"
	"github.com/netshim/netshim/state"
)

// A container's published ports, and the last network's rules, go in and
// out of iptables as the rules say; removing them again, or after a flush
// took some, is not an error and leaves nothing.
func TestIptablesApplied(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("no iptables-restore")
	}
	fw, err := New(config.FirewallIptables)
	if err != nil {
		t.Fatal(err)
	}
	n := NetRules{Name: "bridge", Bridge: "netshim0", Subnet: netip.MustParsePrefix("172.17.0.0/16"),
		Gateway: netip.MustParseAddr("172.17.0.1"), Mode: config.GatewayNAT, Masquerade: true}
	installed, err := fw.EnsureNetwork(n, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := PortRules{Bridge: "netshim0", IP: netip.MustParseAddr("172.17.0.2"), Ports: []state.Port{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}}
	dnat := "-A NETSHIM -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80"
	accept := "-A NETSHIM-PORTS -d 172.17.0.2/32 -o netshim0 -p tcp -m tcp --dport 80 -j ACCEPT"
	save := func() string {
		out, err := exec.Command("iptables-save").Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	if err := fw.AddPorts(p); err != nil {
		t.Fatal(err)
	}
	if got := save(); !strings.Contains(got, dnat+"\n") || !strings.Contains(got, accept+"\n") {
		t.Errorf("after AddPorts:\n%s", got)
	}
	if err := fw.RemovePorts(p); err != nil {
		t.Fatal(err)
	}
	if got := save(); strings.Contains(got, "172.17.0.2") {
		t.Errorf("after RemovePorts:\n%s", got)
	}
	if err := fw.RemovePorts(p); err != nil {
		t.Errorf("RemovePorts of ports already gone: %v", err)
	}
	// Half gone: the filter table flushed, the DNAT still in.
	if err := fw.AddPorts(p); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("iptables", "-F").CombinedOutput(); err != nil {
		t.Fatalf("iptables -F: %v %s", err, out)
	}
	if err := fw.RemovePorts(p); err != nil {
		t.Errorf("RemovePorts after a flush: %v", err)
	}
	if got := save(); strings.Contains(got, "172.17.0.2") {
		t.Errorf("after a flush and RemovePorts:\n%s", got)
	}

	// The last network goes, with every chain and jump of ours; and again
	// after a flush took some of them.
	for _, flush := range []bool{false, true} {
		if flush {
			if installed, err = fw.EnsureNetwork(n, nil); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("iptables", "-t", "nat", "-F").CombinedOutput(); err != nil {
				t.Fatalf("iptables -t nat -F: %v %s", err, out)
			}
		}
		if err := fw.RemoveNetwork(installed, true); err != nil {
			t.Fatalf("RemoveNetwork (flushed %v): %v", flush, err)
		}
		if got := save(); strings.Contains(got, "NETSHIM") {
			t.Errorf("after RemoveNetwork (flushed %v):\n%s", flush, got)
		}
	}

	// A dual-stack network: its rules in ip6tables too, and gone with it,
	// as are ip6tables' chains of ours with the last network.
	n.Subnet6, n.Gateway6 = netip.MustParsePrefix("fd00:17::/64"), netip.MustParseAddr("fd00:17::1")
	if installed, err = fw.EnsureNetwork(n, nil); err != nil {
		t.Fatal(err)
	}
	save6 := func() string {
		out, err := exec.Command("ip6tables-save").Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	if got := save6(); !strings.Contains(got, "-A NETSHIM-POSTROUTING -s fd00:17::/64 ! -o netshim0 -j MASQUERADE\n") ||
		!strings.Contains(got, "-A NETSHIM-PREROUTING -d fd00:17::/64 ! -i netshim0 -j DROP\n") || strings.Contains(got, "127.0.0.0") {
		t.Errorf("dual stack, ip6tables:\n%s", got)
	}
	if err := fw.RemoveNetwork(installed, true); err != nil {
		t.Fatal(err)
	}
	if got := save() + save6(); strings.Contains(got, "NETSHIM") {
		t.Errorf("after the dual-stack network's RemoveNetwork:\n%s", got)
	}
}

// Every rule of ours is written as iptables-save lists it, which
// EnsureNetwork, Present and Missing rely on: installed, each is found by
// its text, Missing finds nothing, and a second EnsureNetwork changes
// nothing.
func TestIptablesCanonical(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("no iptables-restore")
	}
	b := &Iptables{}
	nets := []NetRules{
		{Name: "bridge", Bridge: "netshim0", Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1"),
			Mode: config.GatewayNAT, Masquerade: true, Trusted: []string{"eth3"}},
		{Name: "r", Bridge: "br-r", Subnet: netip.MustParsePrefix("198.18.2.0/24"), Gateway: netip.MustParseAddr("198.18.2.1"), Mode: config.GatewayRouted, DNS: true},
		{Name: "u", Bridge: "br-u", Subnet: netip.MustParsePrefix("198.18.4.0/24"), Gateway: netip.MustParseAddr("198.18.4.1"),
			Mode: config.GatewayNATUnprotected, Masquerade: true, DNS: true},
		{Name: "i", Bridge: "br-i", Subnet: netip.MustParsePrefix("198.18.3.0/24"), Gateway: netip.MustParseAddr("198.18.3.1"),
			Mode: config.GatewayIsolated, Internal: true, DNS: true},
		{Name: "in", Bridge: "br-in", Subnet: netip.MustParsePrefix("198.18.5.0/24"), Gateway: netip.MustParseAddr("198.18.5.1"),
			Mode: config.GatewayNAT, Internal: true, DNS: true},
		{Name: "ov", Bridge: "ov-0123456789", Subnet: netip.MustParsePrefix("10.200.1.0/24"), Gateway: netip.MustParseAddr("10.200.1.1"),
			Mode: config.GatewayNAT, Masquerade: true, DNS: true, Overlay: &state.OverlayRules{Subnet: netip.MustParsePrefix("10.200.0.0/16"),
				VXLAN: "vx-0123456789", VNI: 4097, Peers: []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")}}},
	}
	// The same, dual stack: their ip6tables rules too.
	for i, n := range nets {
		n.Name, n.Bridge = n.Name+"6", n.Bridge+"6"
		n.Subnet6 = netip.MustParsePrefix(fmt.Sprintf("fd00:%x::/64", i))
		n.Gateway6 = n.Subnet6.Addr().Next()
		nets = append(nets, n)
	}
	ports := []PortRules{{Bridge: "netshim0", IP: netip.MustParseAddr("172.17.0.2"), Ports: []state.Port{
		{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
		{Proto: "udp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 5353, ContainerPort: 53},
	}}, {Bridge: "br-r", IP: netip.MustParseAddr("198.18.2.2"), Ports: []state.Port{{Proto: "tcp", ContainerPort: 80}}},
		// A dual-stack container's ports, in both families.
		{Bridge: "netshim06", IP: netip.MustParseAddr("172.17.0.3"), IP6: netip.MustParseAddr("fd00:0::3"), Ports: []state.Port{
			{Proto: "tcp", HostPort: 8090, ContainerPort: 80},
			{Proto: "udp", HostIP: netip.MustParseAddr("2001:db8::2"), HostPort: 8091, ContainerPort: 81},
		}}}
	var rs Ruleset
	for _, n := range nets {
		installed, err := b.EnsureNetwork(n, nil)
		if err != nil {
			t.Fatal(err)
		}
		rs.Networks = append(rs.Networks, NetworkState{Rules: n, Installed: installed})
	}
	for _, p := range ports {
		if err := b.AddPorts(p); err != nil {
			t.Fatal(err)
		}
	}
	rs.Ports = ports
	have, err := b.save(false)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range append(iptRuleset(rs, false), iptJumps()[0].iptRule) {
		if !have.has(r) {
			t.Errorf("not listed as written: %s", r.object())
		}
	}
	have6, err := b.save(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range append(iptRuleset(rs, true), iptJumps()[0].iptRule) {
		if !have6.has(r) {
			t.Errorf("not listed as written by ip6tables-save: %s", r.object())
		}
	}
	if missing, err := b.Missing(rs); err != nil || len(missing) != 0 {
		t.Errorf("missing after install: %v %v", err, missing)
	}
	before, _ := exec.Command("sh", "-c", "iptables-save; ip6tables-save").Output()
	for _, nw := range rs.Networks {
		if _, err := b.EnsureNetwork(nw.Rules, nw.Installed); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Reload(rs); err != nil {
		t.Fatal(err)
	}
	after, _ := exec.Command("sh", "-c", "iptables-save; ip6tables-save").Output()
	strip := func(b []byte) string { // counters and the header's date differ
		var out []string
		for _, l := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, ":") {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	if strip(before) != strip(after) {
		t.Errorf("EnsureNetwork again and Reload changed the ruleset:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

// TestIptablesOverlayPeers: a peer that joins gets its accept before the
// drop of the network's VNI, and one that leaves loses it.
func TestIptablesOverlayPeers(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	fw := &Iptables{}
	n := overlayRules()
	n.Overlay.Peers = nil
	installed, err := fw.EnsureNetwork(n, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, peers := range [][]netip.Addr{
		{netip.MustParseAddr("192.0.2.2")},
		{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")},
		{netip.MustParseAddr("192.0.2.3")},
	} {
		n.Overlay.Peers = peers
		if installed, err = fw.EnsureNetwork(n, installed); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("iptables", "-S", "NETSHIM-INPUT").Output()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if strings.HasPrefix(l, "-A ") {
				f := strings.Fields(l)
				got = append(got, f[len(f)-1]+" "+map[bool]string{true: f[3], false: "*"}[f[2] == "-s"])
			}
		}
		var want []string
		for _, p := range peers {
			want = append(want, "RETURN "+p.String()+"/32")
		}
		want = append(want, "DROP *")
		if strings.Join(got, ", ") != strings.Join(want, ", ") {
			t.Fatalf("peers %v: NETSHIM-INPUT is %v, want %v\n%s", peers, got, want, out)
		}
	}
}
