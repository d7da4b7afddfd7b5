package netsetup

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
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

// portElement is the map element of one published port, and the map it
// goes in.
func portElement(ip [4]byte, p state.Port) (string, nftables.SetElement) {
	val := concat2(ip[:], port16(p.ContainerPort))
	if p.HostIP.IsValid() {
		h := p.HostIP.As4()
		return mapByIP, nftables.SetElement{Key: concat2(reg32(protoNum(p.Proto)), h[:], port16(p.HostPort)), Val: val}
	}
	return mapAny, nftables.SetElement{Key: concat2(reg32(protoNum(p.Proto)), port16(p.HostPort)), Val: val}
}

func concat2(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// publishInfra queues the maps and, unless they exist, the constant chains
// of published ports. Existing chains are left alone: flushing them would
// delete rules, and in nftables every deletion waits for an RCU grace
// period (10-20 ms here), which the per-container path must not pay.
func publishInfra(c *nftables.Conn) (map[string]*nftables.Set, error) {
	t := c.AddTable(table(nftables.TableFamilyIPv4))
	sets := map[string]*nftables.Set{
		mapAny:  {Table: t, Name: mapAny, IsMap: true, KeyType: keyAny, DataType: dataTo, Concatenation: true},
		mapByIP: {Table: t, Name: mapByIP, IsMap: true, KeyType: keyByIP, DataType: dataTo, Concatenation: true},
	}
	for _, name := range []string{mapByIP, mapAny} {
		if err := c.AddSet(sets[name], nil); err != nil {
			return nil, fmt.Errorf("nftables: map %s: %w", name, err)
		}
	}
	// One get, whatever the number of containers. The output chain is made
	// last in the same batch, so if it exists the others do.
	if ch, err := c.ListChain(t, chainOut); err == nil && ch != nil {
		return sets, nil
	}
	for _, ch := range publishChains() {
		nc := &nftables.Chain{Table: t, Name: ch.Name}
		if ch.Hook != nil {
			nc.Type, nc.Hooknum, nc.Priority, nc.Policy = ch.Type, ch.Hook, ch.Priority, policyAccept()
		}
		nc = c.AddChain(nc)
		c.FlushChain(nc)
		for _, r := range ch.Rules {
			// Resolve the lookups' set references for this batch.
			for _, e := range r {
				if l, ok := e.(*expr.Lookup); ok {
					l.SetID = sets[l.SetName].ID
				}
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: nc, Exprs: r})
		}
	}
	return sets, nil
}

// publishChains is the constant part of published ports, as data.
func publishChains() []nftChain {
	isLocal := func(saddr bool) []expr.Any {
		return []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: !saddr, FlagSADDR: saddr, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		}
	}
	dnat := []expr.Any{
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 9, RegProtoMax: 9, Specified: true},
	}
	// Registers: the key is built from reg 1 (128 bit) = reg32 8, 9, 10; the
	// looked-up address lands in reg32 8 and the port in reg32 9.
	return []nftChain{
		{Name: chainPublish, Rules: [][]expr.Any{
			// dnat ip to meta l4proto . ip daddr . th dport map @publish-ip
			concat([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
				&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: mapByIP},
			}, dnat),
			// dnat ip to meta l4proto . th dport map @publish-any
			concat([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: mapAny},
			}, dnat),
		}},
		// fib daddr type local jump publish: from outside and from other
		// containers (hairpin)...
		{Name: chainPre, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
			Rules: [][]expr.Any{concat(isLocal(false), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainPublish}})}},
		// ...and from the host itself, 127.0.0.1 included.
		{Name: chainOut, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest,
			Rules: [][]expr.Any{concat(isLocal(false), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainPublish}})}},
	}
}

// PortRules is what a container's published ports need from the firewall.
type PortRules struct {
	Bridge string
	IP     [4]byte
	Ports  []state.Port
}

func (p PortRules) elements() map[string][]nftables.SetElement {
	out := map[string][]nftables.SetElement{}
	for _, port := range p.Ports {
		m, e := portElement(p.IP, port)
		out[m] = append(out[m], e)
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
	t := table(nftables.TableFamilyIPv4)
	publish := func(set func(name string) *nftables.Set) error {
		for name, elems := range p.elements() {
			if err := c.SetAddElements(set(name), elems); err != nil {
				return fmt.Errorf("nftables: map %s: %w", name, err)
			}
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: publish ports: %w", err)
		}
		return nil
	}
	err = publish(func(name string) *nftables.Set { return mapRef(t, name) })
	if !errors.Is(err, unix.ENOENT) {
		return err
	}
	sets, err := publishInfra(c)
	if err != nil {
		return err
	}
	return publish(func(name string) *nftables.Set { return sets[name] })
}

// mapRef names an existing published-port map, for element operations.
func mapRef(t *nftables.Table, name string) *nftables.Set {
	s := &nftables.Set{Table: t, Name: name, IsMap: true, KeyType: keyAny, DataType: dataTo}
	if name == mapByIP {
		s.KeyType = keyByIP
	}
	return s
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
	t := table(nftables.TableFamilyIPv4)
	del := func(elems map[string][]nftables.SetElement) error {
		for name, es := range elems {
			if err := c.SetDeleteElements(mapRef(t, name), es); err != nil {
				return err
			}
		}
		return c.Flush()
	}
	all := p.elements()
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
