package firewall

import (
	"errors"
	"fmt"

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
	keyAny  = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	keyByIP = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeIPAddr, nftables.TypeInetService)
	dataTo  = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
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

// portElement is the DNAT map element of one published host port, and
// the map it goes in.
func portElement(ip [4]byte, p state.Port) (string, nftables.SetElement) {
	val := concat2(ip[:], port16(p.ContainerPort))
	if p.HostIP.IsValid() {
		h := p.HostIP.As4()
		return mapByIP, nftables.SetElement{Key: concat2(reg32(protoNum(p.Proto)), h[:], port16(p.HostPort)), Val: val}
	}
	return mapAny, nftables.SetElement{Key: concat2(reg32(protoNum(p.Proto)), port16(p.HostPort)), Val: val}
}

// publishedElement is the element of setPublished for a container port.
func publishedElement(ip [4]byte, p state.Port) nftables.SetElement {
	return nftables.SetElement{Key: concat2(ip[:], reg32(protoNum(p.Proto)), port16(p.ContainerPort))}
}

func concat2(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// publishInfra queues the maps and sets of published ports and, unless
// they exist (or with fresh, in a table new in this batch), the constant
// chains that look them up. Existing chains are left alone: flushing them
// would delete rules, and in nftables every deletion waits for an RCU grace
// period, which the per-container path must not pay.
func publishInfra(c *nftables.Conn, fresh bool) map[string]*nftables.Set {
	t := c.AddTable(table(nftables.TableFamilyIPv4))
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
	for _, ch := range publishChains() {
		addChain(c, ch, familySets{nftables.TableFamilyIPv4: sets}, !fresh)
	}
	return sets
}

// publishChains is the constant part of published ports, as data.
func publishChains() []nftChain {
	dnat := []expr.Any{
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 9, RegProtoMax: 9, Specified: true},
	}
	// Registers: the key is built from reg 1 (128 bit) = reg32 8, 9, 10; the
	// looked-up address lands in reg32 8 and the port in reg32 9.
	return []nftChain{
		{Family: nftables.TableFamilyIPv4, Name: chainPublish, Rules: [][]expr.Any{
			// dnat ip to meta l4proto . ip daddr . th dport map @publish-ip
			rule([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
				&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
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
		{Family: nftables.TableFamilyIPv4, Name: chainPre, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
			Rules: [][]expr.Any{rule(fibLocal(false), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainPublish}})}},
		// ...and from the host itself, 127.0.0.1 included.
		{Family: nftables.TableFamilyIPv4, Name: chainOut, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest,
			Rules: [][]expr.Any{rule(fibLocal(false), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainPublish}})}},
	}
}

// publishSets are the maps and set of published ports.
func publishSets(t *nftables.Table) map[string]*nftables.Set {
	return map[string]*nftables.Set{
		mapAny:       {Table: t, Name: mapAny, IsMap: true, KeyType: keyAny, DataType: dataTo, Concatenation: true},
		mapByIP:      {Table: t, Name: mapByIP, IsMap: true, KeyType: keyByIP, DataType: dataTo, Concatenation: true},
		setPublished: publishedSet(t),
	}
}

// PortRules is what a container's published ports need from the firewall.
// A port with a host port is mapped to the container (DNAT); one without
// (routed mode) is opened on the container's own address only.
type PortRules struct {
	Bridge string
	IP     [4]byte
	Ports  []state.Port
}

// portElements are the elements of ps's ports, by map or set.
func portElements(ps []PortRules) map[string][]nftables.SetElement {
	out := map[string][]nftables.SetElement{}
	for _, p := range ps {
		seen := map[string]bool{}
		for _, port := range p.Ports {
			if port.HostPort > 0 {
				m, e := portElement(p.IP, port)
				out[m] = append(out[m], e)
			}
			// Two host ports for one container port are one element.
			if e := publishedElement(p.IP, port); !seen[string(e.Key)] {
				seen[string(e.Key)] = true
				out[setPublished] = append(out[setPublished], e)
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
	if len(p.Ports) == 0 {
		return nil
	}
	c, err := newNftConn()
	if err != nil {
		return err
	}
	publish := func(sets map[string]*nftables.Set) error {
		for name, elems := range portElements([]PortRules{p}) {
			if err := c.SetAddElements(sets[name], elems); err != nil {
				return fmt.Errorf("nftables: map %s: %w", name, err)
			}
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: publish ports: %w", err)
		}
		return nil
	}
	err = publish(publishSets(table(nftables.TableFamilyIPv4)))
	if !errors.Is(err, unix.ENOENT) {
		return err
	}
	return publish(publishInfra(c, false))
}

// RemovePorts implements Firewall: one batch deletes the container's
// elements. If an element is already gone the batch fails as a whole; then
// each is deleted on its own and absence is not an error.
func (*Nftables) RemovePorts(p PortRules) error {
	if len(p.Ports) == 0 {
		return nil
	}
	c, err := newNftConn()
	if err != nil {
		return err
	}
	sets := publishSets(table(nftables.TableFamilyIPv4))
	del := func(elems map[string][]nftables.SetElement) error {
		for name, es := range elems {
			if err := c.SetDeleteElements(sets[name], es); err != nil {
				return err
			}
		}
		return c.Flush()
	}
	all := portElements([]PortRules{p})
	if err := del(all); err == nil {
		return nil
	}
	for name, es := range all {
		for _, e := range es {
			if err := del(map[string][]nftables.SetElement{name: {e}}); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("nftables: withdraw published port from %s: %w", name, err)
			}
		}
	}
	return nil
}
