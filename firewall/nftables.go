package firewall

import (
	"fmt"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
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

const bridgeElemPrefix = "ip/@" + setBridges + "/"

var keyPublished = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)

// bridgesSet is the set of bridge names. Interface names are strings in
// host byte order: so marked, `nft list` prints them as names.
func bridgesSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setBridges, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
}

func publishedSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setPublished, KeyType: keyPublished, Concatenation: true}
}

// sharedInfra queues what every network's rules use: the sets, and the
// loopback guard (see loopbackChain). With fresh, the table is new in this
// batch; otherwise the guard is only added if the kernel has none (adding
// it again would duplicate its rule, flushing it would wait for an RCU
// grace period). It returns the sets, for the rules' lookups.
func sharedInfra(c *nftables.Conn, fresh bool) (map[string]*nftables.Set, error) {
	t := c.AddTable(table(nftables.TableFamilyIPv4))
	sets := map[string]*nftables.Set{setBridges: bridgesSet(t), setPublished: publishedSet(t)}
	for _, name := range []string{setBridges, setPublished} {
		if err := c.AddSet(sets[name], nil); err != nil {
			return nil, fmt.Errorf("nftables: set %s: %w", name, err)
		}
	}
	if !fresh {
		if ch, err := c.ListChain(t, chainLoopback); err == nil && ch != nil {
			return sets, nil
		}
	}
	addChain(c, loopbackChain(), sets, false)
	return sets, nil
}

// addChain queues chain ch with its rules (the chain flushed first unless
// fresh), resolving the rules' set lookups to sets queued in this batch.
func addChain(c *nftables.Conn, ch nftChain, sets map[string]*nftables.Set, flush bool) {
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
// whatever goes to or from its bridge is accepted there, and our own
// table's forward chain decides (a packet must pass every base chain, so
// its drops still hold).
func coexistRules(n NetRules) []iptRule {
	return []iptRule{
		{"filter", iptChainForward, []string{"-i", n.Bridge, "-j", "ACCEPT"}},
		{"filter", iptChainForward, []string{"-o", n.Bridge, "-j", "ACCEPT"}},
	}
}

// ensureCoexist makes iptables accept n's forwarding when its FORWARD chain
// drops, and removes the coexistence rules of prev no longer wanted. It
// returns the objects to record.
func ensureCoexist(c *nftables.Conn, n NetRules, prev []string) ([]string, error) {
	var xt, xtPrev []string
	for _, obj := range prev {
		if o, ok := strings.CutPrefix(obj, xtPrefix); ok {
			xtPrev = append(xtPrev, o)
		}
	}
	drops := forwardDrops(c)
	if !drops && len(xtPrev) == 0 {
		return nil, nil
	}
	ipt, err := newIptables()
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
			xt = append(xt, xtPrefix+r.object())
			keep[r.object()] = true
		}
	}
	return xt, ipt.deleteObjects(xtPrev, keep)
}

// EnsureNetwork implements Firewall. Chains are created, flushed and filled
// in one transaction, so repeating it never duplicates a rule.
func (*Nftables) EnsureNetwork(n NetRules, prev []string) ([]string, error) {
	c, err := newNftConn()
	if err != nil {
		return nil, err
	}
	xt, err := ensureCoexist(c, n, prev)
	if err != nil {
		return nil, err
	}
	sets, err := sharedInfra(c, false)
	if err != nil {
		return nil, err
	}
	if err := c.SetAddElements(sets[setBridges], []nftables.SetElement{{Key: ifname(n.Bridge)}}); err != nil {
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
		if keep[obj] || strings.HasPrefix(obj, xtPrefix) || strings.HasPrefix(obj, bridgeElemPrefix) {
			continue
		}
		f, name, err := parseObject(obj)
		if err != nil {
			return nil, err
		}
		delChain(c, f, name)
	}
	for _, ch := range chains {
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
			if err := ipt.removeCoexistShared(); err != nil {
				return err
			}
		}
	}
	families := map[nftables.TableFamily]bool{nftables.TableFamilyIPv4: true}
	for _, obj := range own {
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
		return fmt.Errorf("nftables: remove rules %s: %w", strings.Join(own, ", "), err)
	}
	return nil
}

// Present implements Firewall: one look at the network's forward chain,
// which every network has and a flush of the ruleset or of our table
// removes. A chain that cannot be looked up counts as gone: the reload
// that follows fails loudly if the kernel cannot be asked at all.
func (*Nftables) Present(n NetRules) (bool, error) {
	c, err := newNftConn()
	if err != nil {
		return false, err
	}
	_, err = c.ListChain(table(nftables.TableFamilyIPv4), "fwd-"+n.Name)
	return err == nil, nil
}

// ourChains lists the chains of our table, by name.
func ourChains(c *nftables.Conn) (map[string]bool, error) {
	all, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	out := map[string]bool{}
	for _, ch := range all {
		if ch.Table.Name == TableName {
			out[ch.Name] = true
		}
	}
	return out, nil
}

// wanted is everything of s as data: the chains, in order, and the
// elements of each set and map.
func wanted(s Ruleset) ([]nftChain, map[string][]nftables.SetElement) {
	chains := []nftChain{loopbackChain()}
	elems := portElements(s.Ports)
	for _, nw := range s.Networks {
		chains = append(chains, networkChains(nw.Rules)...)
		elems[setBridges] = append(elems[setBridges], nftables.SetElement{Key: ifname(nw.Rules.Bridge)})
	}
	if len(elems[mapAny])+len(elems[mapByIP]) > 0 {
		chains = append(chains, publishChains()...)
	}
	return chains, elems
}

// Reload implements Firewall: one transaction makes our table hold exactly
// what s names. Every wanted chain is flushed and filled, every set
// flushed and filled, chains of ours that s does not name deleted; the
// table itself stays, so whatever was flushed, deleted or added by hand in
// it ends as s says, and a second reload lists the same ruleset.
func (*Nftables) Reload(s Ruleset) (map[string][]string, error) {
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
		objs := []string{bridgeElemPrefix + nw.Rules.Bridge}
		for _, ch := range networkChains(nw.Rules) {
			objs = append(objs, ch.object())
		}
		installed[nw.Rules.Name] = append(objs, xt...)
	}
	existing, err := ourChains(c)
	if err != nil {
		return nil, err
	}
	chains, elems := wanted(s)
	t := c.AddTable(table(nftables.TableFamilyIPv4))
	sets := publishSets(t)
	sets[setBridges] = bridgesSet(t)
	for _, name := range []string{setBridges, setPublished, mapByIP, mapAny} {
		// A set whose properties are set here cannot be refused.
		c.AddSet(sets[name], nil)
		c.FlushSet(sets[name])
	}
	keep := map[string]bool{}
	for _, ch := range chains {
		keep[ch.Name] = true
	}
	for name := range existing {
		if !keep[name] {
			delChain(c, nftables.TableFamilyIPv4, name)
		}
	}
	for _, ch := range chains {
		addChain(c, ch, sets, true)
	}
	for name, es := range elems {
		if err := c.SetAddElements(sets[name], es); err != nil {
			return nil, fmt.Errorf("nftables: set %s: %w", name, err)
		}
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: reload table %s: %w", TableName, err)
	}
	return installed, nil
}

// Missing implements Firewall: every chain with its number of rules, and
// every element of the sets and maps, against what s names.
func (*Nftables) Missing(s Ruleset) ([]string, error) {
	c, err := newNftConn()
	if err != nil {
		return nil, err
	}
	t := table(nftables.TableFamilyIPv4)
	existing, err := ourChains(c)
	if err != nil {
		return nil, err
	}
	chains, elems := wanted(s)
	var missing []string
	for _, ch := range chains {
		if !existing[ch.Name] {
			missing = append(missing, "chain "+ch.object())
			continue
		}
		rules, err := c.GetRules(t, &nftables.Chain{Table: t, Name: ch.Name})
		if err != nil {
			return nil, fmt.Errorf("nftables: list chain %s: %w", ch.Name, err)
		}
		if len(rules) < len(ch.Rules) {
			missing = append(missing, fmt.Sprintf("chain %s has %d of its %d rules", ch.object(), len(rules), len(ch.Rules)))
		}
	}
	if len(existing) == 0 {
		return missing, nil // no table, or an empty one: the sets are gone too
	}
	names := make([]string, 0, len(elems))
	for name := range elems {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		have, err := c.GetSetElements(&nftables.Set{Table: t, Name: name})
		if err != nil {
			missing = append(missing, "set "+name)
			continue
		}
		got := map[string]bool{}
		for _, e := range have {
			got[string(e.Key)] = true
		}
		for _, e := range elems[name] {
			if !got[string(e.Key)] {
				missing = append(missing, "an element of "+name)
			}
		}
	}
	return missing, nil
}

func policyAccept() *nftables.ChainPolicy {
	p := nftables.ChainPolicyAccept
	return &p
}
