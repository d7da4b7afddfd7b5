package firewall

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/state"
)

// Published ports in nftables are data, not rules: two maps from
// (protocol, [host address,] host port) to (container address, port),
// looked up by a constant set of rules. Publishing or withdrawing a
// container's ports adds or deletes map elements in one batch: the cost
// does not grow with the number of containers, and no rule handle has to
// be remembered.
const (
	mapAny       = "publish-any" // inet_proto . inet_service
	mapByIP      = "publish-ip"  // inet_proto . ipv4_addr . inet_service
	chainPublish = "publish"
	chainPre     = "prerouting"
	chainOut     = "output"
)

var (
	keyAny   = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	keyByIP  = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeIPAddr, nftables.TypeInetService)
	dataTo   = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	keyByIP6 = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeIP6Addr, nftables.TypeInetService)
	dataTo6  = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
)

func protoNum(proto string) byte {
	if proto == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// reg32 pads a concatenation component to its 4-byte register slot.
func reg32(b ...byte) []byte {
	out := make([]byte, 4)
	copy(out, b)
	return out
}

func port16(p int) []byte { return reg32(byte(p>>8), byte(p)) }

// portElement is the DNAT map element of one published host port to
// container address ip (of the host address's family, if it has one), and
// the map it goes in.
func portElement(ip netip.Addr, p state.Port) (string, nftables.SetElement) {
	val := concat2(ip.AsSlice(), port16(p.ContainerPort))
	if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
		return mapByIP, nftables.SetElement{Key: concat2(reg32(protoNum(p.Proto)), p.HostIP.AsSlice(), port16(p.HostPort)), Val: val}
	}
	return mapAny, nftables.SetElement{Key: concat2(reg32(protoNum(p.Proto)), port16(p.HostPort)), Val: val}
}

// publishedElement is the element of setPublished for a container port
// on address ip.
func publishedElement(ip netip.Addr, p state.Port) nftables.SetElement {
	return nftables.SetElement{Key: concat2(ip.AsSlice(), reg32(protoNum(p.Proto)), port16(p.ContainerPort))}
}

func concat2(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// publishInfra queues the maps and sets of published ports in the table of
// family f and, unless they exist (or with fresh, in a table new in this
// batch), the constant chains that look them up. Existing chains are left
// alone: flushing them would delete rules, and in nftables every deletion
// waits for an RCU grace period, which the per-container path must not
// pay.
func publishInfra(c *nftables.Conn, fresh bool, f nftables.TableFamily) map[string]*nftables.Set {
	t := c.AddTable(table(f))
	sets := publishSets(t)
	for _, name := range []string{mapByIP, mapAny, setPublished} {
		// A set whose properties are set here cannot be refused.
		c.AddSet(sets[name], nil)
	}
	// One get, whatever the number of containers. The output chain is made
	// last in the same batch, so if it exists the others do.
	if !fresh {
		if ch, err := c.ListChain(t, chainOut); err == nil && ch != nil {
			return sets
		}
	}
	for _, ch := range publishChains(f) {
		addChain(c, ch, familySets{f: sets}, !fresh)
	}
	return sets
}

// publishChains is the constant part of published ports in the table of
// family f, as data.
func publishChains(f nftables.TableFamily) []nftChain {
	// Registers: the key is built from reg 1 (128 bit) = reg32 8, 9, ...:
	// the protocol in 8, the address from 9 (one reg32 for IPv4, four for
	// IPv6), then the port; the looked-up address lands in reg 1 and the
	// port in the reg32 after it (9 for IPv4, 12 = reg 2 for IPv6).
	family, addrOff, addrLen, portReg, protoReg := uint32(unix.NFPROTO_IPV4), uint32(16), uint32(4), uint32(10), uint32(9)
	if f == nftables.TableFamilyIPv6 {
		family, addrOff, addrLen, portReg, protoReg = unix.NFPROTO_IPV6, 24, 16, 13, 12
	}
	dnat := []expr.Any{
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: protoReg, RegProtoMax: protoReg, Specified: true},
	}
	return []nftChain{
		{Family: f, Name: chainPublish, Rules: [][]expr.Any{
			// dnat ip to meta l4proto . ip daddr . th dport map @publish-ip
			rule([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseNetworkHeader, Offset: addrOff, Len: addrLen},
				&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: mapByIP},
			}, dnat),
			// dnat ip to meta l4proto . th dport map @publish-any
			rule([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: mapAny},
			}, dnat),
		}},
		// fib daddr type local jump publish: from outside and from other
		// containers (hairpin)...
		{Family: f, Name: chainPre, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
			Rules: [][]expr.Any{rule(fibLocal(false), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainPublish}})}},
		// ...and from the host itself, 127.0.0.1 included.
		{Family: f, Name: chainOut, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest,
			Rules: [][]expr.Any{rule(fibLocal(false), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainPublish}})}},
	}
}

// publishSets are the maps and set of published ports in table t.
func publishSets(t *nftables.Table) map[string]*nftables.Set {
	byIP, to := keyByIP, dataTo
	if t.Family == nftables.TableFamilyIPv6 {
		byIP, to = keyByIP6, dataTo6
	}
	return map[string]*nftables.Set{
		mapAny:       {Table: t, Name: mapAny, IsMap: true, KeyType: keyAny, DataType: to, Concatenation: true},
		mapByIP:      {Table: t, Name: mapByIP, IsMap: true, KeyType: byIP, DataType: to, Concatenation: true},
		setPublished: publishedSet(t),
	}
}

// PortRules is what a container's published ports need from the firewall.
// A port with a host port is mapped to the container (DNAT); one without
// (routed mode) is opened on the container's own address only. IP6 is the
// container's IPv6 address on a dual-stack network: a port published on
// no host address in particular reaches the container over both families.
type PortRules struct {
	Bridge string
	IP     netip.Addr
	IP6    netip.Addr
	Ports  []state.Port
}

// targets are the container addresses port reaches: those of the family of
// its host address, or of both without one.
func (p PortRules) targets(port state.Port) []netip.Addr {
	var out []netip.Addr
	for _, ip := range []netip.Addr{p.IP, p.IP6} {
		if ip.IsValid() && (!port.HostIP.IsValid() || port.HostIP.Is4() == ip.Is4()) {
			out = append(out, ip)
		}
	}
	return out
}

// tableOf is the nftables family of address a.
func tableOf(a netip.Addr) nftables.TableFamily {
	if a.Is4() {
		return nftables.TableFamilyIPv4
	}
	return nftables.TableFamilyIPv6
}

// portElements are the elements of ps's ports, by family and map or set.
func portElements(ps []PortRules) map[nftables.TableFamily]map[string][]nftables.SetElement {
	out := map[nftables.TableFamily]map[string][]nftables.SetElement{}
	for _, p := range ps {
		seen := map[string]bool{}
		for _, port := range p.Ports {
			for _, ip := range p.targets(port) {
				f := tableOf(ip)
				if out[f] == nil {
					out[f] = map[string][]nftables.SetElement{}
				}
				if port.HostPort > 0 {
					m, e := portElement(ip, port)
					out[f][m] = append(out[f][m], e)
				}
				// Two host ports for one container port are one element.
				if e := publishedElement(ip, port); !seen[string(e.Key)] {
					seen[string(e.Key)] = true
					out[f][setPublished] = append(out[f][setPublished], e)
				}
			}
		}
	}
	return out
}

// AddPorts implements Firewall: one batch adds the container's elements.
// The maps and chains almost always exist (the network's first container
// made them): the elements go first on their own, and only if the kernel
// has no such map is the whole infrastructure queued with them.
func (*Nftables) AddPorts(p PortRules) error {
	elems := portElements([]PortRules{p})
	if len(elems) == 0 {
		return nil
	}
	c, err := newNftConn()
	if err != nil {
		return err
	}
	publish := func(infra bool) error {
		for f, byName := range elems {
			sets := publishSets(table(f))
			if infra {
				sets = publishInfra(c, false, f)
			}
			for name, es := range byName {
				if err := c.SetAddElements(sets[name], es); err != nil {
					return fmt.Errorf("nftables: map %s: %w", name, err)
				}
			}
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: publish ports: %w", err)
		}
		return nil
	}
	err = publish(false)
	if !errors.Is(err, unix.ENOENT) {
		return err
	}
	return publish(true)
}

// RemovePorts implements Firewall: one batch deletes the container's
// elements. If an element is already gone the batch fails as a whole; then
// each is deleted on its own and absence is not an error.
func (*Nftables) RemovePorts(p PortRules) error {
	all := portElements([]PortRules{p})
	if len(all) == 0 {
		return nil
	}
	c, err := newNftConn()
	if err != nil {
		return err
	}
	del := func(f nftables.TableFamily, elems map[string][]nftables.SetElement) error {
		sets := publishSets(table(f))
		for name, es := range elems {
			if err := c.SetDeleteElements(sets[name], es); err != nil {
				return err
			}
		}
		return nil
	}
	for f, elems := range all {
		if err := del(f, elems); err != nil {
			return err
		}
	}
	if err := c.Flush(); err == nil {
		return nil
	}
	for f, elems := range all {
		for name, es := range elems {
			for _, e := range es {
				if err := del(f, map[string][]nftables.SetElement{name: {e}}); err != nil {
					return err
				}
				if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("nftables: withdraw published port from %s: %w", name, err)
				}
			}
		}
	}
	return nil
}
