package firewall

import (
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/state"
)

// Expressions that rules are made of, each named after the nft syntax it
// stands for, so a rule below reads like its `nft list` line.

// ifname is an interface name as nftables compares it: NUL-padded to 16.
func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

func ifnameCmp(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
	}
}

// iifname NAME
func iif(name string) []expr.Any { return ifnameCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, name) }

// iifname != NAME
func iifNot(name string) []expr.Any { return ifnameCmp(expr.MetaKeyIIFNAME, expr.CmpOpNeq, name) }

// oifname NAME
func oif(name string) []expr.Any { return ifnameCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, name) }

// oifname != NAME
func oifNot(name string) []expr.Any { return ifnameCmp(expr.MetaKeyOIFNAME, expr.CmpOpNeq, name) }

// addrOffset is where the source or destination address is in the network
// header of p's family.
func addrOffset(p netip.Prefix, dst bool) uint32 {
	switch {
	case p.Addr().Is4() && dst:
		return 16
	case p.Addr().Is4():
		return 12
	case dst:
		return 24
	}
	return 8
}

// addrIn matches the source or destination address against prefix p, of
// either family.
func addrIn(dst bool, p netip.Prefix) []expr.Any {
	n := uint32(p.Addr().BitLen() / 8)
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addrOffset(p, dst), Len: n}}
	if p.Bits() < p.Addr().BitLen() {
		mask := make([]byte, n)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()})
}

// ip saddr PREFIX (ip6 saddr)
func saddrIn(p netip.Prefix) []expr.Any { return addrIn(false, p) }

// ip daddr PREFIX (ip6 daddr)
func daddrIn(p netip.Prefix) []expr.Any { return addrIn(true, p) }

// ip daddr ADDR (ip6 daddr)
func daddrIs(a netip.Addr) []expr.Any { return daddrIn(netip.PrefixFrom(a, a.BitLen())) }

// meta l4proto PROTO
func l4proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// th dport PORT
func dport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// ndTypes are ICMPv6's neighbour solicitation and advertisement.
var ndTypes = []byte{135, 136}

// mldTypes are what a host sends as a multicast listener: MLDv1's report
// and done, MLDv2's report.
var mldTypes = []byte{131, 132, 143}

// icmpv6 type TYPE
func icmp6Type(t byte) []expr.Any {
	return rule(l4proto(unix.IPPROTO_ICMPV6), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{t}},
	})
}

// ct state established,related
func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ct status dnat
func ctStatusDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ct status & dnat == 0
func ctStatusNotDNAT() []expr.Any {
	e := ctStatusDNAT()
	e[2].(*expr.Cmp).Op = expr.CmpOpEq
	return e
}

// ipsDstNAT is IPS_DST_NAT of the conntrack status bits.
const ipsDstNAT = 1 << 5

// fib saddr|daddr type local
func fibLocal(saddr bool) []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: !saddr, FlagSADDR: saddr, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// ip daddr . meta l4proto . th dport @published: a connection to a
// published port on a container's own address (ip6 daddr in the ip6
// table). The address fills reg32 8 (IPv4) or 8-11 (IPv6), the protocol
// and port the next two.
func toPublished(f family) []expr.Any {
	n := uint32(f.subnet.Addr().BitLen() / 8)
	next := 8 + n/4
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addrOffset(f.subnet, true), Len: n},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: next},
		&expr.Payload{DestRegister: next + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: setPublished},
	}
}

// oifname @bridges: another bridge of ours.
func oifOurBridge() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: setBridges},
	}
}

func counterThen(kind expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: kind}}
}

// counter drop
func drop() []expr.Any { return counterThen(expr.VerdictDrop) }

// counter accept
func accept() []expr.Any { return counterThen(expr.VerdictAccept) }

// counter masquerade
func masquerade() []expr.Any { return []expr.Any{&expr.Counter{}, &expr.Masq{}} }

func rule(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// loopback is 127.0.0.0/8.
var loopback = netip.MustParsePrefix("127.0.0.0/8")

// loopbackChain drops, before NAT, packets for 127.0.0.0/8 that did not
// come in on lo. Such packets are martians the kernel itself drops, unless
// route_localnet is on for the interface they came in on, which is the case
// on a bridge where a port is published on a loopback address: without this
// rule a container with CAP_NET_RAW would reach the host's loopback services
// through its bridge, and a LAN neighbour a port published on 127.0.0.1
// (PREROUTING's DNAT comes before the martian check). One rule covers every
// port and interface; Docker has one per port published on loopback.
//
//	iifname != "lo" ip daddr 127.0.0.0/8 counter drop
func loopbackChain() nftChain {
	return nftChain{
		Family: nftables.TableFamilyIPv4, Name: chainLoopback,
		Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw,
		Rules: [][]expr.Any{rule(iifNot("lo"), daddrIn(loopback), drop())},
	}
}

// chainLoopback is the shared chain of loopbackChain.
const chainLoopback = "loopback"

// dnatMode reports whether the network's published ports are host ports
// mapped to the containers (not in routed mode, where they are the
// containers' own).
func dnatMode(n NetRules) bool { return !n.Internal && n.Mode != config.GatewayRouted }

// family is one address family of a network, as its rules see it: the
// table it goes in, its subnet and gateway, and its ICMP.
type family struct {
	table   nftables.TableFamily
	subnet  netip.Prefix
	gateway netip.Addr
	icmp    byte
}

// families are the address families of network n: IPv4, and IPv6 on a
// dual-stack network.
func families(n NetRules) []family {
	out := []family{{nftables.TableFamilyIPv4, n.Subnet, n.Gateway, unix.IPPROTO_ICMP}}
	if n.Subnet6.IsValid() {
		out = append(out, family{nftables.TableFamilyIPv6, n.Subnet6, n.Gateway6, unix.IPPROTO_ICMPV6})
	}
	return out
}

// networkChains is the data of a network's rules: one base chain per hook
// and family, each named after the network, so a network's rules are
// removed by name. The rules are the same in both families but for the
// addresses.
func networkChains(n NetRules) []nftChain {
	var chains []nftChain
	for _, f := range families(n) {
		chains = append(chains, familyChains(n, f)...)
	}
	return chains
}

// familyChains are network n's chains in the table of family f.
func familyChains(n NetRules, f family) []nftChain {
	var chains []nftChain
	br := n.Bridge
	// Direct access: a packet for an address of the network that did not
	// come in on its bridge is dropped before NAT (at that point a
	// published port's destination is still the host's address, so
	// published ports are not affected). One rule for the whole subnet,
	// so a container's setup adds no rule (Docker 28 adds one per
	// container); the gateway's address is covered too: the network's
	// DNS responder and host services are not reached through it from
	// outside (the host's own packets to it come in on lo).
	//	iifname TRUSTED accept
	//	ip daddr SUBNET iifname != BRIDGE iifname != "lo" counter drop
	var raw [][]expr.Any
	if f.table == nftables.TableFamilyIPv6 {
		// The containers' multicast listener reports go no further than
		// the host. The bridge does no multicast snooping (it floods all
		// multicast), so nothing on it uses them, and flooded they cost
		// each container's setup a copy per container of the network
		// (bench/HISTORY.md). The bridge takes them in through bridge
		// netfilter's prerouting, before it floods them.
		//	iifname BRIDGE icmpv6 type mld-listener-report|mld-listener-done|mld2-listener-report counter drop
		for _, t := range mldTypes {
			raw = append(raw, rule(iif(br), icmp6Type(t), drop()))
		}
	}
	if n.Mode == config.GatewayNAT || n.Mode == config.GatewayIsolated {
		if n.Mode == config.GatewayNAT {
			for _, t := range n.Trusted {
				raw = append(raw, rule(iif(t), daddrIn(f.subnet), accept()))
			}
		}
		if o := n.Overlay; o != nil && f.table == nftables.TableFamilyIPv4 {
			// The network's containers on other hosts, through its VXLAN
			// device.
			//	iifname VXLAN ip saddr OVERLAY ip daddr SUBNET counter accept
			raw = append(raw, rule(iif(o.VXLAN), saddrIn(o.Subnet), daddrIn(f.subnet), accept()))
		}
		raw = append(raw, rule(daddrIn(f.subnet), iifNot(br), iifNot("lo"), drop()))
	}
	if len(raw) > 0 {
		chains = append(chains, nftChain{
			Family: f.table, Name: "raw-" + n.Name,
			Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw,
			Rules: raw,
		})
	}
	var post [][]expr.Any
	if o := n.Overlay; o != nil && n.Masquerade && f.table == nftables.TableFamilyIPv4 {
		// Inside the overlay, containers see each other's addresses.
		//	ip saddr SUBNET ip daddr OVERLAY counter accept
		post = append(post, rule(saddrIn(f.subnet), daddrIn(o.Subnet), accept()))
	}
	if n.Masquerade {
		//	ip saddr SUBNET oifname != BRIDGE counter masquerade
		post = append(post, rule(saddrIn(f.subnet), oifNot(br), masquerade()))
	}
	if dnatMode(n) {
		// Published ports reached from the host itself (127.0.0.1 too,
		// with route_localnet) or from a container of this bridge through
		// a host address: the container must answer through the host.
		//	oifname BRIDGE ct status dnat fib saddr type local counter masquerade
		//	oifname BRIDGE ct status dnat ip saddr SUBNET counter masquerade
		post = append(post,
			rule(oif(br), ctStatusDNAT(), fibLocal(true), masquerade()),
			rule(oif(br), ctStatusDNAT(), saddrIn(f.subnet), masquerade()))
	}
	if len(post) > 0 {
		chains = append(chains, nftChain{
			Family: f.table, Name: "post-" + n.Name,
			Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
			Rules: post,
		})
	}
	// Networks cannot reach each other: traffic from this bridge to any
	// other bridge of ours is dropped, but for published ports reached
	// through a host address (destination-NATed).
	//	iifname BRIDGE oifname @bridges oifname != BRIDGE ct status & dnat == 0 counter drop
	fwd := [][]expr.Any{rule(iif(br), oifOurBridge(), oifNot(br), ctStatusNotDNAT(), drop())}
	// Into the bridge from anywhere else.
	in := func(parts ...[]expr.Any) []expr.Any {
		return rule(append([][]expr.Any{oif(br), iifNot(br)}, parts...)...)
	}
	if n.Internal {
		//	iifname BRIDGE oifname != BRIDGE counter drop
		//	oifname BRIDGE iifname != BRIDGE counter drop
		fwd = append(fwd, rule(iif(br), oifNot(br), drop()), in(drop()))
	} else {
		//	... ct state established,related counter accept
		fwd = append(fwd, in(ctEstablished(), accept()))
		if dnatMode(n) {
			//	... ct status dnat counter accept
			fwd = append(fwd, in(ctStatusDNAT(), accept()))
		}
		//	... ip daddr . meta l4proto . th dport @published counter accept
		fwd = append(fwd, in(toPublished(f), accept()))
		if o := n.Overlay; o != nil && f.table == nftables.TableFamilyIPv4 {
			//	... iifname VXLAN ip saddr OVERLAY counter accept
			fwd = append(fwd, in(iif(o.VXLAN), saddrIn(o.Subnet), accept()))
		}
		switch n.Mode {
		case config.GatewayRouted:
			//	... meta l4proto icmp (ipv6-icmp) counter accept, then drop
			fwd = append(fwd, in(l4proto(f.icmp), accept()), in(drop()))
		case config.GatewayNATUnprotected:
			fwd = append(fwd, in(accept()))
		default:
			fwd = append(fwd, in(drop()))
		}
	}
	chains = append(chains, nftChain{
		Family: f.table, Name: "fwd-" + n.Name,
		Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter,
		Rules: fwd,
	})
	if o := n.Overlay; o != nil && f.table == nftables.TableFamilyIPv4 {
		chains = append(chains, vxlanChain(n.Name, o))
	}
	if n.Mode == config.GatewayIsolated {
		// Nothing between the host and the network, but the containers'
		// queries to the network's DNS responder and its answers.
		var input [][]expr.Any
		if n.DNS {
			for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
				//	iifname BRIDGE ip daddr GATEWAY meta l4proto udp|tcp th dport 53 counter accept
				input = append(input, rule(iif(br), daddrIs(f.gateway), l4proto(proto), dport(53), accept()))
			}
		}
		if f.table == nftables.TableFamilyIPv6 {
			// Neighbour discovery, without which the containers do not
			// find the gateway, nor the gateway them.
			//	iifname BRIDGE icmpv6 type nd-neighbor-solicit|nd-neighbor-advert counter accept
			for _, t := range ndTypes {
				input = append(input, rule(iif(br), icmp6Type(t), accept()))
			}
		}
		//	iifname BRIDGE counter drop
		input = append(input, rule(iif(br), drop()))
		out := [][]expr.Any{
			//	oifname BRIDGE ct state established,related counter accept
			//	oifname BRIDGE counter drop
			rule(oif(br), ctEstablished(), accept()),
			rule(oif(br), drop()),
		}
		if f.table == nftables.TableFamilyIPv6 {
			//	oifname BRIDGE icmpv6 type nd-neighbor-solicit|nd-neighbor-advert counter accept
			var nd [][]expr.Any
			for _, t := range ndTypes {
				nd = append(nd, rule(oif(br), icmp6Type(t), accept()))
			}
			out = append(nd, out...)
		}
		chains = append(chains,
			nftChain{
				Family: f.table, Name: "in-" + n.Name,
				Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
				Rules: input,
			},
			nftChain{
				Family: f.table, Name: "out-" + n.Name,
				Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter,
				Rules: out,
			})
	}
	return chains
}

// vxlanChain lets VXLAN packets of an overlay network's VNI in from its
// peers' underlay addresses only: anyone else who can reach the host's
// VXLAN port could otherwise put frames on the network's bridge.
//
//	udp dport 4789 @th,96,24 VNI ip saddr PEER counter accept   (each peer)
//	udp dport 4789 @th,96,24 VNI counter drop
func vxlanChain(name string, o *state.OverlayRules) nftChain {
	vxlan := rule(l4proto(unix.IPPROTO_UDP), dport(VXLANPort), vni(o.VNI))
	var rules [][]expr.Any
	for _, p := range o.Peers {
		rules = append(rules, rule(vxlan, saddrIn(netip.PrefixFrom(p, 32)), accept()))
	}
	rules = append(rules, rule(vxlan, drop()))
	return nftChain{
		Family: nftables.TableFamilyIPv4, Name: "vx-" + name,
		Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
		Rules: rules,
	}
}

// VXLANPort is the UDP port of VXLAN (IANA's, as the kernel's devices use).
const VXLANPort = 4789

// @th,96,24 VNI: the VXLAN header follows the 8 bytes of UDP's; its VNI
// is that header's bytes 4-6.
func vni(v uint32) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 12, Len: 3},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(v >> 16), byte(v >> 8), byte(v)}},
	}
}
