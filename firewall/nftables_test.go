package firewall

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/state"
)

// chainsByName indexes a network's chains.
func chainsByName(chains []nftChain) map[string]nftChain {
	out := map[string]nftChain{}
	for _, c := range chains {
		out[c.Name] = c
	}
	return out
}

// verdicts is each rule's final verdict ("drop", "accept", "masq", "jump").
func verdicts(c nftChain) []string {
	var out []string
	for _, r := range c.Rules {
		switch v := r[len(r)-1].(type) {
		case *expr.Verdict:
			out = append(out, map[expr.VerdictKind]string{expr.VerdictDrop: "drop", expr.VerdictAccept: "accept", expr.VerdictJump: "jump"}[v.Kind])
		case *expr.Masq:
			out = append(out, "masq")
		default:
			out = append(out, "?")
		}
	}
	return out
}

func TestNetworkChainsData(t *testing.T) {
	n := NetRules{Name: "bridge", Bridge: "netshim0", Subnet: netip.MustParsePrefix("172.17.0.0/16"),
		Gateway: netip.MustParseAddr("172.17.0.1"), Mode: config.GatewayNAT, Masquerade: true}
	chains := chainsByName(networkChains(n))
	if len(chains) != 3 {
		t.Fatalf("nat mode: want raw, post and fwd chains, got %v", chains)
	}
	raw := chains["raw-bridge"]
	if raw.Hook != nftables.ChainHookPrerouting || *raw.Priority != *nftables.ChainPriorityRaw || !reflect.DeepEqual(verdicts(raw), []string{"drop"}) {
		t.Fatalf("raw chain %+v", raw)
	}
	// ip daddr 172.17.0.0/16 iifname != "netshim0" counter drop
	r := raw.Rules[0]
	if p := r[0].(*expr.Payload); p.Offset != 16 || p.Len != 4 {
		t.Errorf("direct access rule does not look at the destination: %+v", p)
	}
	if bw := r[1].(*expr.Bitwise); !reflect.DeepEqual(bw.Mask, []byte{255, 255, 0, 0}) {
		t.Errorf("mask %v", bw.Mask)
	}
	if got := r[2].(*expr.Cmp).Data; !reflect.DeepEqual(got, []byte{172, 17, 0, 0}) {
		t.Errorf("subnet %v", got)
	}
	if iif := r[4].(*expr.Cmp); iif.Op != expr.CmpOpNeq || string(iif.Data[:8]) != "netshim0" || len(iif.Data) != 16 {
		t.Errorf("iifname %+v", iif)
	}
	if lo := r[6].(*expr.Cmp); lo.Op != expr.CmpOpNeq || strings.TrimRight(string(lo.Data), "\x00") != "lo" {
		t.Errorf("the host's own packets (iifname lo) are not let through: %+v", lo)
	}
	post := chains["post-bridge"]
	if post.Hook != nftables.ChainHookPostrouting || post.Type != nftables.ChainTypeNAT || !reflect.DeepEqual(verdicts(post), []string{"masq", "masq", "masq"}) {
		t.Fatalf("post chain %+v", post)
	}
	fwd := chains["fwd-bridge"]
	// isolation, established, dnat, published, unpublished drop
	if want := []string{"drop", "accept", "accept", "accept", "drop"}; !reflect.DeepEqual(verdicts(fwd), want) {
		t.Errorf("fwd verdicts %v, want %v", verdicts(fwd), want)
	}
	if l, ok := fwd.Rules[0][3].(*expr.Lookup); !ok || l.SetName != setBridges {
		t.Errorf("isolation looks up the bridge set: %T", fwd.Rules[0][3])
	}
	var fw Nftables
	if got := fw.NetworkObjects(n); !reflect.DeepEqual(got, []string{"ip/@bridges/netshim0", "ip/raw-bridge", "ip/post-bridge", "ip/fwd-bridge"}) {
		t.Errorf("objects %v", got)
	}

	// A trusted interface is let through before the drop.
	trusted := n
	trusted.Trusted = []string{"eth3"}
	if v := verdicts(chainsByName(networkChains(trusted))["raw-bridge"]); !reflect.DeepEqual(v, []string{"accept", "drop"}) {
		t.Errorf("trusted interface: %v", v)
	}

	unprot := n
	unprot.Mode = config.GatewayNATUnprotected
	uc := chainsByName(networkChains(unprot))
	if _, ok := uc["raw-bridge"]; ok {
		t.Error("nat-unprotected drops direct access")
	}
	if v := verdicts(uc["fwd-bridge"]); v[len(v)-1] != "accept" {
		t.Errorf("nat-unprotected does not accept direct access: %v", v)
	}

	routed := n
	routed.Mode, routed.Masquerade = config.GatewayRouted, false
	rc := chainsByName(networkChains(routed))
	if _, ok := rc["raw-bridge"]; ok {
		t.Error("routed drops direct access")
	}
	if _, ok := rc["post-bridge"]; ok {
		t.Error("routed masquerades")
	}
	// isolation, established, published, icmp, drop: no dnat in routed mode
	if v := verdicts(rc["fwd-bridge"]); !reflect.DeepEqual(v, []string{"drop", "accept", "accept", "accept", "drop"}) {
		t.Errorf("routed fwd %v", v)
	}

	internal := chainsByName(networkChains(NetRules{Name: "in", Bridge: "br-x", Subnet: netip.MustParsePrefix("192.0.2.0/24"),
		Mode: config.GatewayNAT, Internal: true}))
	if len(internal) != 2 || !reflect.DeepEqual(verdicts(internal["fwd-in"]), []string{"drop", "drop", "drop"}) {
		t.Fatalf("internal: %+v", internal)
	}

	isolated := chainsByName(networkChains(NetRules{Name: "iso", Bridge: "br-i", Subnet: netip.MustParsePrefix("192.0.2.0/24"),
		Gateway: netip.MustParseAddr("192.0.2.1"), Mode: config.GatewayIsolated, Internal: true, DNS: true}))
	for _, name := range []string{"raw-iso", "fwd-iso", "in-iso", "out-iso"} {
		if _, ok := isolated[name]; !ok {
			t.Errorf("isolated network lacks %s: %v", name, isolated)
		}
	}
	if v := verdicts(isolated["in-iso"]); !reflect.DeepEqual(v, []string{"accept", "accept", "drop"}) {
		t.Errorf("isolated input: DNS to the gateway, then nothing: %v", v)
	}
	if v := verdicts(isolated["out-iso"]); !reflect.DeepEqual(v, []string{"accept", "drop"}) {
		t.Errorf("isolated output: answers, then nothing: %v", v)
	}

	for _, bad := range []string{"post-bridge", "inet/x", "ip/"} {
		if _, _, err := parseObject(bad); err == nil {
			t.Errorf("parseObject(%q) accepted", bad)
		}
	}
}

func TestLoopbackChain(t *testing.T) {
	c := loopbackChain()
	if c.Hook != nftables.ChainHookPrerouting || *c.Priority != *nftables.ChainPriorityRaw || len(c.Rules) != 1 {
		t.Fatalf("loopback chain %+v", c)
	}
	r := c.Rules[0]
	if iif := r[1].(*expr.Cmp); iif.Op != expr.CmpOpNeq || strings.TrimRight(string(iif.Data), "\x00") != "lo" {
		t.Errorf("not iifname != lo: %+v", iif)
	}
	if got := r[4].(*expr.Cmp).Data; !reflect.DeepEqual(got, []byte{127, 0, 0, 0}) || !reflect.DeepEqual(r[3].(*expr.Bitwise).Mask, []byte{255, 0, 0, 0}) {
		t.Errorf("not ip daddr 127.0.0.0/8: %v", r)
	}
	if v := verdicts(c); !reflect.DeepEqual(v, []string{"drop"}) {
		t.Errorf("verdict %v", v)
	}
}

func TestPortElements(t *testing.T) {
	ip := netip.MustParseAddr("172.17.0.2")
	m, e := portElement(ip, state.Port{Proto: "tcp", HostPort: 8080, ContainerPort: 80})
	// As nft --debug=netlink shows `tcp . 8080 : 172.17.0.2 . 80`.
	if m != mapAny || !reflect.DeepEqual(e.Key, []byte{6, 0, 0, 0, 0x1f, 0x90, 0, 0}) || !reflect.DeepEqual(e.Val, []byte{172, 17, 0, 2, 0, 80, 0, 0}) {
		t.Errorf("any: %s %v %v", m, e.Key, e.Val)
	}
	m, e = portElement(ip, state.Port{Proto: "udp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 9090, ContainerPort: 53})
	if m != mapByIP || !reflect.DeepEqual(e.Key, []byte{17, 0, 0, 0, 127, 0, 0, 1, 0x23, 0x82, 0, 0}) || !reflect.DeepEqual(e.Val, []byte{172, 17, 0, 2, 0, 53, 0, 0}) {
		t.Errorf("by ip: %s %v %v", m, e.Key, e.Val)
	}
	if keyAny.Bytes != 8 || keyByIP.Bytes != 12 || dataTo.Bytes != 8 || keyPublished.Bytes != 12 {
		t.Errorf("key sizes %d %d %d %d", keyAny.Bytes, keyByIP.Bytes, dataTo.Bytes, keyPublished.Bytes)
	}
	// Two host ports of one container port are one published element; a
	// routed port (no host port) has no map element.
	elems := portElements([]PortRules{{IP: ip, Ports: []state.Port{
		{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
		{Proto: "tcp", HostPort: 8081, ContainerPort: 80},
		{Proto: "udp", ContainerPort: 53},
	}}})
	v4 := elems[nftables.TableFamilyIPv4]
	if len(v4[mapAny]) != 2 || len(v4[setPublished]) != 2 || len(elems) != 1 {
		t.Errorf("elements %v", elems)
	}
	if got := v4[setPublished][1].Key; !reflect.DeepEqual(got, []byte{172, 17, 0, 2, 17, 0, 0, 0, 0, 53, 0, 0}) {
		t.Errorf("published element %v", got)
	}
	chains := publishChains(nftables.TableFamilyIPv4)
	if len(chains) != 3 || len(chains[0].Rules) != 2 || chains[1].Hook != nftables.ChainHookPrerouting || chains[2].Hook != nftables.ChainHookOutput {
		t.Errorf("publish chains %+v", chains)
	}
}

// A dual-stack network has the same chains again in the ip6 table, made of
// IPv6 addresses: 16-byte payloads at IPv6's offsets, ICMPv6, and the
// published set keyed by IPv6 addresses; and, in any gateway mode, a raw
// chain that drops the multicast listener reports coming in on its bridge.
func TestNetworkChains6(t *testing.T) {
	n := NetRules{Name: "d", Bridge: "br-d", Subnet: netip.MustParsePrefix("10.60.0.0/24"), Gateway: netip.MustParseAddr("10.60.0.1"),
		Subnet6: netip.MustParsePrefix("fd00:60::/64"), Gateway6: netip.MustParseAddr("fd00:60::1"), Mode: config.GatewayRouted}
	var v4, v6 []nftChain
	for _, c := range networkChains(n) {
		if c.Family == nftables.TableFamilyIPv6 {
			v6 = append(v6, c)
		} else {
			v4 = append(v4, c)
		}
	}
	names := func(cs []nftChain) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return out
	}
	if want := append(names(v4), "raw-d"); !slices.Equal(slices.Sorted(slices.Values(names(v6))), slices.Sorted(slices.Values(want))) {
		t.Fatalf("chains: IPv4 %v, IPv6 %v", names(v4), names(v6))
	}
	raw := chainsByName(v6)["raw-d"]
	if raw.Hook != nftables.ChainHookPrerouting || raw.Priority != nftables.ChainPriorityRaw || len(raw.Rules) != len(mldTypes) {
		t.Fatalf("raw chain %+v", raw)
	}
	for i, r := range raw.Rules {
		if want := rule(iif("br-d"), icmp6Type(mldTypes[i]), drop()); !reflect.DeepEqual(r, want) {
			t.Errorf("raw rule %d: %v, want iifname br-d icmpv6 type %d drop", i, r, mldTypes[i])
		}
	}
	objs := (&Nftables{}).NetworkObjects(n)
	if objs[0] != "ip/@bridges/br-d" || objs[1] != "ip6/@bridges/br-d" || !strings.HasPrefix(objs[len(objs)-1], "ip6/") {
		t.Errorf("objects %v", objs)
	}
	if f, b, ok := parseBridgeElem(objs[1]); !ok || f != nftables.TableFamilyIPv6 || b != "br-d" {
		t.Errorf("parse %s: %v %v %v", objs[1], f, b, ok)
	}
	fwd := chainsByName(v6)["fwd-d"]
	var sawPublished, sawICMP6 bool
	for _, r := range fwd.Rules {
		for i, e := range r {
			if l, ok := e.(*expr.Lookup); ok && l.SetName == setPublished {
				p := r[i-3].(*expr.Payload)
				m := r[i-2].(*expr.Meta)
				sawPublished = p.Offset == 24 && p.Len == 16 && m.Register == 12
			}
			if c, ok := e.(*expr.Cmp); ok && reflect.DeepEqual(c.Data, []byte{58}) {
				sawICMP6 = true
			}
		}
	}
	if !sawPublished || !sawICMP6 {
		t.Errorf("IPv6 forward chain: published lookup on the IPv6 destination %v, ICMPv6 %v", sawPublished, sawICMP6)
	}
	d := daddrIn(n.Subnet6)
	if p := d[0].(*expr.Payload); p.Offset != 24 || p.Len != 16 || len(d[1].(*expr.Bitwise).Mask) != 16 {
		t.Errorf("ip6 daddr: %+v", d)
	}
	if s := publishedSet(table(nftables.TableFamilyIPv6)); s.KeyType.Bytes != 24 {
		t.Errorf("ip6 published set key: %+v", s.KeyType)
	}
}

// A dual-stack container's port published on no address in particular
// goes in both families' maps; one on an address of one family, in that
// family's only; the IPv6 elements carry 16-byte addresses.
func TestPortElements6(t *testing.T) {
	ip6 := netip.MustParseAddr("fd00:60::2")
	elems := portElements([]PortRules{{IP: netip.MustParseAddr("10.60.0.2"), IP6: ip6, Ports: []state.Port{
		{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
		{Proto: "tcp", HostIP: netip.MustParseAddr("0.0.0.0"), HostPort: 8081, ContainerPort: 81},
		{Proto: "tcp", HostIP: netip.MustParseAddr("2001:db8::2"), HostPort: 8082, ContainerPort: 82},
		{Proto: "tcp", HostIP: netip.MustParseAddr("::"), HostPort: 8083, ContainerPort: 83},
	}}})
	v4, v6 := elems[nftables.TableFamilyIPv4], elems[nftables.TableFamilyIPv6]
	if len(v4[mapAny]) != 2 || len(v4[mapByIP]) != 0 || len(v6[mapAny]) != 2 || len(v6[mapByIP]) != 1 || len(v6[setPublished]) != 3 {
		t.Fatalf("IPv4 %v\nIPv6 %v", v4, v6)
	}
	want := append(append([]byte{6, 0, 0, 0}, netip.MustParseAddr("2001:db8::2").AsSlice()...), 0x1f, 0x92, 0, 0)
	if e := v6[mapByIP][0]; !reflect.DeepEqual(e.Key, want) || !reflect.DeepEqual(e.Val, append(ip6.AsSlice(), 0, 82, 0, 0)) {
		t.Errorf("by IPv6 address: %v %v", e.Key, e.Val)
	}
	if keyByIP6.Bytes != 24 || dataTo6.Bytes != 20 {
		t.Errorf("key sizes %d %d", keyByIP6.Bytes, dataTo6.Bytes)
	}
	dnat := publishChains(nftables.TableFamilyIPv6)[0].Rules[0]
	if n := dnat[len(dnat)-1].(*expr.NAT); n.Family != unix.NFPROTO_IPV6 || n.RegProtoMin != 12 {
		t.Errorf("IPv6 dnat %+v", n)
	}
	rules := iptPortRules(PortRules{Bridge: "br-d", IP: netip.MustParseAddr("10.60.0.2"), IP6: ip6, Ports: []state.Port{
		{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
		{Proto: "tcp", HostIP: netip.MustParseAddr("2001:db8::2"), HostPort: 8082, ContainerPort: 82},
	}}, true)
	var got []string
	for _, r := range rules {
		got = append(got, r.object())
	}
	if !reflect.DeepEqual(got, []string{
		"nat NETSHIM -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:60::2]:80",
		"filter NETSHIM-PORTS -d fd00:60::2/128 -o br-d -p tcp -m tcp --dport 80 -j ACCEPT",
		"nat NETSHIM -d 2001:db8::2/128 -p tcp -m tcp --dport 8082 -j DNAT --to-destination [fd00:60::2]:82",
		"filter NETSHIM-PORTS -d fd00:60::2/128 -o br-d -p tcp -m tcp --dport 82 -j ACCEPT",
	}) {
		t.Errorf("ip6tables port rules:\n%s", strings.Join(got, "\n"))
	}
}
