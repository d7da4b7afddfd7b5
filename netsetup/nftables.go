package netsetup

import (
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is netshim's nftables table, in the ip and bridge families. We
// never touch tables that are not ours.
const TableName = "netshim"

// Nftables is the default backend: netshim's own tables, changed through
// netlink in one batch per operation, without exec and without dumping
// the ruleset.
type Nftables struct{}

// Name implements Firewall.
func (*Nftables) Name() string { return "nftables" }

// nftChain is a base chain of ours with its rules: the rules as data, so
// they can be checked without root.
type nftChain struct {
	Family   nftables.TableFamily
	Name     string
	Type     nftables.ChainType
	Hook     *nftables.ChainHook
	Priority *nftables.ChainPriority
	Rules    [][]expr.Any
}

// object is how a chain is named in the state: family/chain.
func (c *nftChain) object() string { return familyName(c.Family) + "/" + c.Name }

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyBridge {
		return "bridge"
	}
	return "ip"
}

func parseObject(obj string) (nftables.TableFamily, string, error) {
	fam, chain, ok := strings.Cut(obj, "/")
	if !ok || chain == "" {
		return 0, "", fmt.Errorf("nftables object %q in state: want family/chain", obj)
	}
	switch fam {
	case "ip":
		return nftables.TableFamilyIPv4, chain, nil
	case "bridge":
		return nftables.TableFamilyBridge, chain, nil
	}
	return 0, "", fmt.Errorf("nftables object %q in state: unknown family", obj)
}

// ifname is an interface name as nftables compares it: NUL-padded to 16.
func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

// networkChains is the data of a network's rules: one base chain per hook,
// each named after the network, so a network's rules are removed by name.
func networkChains(n NetRules) []nftChain {
	var chains []nftChain
	mask := net.CIDRMask(n.Subnet.Bits(), 32)
	saddrInSubnet := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: n.Subnet.Addr().AsSlice()},
	}
	oifIsBridge := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n.Bridge)},
	}
	var post [][]expr.Any
	if n.Masquerade {
		// ip saddr SUBNET oifname != BRIDGE counter masquerade
		post = append(post, concat(saddrInSubnet, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n.Bridge)},
			&expr.Counter{},
			&expr.Masq{},
		}))
	}
	if !n.Internal {
		// Published ports reached from the host itself (127.0.0.1 too,
		// with route_localnet) or from a container of this bridge through
		// a host address: the container must answer through the host.
		// oifname BRIDGE ct status dnat fib saddr type local masquerade
		post = append(post, concat(oifIsBridge, ctStatusDNAT(), []expr.Any{
			&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			&expr.Counter{},
			&expr.Masq{},
		}))
		// oifname BRIDGE ct status dnat ip saddr SUBNET masquerade
		post = append(post, concat(oifIsBridge, ctStatusDNAT(), saddrInSubnet, []expr.Any{&expr.Counter{}, &expr.Masq{}}))
	}
	if len(post) > 0 {
		chains = append(chains, nftChain{
			Family: nftables.TableFamilyIPv4, Name: "post-" + n.Name,
			Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
			Rules: post,
		})
	}
	// Networks cannot reach each other: traffic from this bridge to any
	// other bridge of ours is dropped (the set holds their names).
	// iifname BRIDGE oifname @bridges oifname != BRIDGE drop
	fwd := [][]expr.Any{{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n.Bridge)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: setBridges},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n.Bridge)},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}}
	if n.Internal {
		// One side is the bridge, the other is not: nothing in or out.
		crossing := func(this, other expr.MetaKey) []expr.Any {
			return []expr.Any{
				&expr.Meta{Key: this, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n.Bridge)},
				&expr.Meta{Key: other, Register: 1},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n.Bridge)},
				&expr.Counter{},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}
		}
		fwd = append(fwd,
			crossing(expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME), // iifname BRIDGE oifname != BRIDGE drop
			crossing(expr.MetaKeyOIFNAME, expr.MetaKeyIIFNAME)) // oifname BRIDGE iifname != BRIDGE drop
	}
	chains = append(chains, nftChain{
		Family: nftables.TableFamilyIPv4, Name: "fwd-" + n.Name,
		Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter,
		Rules: fwd,
	})
	return chains
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ctStatusDNAT matches connections that were destination-NATed.
func ctStatusDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ipsDstNAT is IPS_DST_NAT of the conntrack status bits.
const ipsDstNAT = 1 << 5

func table(f nftables.TableFamily) *nftables.Table {
	return &nftables.Table{Family: f, Name: TableName}
}

// delChain queues the removal of a chain that may or may not exist: adding
// it first makes the delete succeed either way, in the same transaction.
func delChain(c *nftables.Conn, f nftables.TableFamily, name string) {
	t := c.AddTable(table(f))
	ch := c.AddChain(&nftables.Chain{Table: t, Name: name})
	c.FlushChain(ch)
	c.DelChain(ch)
}

// NetworkObjects implements Firewall.
func (*Nftables) NetworkObjects(n NetRules) []string {
	out := []string{bridgeElemPrefix + n.Bridge}
	for _, ch := range networkChains(n) {
		out = append(out, ch.object())
	}
	return out
}

// setBridges is the set of our bridge names, for isolation between
// networks. A network's element is named "ip/@bridges/NAME" in the state.
const setBridges = "bridges"

const bridgeElemPrefix = "ip/@" + setBridges + "/"

func bridgesSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setBridges, KeyType: nftables.TypeIFName}
}

// xtPrefix marks, among the nftables backend's objects, the iptables rules
// it had to add for coexistence (see forwardDrops).
const xtPrefix = "xt:"

// forwardDrops reports whether iptables' filter FORWARD chain (Docker's,
// firewalld's...) drops by policy. An accept in our own table cannot
// override a drop in another base chain, so then forwarding for our
// bridges must be accepted there too.
func forwardDrops(c *nftables.Conn) bool {
	ch, err := c.ListChain(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "filter"}, "FORWARD")
	return err == nil && ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop
}

// coexistRules are the iptables rules a network needs when FORWARD drops:
// the iptables backend's forwarding rules, and (instead of its per-port
// accepts, which would put iptables on the per-container path) one accept
// for every destination-NATed connection into the bridge.
func coexistRules(n NetRules) []iptRule {
	var out []iptRule
	for _, r := range iptNetworkRules(n) {
		if r.Table == "filter" {
			out = append(out, r)
		}
	}
	if !n.Internal {
		out = append(out, iptRule{"filter", iptChainForward, []string{"-o", n.Bridge, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"}})
	}
	return out
}

// EnsureNetwork implements Firewall. Chains are created, flushed and filled
// in one transaction, so repeating it never duplicates a rule.
func (*Nftables) EnsureNetwork(n NetRules, prev []string) ([]string, error) {
	c, err := newNftConn()
	if err != nil {
		return nil, err
	}
	var xt, xtPrev []string
	var own []string
	for _, obj := range prev {
		switch {
		case strings.HasPrefix(obj, xtPrefix):
			xtPrev = append(xtPrev, strings.TrimPrefix(obj, xtPrefix))
		case strings.HasPrefix(obj, bridgeElemPrefix):
			// the bridge's element is re-added below
		default:
			own = append(own, obj)
		}
	}
	prev = own
	if forwardDrops(c) || len(xtPrev) > 0 {
		ipt, err := newIptables()
		if err != nil {
			return nil, fmt.Errorf("FORWARD policy is DROP and %w", err)
		}
		if forwardDrops(c) {
			if err := ipt.ensureShared(true); err != nil {
				return nil, err
			}
			for _, r := range coexistRules(n) {
				if err := ipt.ipt.AppendUnique(r.Table, r.Chain, r.Args...); err != nil {
					return nil, fmt.Errorf("iptables: add %s: %w", r.object(), err)
				}
				xt = append(xt, xtPrefix+r.object())
			}
		}
		keep := map[string]bool{}
		for _, o := range xt {
			keep[strings.TrimPrefix(o, xtPrefix)] = true
		}
		if err := ipt.deleteObjects(xtPrev, keep); err != nil {
			return nil, err
		}
	}
	set := bridgesSet(c.AddTable(table(nftables.TableFamilyIPv4)))
	if err := c.AddSet(set, nil); err != nil {
		return nil, fmt.Errorf("nftables: set %s: %w", setBridges, err)
	}
	if err := c.SetAddElements(set, []nftables.SetElement{{Key: ifname(n.Bridge)}}); err != nil {
		return nil, fmt.Errorf("nftables: set %s: %w", setBridges, err)
	}
	chains := networkChains(n)
	installed := []string{bridgeElemPrefix + n.Bridge}
	keep := map[string]bool{}
	for i := range chains {
		keep[chains[i].object()] = true
		installed = append(installed, chains[i].object())
	}
	for _, obj := range prev {
		if keep[obj] {
			continue
		}
		f, name, err := parseObject(obj)
		if err != nil {
			return nil, err
		}
		delChain(c, f, name)
	}
	for i := range chains {
		ch := &chains[i]
		t := c.AddTable(table(ch.Family))
		nc := c.AddChain(&nftables.Chain{Table: t, Name: ch.Name, Type: ch.Type, Hooknum: ch.Hook, Priority: ch.Priority, Policy: policyAccept()})
		c.FlushChain(nc)
		for _, r := range ch.Rules {
			for _, e := range r {
				if l, ok := e.(*expr.Lookup); ok && l.SetName == setBridges {
					l.SetID = set.ID
				}
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: nc, Exprs: r})
		}
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: install rules of network %s: %w", n.Name, err)
	}
	return append(installed, xt...), nil
}

// RemoveNetwork implements Firewall.
func (*Nftables) RemoveNetwork(installed []string, last bool) error {
	c, err := newNftConn()
	if err != nil {
		return err
	}
	var own, xt []string
	for _, obj := range installed {
		switch {
		case strings.HasPrefix(obj, xtPrefix):
			xt = append(xt, strings.TrimPrefix(obj, xtPrefix))
		case strings.HasPrefix(obj, bridgeElemPrefix):
			// Add, then delete: the delete cannot fail for an element
			// already gone, and the batch stays one transaction.
			set := bridgesSet(c.AddTable(table(nftables.TableFamilyIPv4)))
			if err := c.AddSet(set, nil); err != nil {
				return fmt.Errorf("nftables: set %s: %w", setBridges, err)
			}
			el := []nftables.SetElement{{Key: ifname(strings.TrimPrefix(obj, bridgeElemPrefix))}}
			if err := c.SetAddElements(set, el); err != nil {
				return err
			}
			if err := c.SetDeleteElements(set, el); err != nil {
				return err
			}
		default:
			own = append(own, obj)
		}
	}
	if len(xt) > 0 || (last && forwardDrops(c)) {
		ipt, err := newIptables()
		if err != nil {
			return err
		}
		if err := ipt.deleteObjects(xt, nil); err != nil {
			return err
		}
		// Our iptables chain goes when no network of ours needs it; the
		// caller's last says exactly that.
		if last {
			if err := ipt.removeShared(true); err != nil {
				return err
			}
		}
	}
	installed = own
	families := map[nftables.TableFamily]bool{nftables.TableFamilyIPv4: true}
	for _, obj := range installed {
		f, name, err := parseObject(obj)
		if err != nil {
			return err
		}
		families[f] = true
		delChain(c, f, name)
	}
	if last {
		// Delete only the tables this network used; the other family's
		// table, if any, went with the network that used it.
		for f := range families {
			c.DelTable(c.AddTable(table(f)))
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: remove rules %s: %w", strings.Join(installed, ", "), err)
	}
	return nil
}

func policyAccept() *nftables.ChainPolicy {
	p := nftables.ChainPolicyAccept
	return &p
}
