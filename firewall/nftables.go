package firewall

import (
	"fmt"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// TableName is netshim's nftables table, in the ip family, and in ip6 while
// a dual-stack network exists. We never touch tables that are not ours.
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
	switch f {
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyIPv6:
		return "ip6"
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
	case "ip6":
		return nftables.TableFamilyIPv6, chain, nil
	case "bridge":
		return nftables.TableFamilyBridge, chain, nil
	}
	return 0, "", fmt.Errorf("nftables object %q in state: unknown family", obj)
}

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
	var out []string
	for _, f := range families(n) {
		out = append(out, bridgeElem(f.table, n.Bridge))
	}
	for _, ch := range networkChains(n) {
		out = append(out, ch.object())
	}
	return out
}

// The sets every network's rules look up.
const (
	// setBridges holds our bridges' names, for isolation between networks.
	// A network's element is named "ip/@bridges/NAME" in the state.
	setBridges = "bridges"
	// setPublished holds container address . protocol . port of every
	// published port, reached directly in routed mode or from a trusted
	// interface.
	setPublished = "published"
)

// bridgeElem names a bridge's element of the bridges set of family f's
// table, as the state records it.
func bridgeElem(f nftables.TableFamily, bridge string) string {
	return familyName(f) + bridgeElemMark + bridge
}

const bridgeElemMark = "/@" + setBridges + "/"

// parseBridgeElem undoes bridgeElem.
func parseBridgeElem(obj string) (nftables.TableFamily, string, bool) {
	fam, bridge, ok := strings.Cut(obj, bridgeElemMark)
	if !ok {
		return 0, "", false
	}
	f, _, err := parseObject(fam + "/x")
	return f, bridge, err == nil
}

var (
	keyPublished  = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	keyPublished6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
)

// bridgesSet is the set of bridge names. Interface names are strings in
// host byte order: so marked, `nft list` prints them as names.
func bridgesSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setBridges, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
}

func publishedSet(t *nftables.Table) *nftables.Set {
	key := keyPublished
	if t.Family == nftables.TableFamilyIPv6 {
		key = keyPublished6
	}
	return &nftables.Set{Table: t, Name: setPublished, KeyType: key, Concatenation: true}
}

// familySets are the sets of each family's table, for the rules' lookups.
type familySets map[nftables.TableFamily]map[string]*nftables.Set

// sharedInfra queues what every network's rules use in the tables of
// fams: the sets, and in the ip table the loopback guard (see
// loopbackChain). With fresh, the table is new in this batch; otherwise
// the guard is only added if the kernel has none (adding it again would
// duplicate its rule, flushing it would wait for an RCU grace period). It
// returns the sets, for the rules' lookups.
func sharedInfra(c *nftables.Conn, fresh bool, fams ...nftables.TableFamily) (familySets, error) {
	out := familySets{}
	for _, f := range fams {
		t := c.AddTable(table(f))
		sets := map[string]*nftables.Set{setBridges: bridgesSet(t), setPublished: publishedSet(t)}
		for _, name := range []string{setBridges, setPublished} {
			if err := c.AddSet(sets[name], nil); err != nil {
				return nil, fmt.Errorf("nftables: set %s: %w", name, err)
			}
		}
		out[f] = sets
		if f != nftables.TableFamilyIPv4 {
			continue
		}
		if !fresh {
			if ch, err := c.ListChain(t, chainLoopback); err == nil && ch != nil {
				continue
			}
		}
		addChain(c, loopbackChain(), out, false)
	}
	return out, nil
}

// addChain queues chain ch with its rules (the chain flushed first unless
// fresh), resolving the rules' set lookups to sets of its table queued in
// this batch.
func addChain(c *nftables.Conn, ch nftChain, all familySets, flush bool) {
	sets := all[ch.Family]
	t := c.AddTable(table(ch.Family))
	nc := &nftables.Chain{Table: t, Name: ch.Name}
	if ch.Hook != nil {
		nc.Type, nc.Hooknum, nc.Priority, nc.Policy = ch.Type, ch.Hook, ch.Priority, policyAccept()
	}
	nc = c.AddChain(nc)
	if flush {
		c.FlushChain(nc)
	}
	for _, r := range ch.Rules {
		for _, e := range r {
			if l, ok := e.(*expr.Lookup); ok {
				if s := sets[l.SetName]; s != nil {
					l.SetID = s.ID
				}
			}
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: nc, Exprs: r})
	}
}

// xtPrefix marks, among the nftables backend's objects, the iptables and
// ip6tables rules it had to add for coexistence (see forwardDrops), named
// after it as the iptables backend names its own ("ip6 " and the rule for
// ip6tables).
const xtPrefix = "xt:"

// forwardDrops reports whether iptables' (ip6tables' with v6) filter
// FORWARD chain (Docker's, firewalld's...) drops by policy. An accept in
// our own table cannot override a drop in another base chain, so then
// forwarding for our bridges must be accepted there too.
func forwardDrops(c *nftables.Conn, v6 bool) bool {
	f := nftables.TableFamilyIPv4
	if v6 {
		f = nftables.TableFamilyIPv6
	}
	ch, err := c.ListChain(&nftables.Table{Family: f, Name: "filter"}, "FORWARD")
	return err == nil && ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop
}

// coexistRules are the iptables rules a network needs when FORWARD drops:
// whatever goes to or from its bridge is accepted there, and our own
// table's forward chain decides (a packet must pass every base chain, so
// its drops still hold).
func coexistRules(n NetRules) []iptRule {
	return []iptRule{
		{"filter", iptChainForward, []string{"-i", n.Bridge, "-j", "ACCEPT"}},
		{"filter", iptChainForward, []string{"-o", n.Bridge, "-j", "ACCEPT"}},
	}
}

// ensureCoexist makes iptables (and ip6tables, for a dual-stack network)
// accept n's forwarding when its FORWARD chain drops, and removes the
// coexistence rules of prev no longer wanted. It returns the objects to
// record.
func ensureCoexist(c *nftables.Conn, n NetRules, prev []string) ([]string, error) {
	prev4, prev6 := byFamily(coexistObjects(prev))
	prevOf := map[bool][]string{false: prev4, true: prev6}
	var out []string
	for _, v6 := range []bool{false, true} {
		xt, err := ensureCoexistFamily(c, n, prevOf[v6], v6)
		if err != nil {
			return nil, err
		}
		for _, o := range xt {
			out = append(out, xtPrefix+familyMark(v6)+o)
		}
	}
	return out, nil
}

// coexistObjects are the iptables objects among the nftables backend's.
func coexistObjects(objs []string) []string {
	var out []string
	for _, obj := range objs {
		if o, ok := strings.CutPrefix(obj, xtPrefix); ok {
			out = append(out, o)
		}
	}
	return out
}

// ensureCoexistFamily is ensureCoexist in one family, from and to
// iptables objects of that family.
func ensureCoexistFamily(c *nftables.Conn, n NetRules, xtPrev []string, v6 bool) ([]string, error) {
	var xt []string
	drops := (!v6 || n.Subnet6.IsValid()) && forwardDrops(c, v6)
	if !drops && len(xtPrev) == 0 {
		return nil, nil
	}
	ipt, err := newIptables(v6)
	if err != nil {
		return nil, fmt.Errorf("FORWARD policy is DROP and %w", err)
	}
	keep := map[string]bool{}
	if drops {
		if err := ipt.ensureCoexistShared(); err != nil {
			return nil, err
		}
		for _, r := range coexistRules(n) {
			if err := ipt.ipt.AppendUnique(r.Table, r.Chain, r.Args...); err != nil {
				return nil, fmt.Errorf("iptables: add %s: %w", r.object(), err)
			}
			xt = append(xt, r.object())
			keep[r.object()] = true
		}
	}
	return xt, ipt.deleteObjects(xtPrev, keep)
}

// EnsureNetwork implements Firewall. Chains are created, flushed and filled
// in one transaction, so repeating it never duplicates a rule.
func (b *Nftables) EnsureNetwork(n NetRules, prev []string) ([]string, error) {
	c, err := newNftConn()
	if err != nil {
		return nil, err
	}
	xt, err := ensureCoexist(c, n, prev)
	if err != nil {
		return nil, err
	}
	var fams []nftables.TableFamily
	for _, f := range families(n) {
		fams = append(fams, f.table)
	}
	sets, err := sharedInfra(c, false, fams...)
	if err != nil {
		return nil, err
	}
	for _, f := range fams {
		if err := c.SetAddElements(sets[f][setBridges], []nftables.SetElement{{Key: ifname(n.Bridge)}}); err != nil {
			return nil, fmt.Errorf("nftables: set %s: %w", setBridges, err)
		}
	}
	installed := b.NetworkObjects(n)
	keep := map[string]bool{}
	for _, obj := range installed {
		keep[obj] = true
	}
	for _, obj := range prev {
		if _, _, elem := parseBridgeElem(obj); keep[obj] || elem || strings.HasPrefix(obj, xtPrefix) {
			continue
		}
		f, name, err := parseObject(obj)
		if err != nil {
			return nil, err
		}
		delChain(c, f, name)
	}
	for _, ch := range networkChains(n) {
		addChain(c, ch, sets, true)
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
	var own []string
	families := map[nftables.TableFamily]bool{nftables.TableFamilyIPv4: true}
	for _, obj := range installed {
		if f, bridge, ok := parseBridgeElem(obj); ok {
			// Add, then delete: the delete cannot fail for an element
			// already gone, and the batch stays one transaction.
			families[f] = true
			set := bridgesSet(c.AddTable(table(f)))
			if err := c.AddSet(set, nil); err != nil {
				return fmt.Errorf("nftables: set %s: %w", setBridges, err)
			}
			el := []nftables.SetElement{{Key: ifname(bridge)}}
			if err := c.SetAddElements(set, el); err != nil {
				return err
			}
			if err := c.SetDeleteElements(set, el); err != nil {
				return err
			}
			continue
		}
		if !strings.HasPrefix(obj, xtPrefix) {
			own = append(own, obj)
		}
	}
	xt4, xt6 := byFamily(coexistObjects(installed))
	xt := map[bool][]string{false: xt4, true: xt6}
	for _, v6 := range []bool{false, true} {
		if len(xt[v6]) == 0 && !(last && forwardDrops(c, v6)) {
			continue
		}
		ipt, err := newIptables(v6)
		if err != nil {
			return err
		}
		if err := ipt.deleteObjects(xt[v6], nil); err != nil {
			return err
		}
		// Our iptables chain goes when no network of ours needs it; the
		// caller's last says exactly that.
		if last {
			if err := ipt.removeCoexistShared(); err != nil {
				return err
			}
		}
	}
	for _, obj := range own {
		f, name, err := parseObject(obj)
		if err != nil {
			return err
		}
		families[f] = true
		delChain(c, f, name)
	}
	if last {
		// The ip6 table too, if an earlier dual-stack network left it
		// (empty).
		families[nftables.TableFamilyIPv6] = true
		for f := range families {
			c.DelTable(c.AddTable(table(f)))
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: remove rules %s: %w", strings.Join(own, ", "), err)
	}
	return nil
}

// Present implements Firewall: one look at the network's forward chain in
// each of its families' tables, which every network has and a flush of
// the ruleset or of a table removes. A chain that cannot be looked up
// counts as gone: the reload that follows fails loudly if the kernel cannot
// be asked at all.
func (*Nftables) Present(n NetRules) (bool, error) {
	c, err := newNftConn()
	if err != nil {
		return false, err
	}
	for _, f := range families(n) {
		if _, err := c.ListChain(table(f.table), "fwd-"+n.Name); err != nil {
			return false, nil
		}
	}
	return true, nil
}

// ipFamilies are the families of our tables, ip first.
var ipFamilies = []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6}

// ourChains lists the chains of our tables, as objects (family/name).
func ourChains(c *nftables.Conn) (map[string]bool, error) {
	out := map[string]bool{}
	for _, f := range ipFamilies {
		all, err := c.ListChainsOfTableFamily(f)
		if err != nil {
			return nil, fmt.Errorf("nftables: list chains: %w", err)
		}
		for _, ch := range all {
			if ch.Table.Name == TableName {
				out[familyName(f)+"/"+ch.Name] = true
			}
		}
	}
	return out, nil
}

// wanted is everything of s as data: the chains, in order, and the
// elements of each family's sets and maps.
func wanted(s Ruleset) ([]nftChain, map[nftables.TableFamily]map[string][]nftables.SetElement) {
	chains := []nftChain{loopbackChain()}
	elems := portElements(s.Ports)
	for _, f := range ipFamilies {
		if elems[f] == nil {
			elems[f] = map[string][]nftables.SetElement{}
		}
	}
	for _, nw := range s.Networks {
		chains = append(chains, networkChains(nw.Rules)...)
		for _, f := range families(nw.Rules) {
			elems[f.table][setBridges] = append(elems[f.table][setBridges], nftables.SetElement{Key: ifname(nw.Rules.Bridge)})
		}
	}
	for _, f := range ipFamilies {
		if len(elems[f][mapAny])+len(elems[f][mapByIP]) > 0 {
			chains = append(chains, publishChains(f)...)
		}
	}
	return chains, elems
}

// Reload implements Firewall: one transaction makes our tables hold exactly
// what s names. Every wanted chain is flushed and filled, every set
// flushed and filled, chains of ours that s does not name deleted; the
// tables themselves stay, so whatever was flushed, deleted or added by
// hand in them ends as s says, and a second reload lists the same
// ruleset.
func (b *Nftables) Reload(s Ruleset) (map[string][]string, error) {
	c, err := newNftConn()
	if err != nil {
		return nil, err
	}
	installed := map[string][]string{}
	for _, nw := range s.Networks {
		xt, err := ensureCoexist(c, nw.Rules, nw.Installed)
		if err != nil {
			return nil, err
		}
		installed[nw.Rules.Name] = append(b.NetworkObjects(nw.Rules), xt...)
	}
	existing, err := ourChains(c)
	if err != nil {
		return nil, err
	}
	chains, elems := wanted(s)
	sets := familySets{}
	for _, f := range ipFamilies {
		if f == nftables.TableFamilyIPv6 && len(elems[f][setBridges]) == 0 && !hasFamily(existing, f) {
			continue // no dual-stack network, and no table to clean
		}
		t := c.AddTable(table(f))
		sets[f] = publishSets(t)
		sets[f][setBridges] = bridgesSet(t)
		for _, set := range sets[f] {
			// A set whose properties are set here cannot be refused.
			c.AddSet(set, nil)
			c.FlushSet(set)
		}
	}
	keep := map[string]bool{}
	for _, ch := range chains {
		keep[ch.object()] = true
	}
	for obj := range existing {
		if !keep[obj] {
			f, name, _ := parseObject(obj)
			delChain(c, f, name)
		}
	}
	for _, ch := range chains {
		addChain(c, ch, sets, true)
	}
	for f, byName := range elems {
		for name, es := range byName {
			if err := c.SetAddElements(sets[f][name], es); err != nil {
				return nil, fmt.Errorf("nftables: set %s: %w", name, err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: reload table %s: %w", TableName, err)
	}
	return installed, nil
}

// hasFamily reports whether objs names a chain of family f.
func hasFamily(objs map[string]bool, f nftables.TableFamily) bool {
	for obj := range objs {
		if strings.HasPrefix(obj, familyName(f)+"/") {
			return true
		}
	}
	return false
}

// Missing implements Firewall: every chain with its number of rules, and
// every element of the sets and maps, against what s names.
func (*Nftables) Missing(s Ruleset) ([]string, error) {
	c, err := newNftConn()
	if err != nil {
		return nil, err
	}
	existing, err := ourChains(c)
	if err != nil {
		return nil, err
	}
	chains, elems := wanted(s)
	var missing []string
	for _, ch := range chains {
		if !existing[ch.object()] {
			missing = append(missing, "chain "+ch.object())
			continue
		}
		t := table(ch.Family)
		rules, err := c.GetRules(t, &nftables.Chain{Table: t, Name: ch.Name})
		if err != nil {
			return nil, fmt.Errorf("nftables: list chain %s: %w", ch.object(), err)
		}
		if len(rules) < len(ch.Rules) {
			missing = append(missing, fmt.Sprintf("chain %s has %d of its %d rules", ch.object(), len(rules), len(ch.Rules)))
		}
	}
	for _, f := range ipFamilies {
		if !hasFamily(existing, f) {
			continue // no table, or an empty one: the sets are gone too
		}
		t := table(f)
		names := make([]string, 0, len(elems[f]))
		for name := range elems[f] {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			have, err := c.GetSetElements(&nftables.Set{Table: t, Name: name})
			if err != nil {
				missing = append(missing, "set "+familyName(f)+"/"+name)
				continue
			}
			got := map[string]bool{}
			for _, e := range have {
				got[string(e.Key)] = true
			}
			for _, e := range elems[f][name] {
				if !got[string(e.Key)] {
					missing = append(missing, "an element of "+familyName(f)+"/"+name)
				}
			}
		}
	}
	return missing, nil
}

func policyAccept() *nftables.ChainPolicy {
	p := nftables.ChainPolicyAccept
	return &p
}
