package firewall

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/netshim/netshim/config"
)

// Chains of the iptables backend, laid out like Docker's so that
// `iptables -t nat -nvL` reads like `docker`'s. Every rule of ours is in a
// chain of ours; the built-in chains only jump to them. So a reload
// replaces our chains' content in one iptables-restore, and never touches
// anyone else's rules.
const (
	// iptChainRaw (raw) drops, before NAT, what must not reach a
	// container or the host's loopback.
	iptChainRaw = "NETSHIM-PREROUTING"
	// iptChainNAT (nat) holds the DNATs of published ports; it is jumped
	// to from PREROUTING and OUTPUT for local destinations.
	iptChainNAT = "NETSHIM"
	// iptChainPost (nat) holds the masquerade rules.
	iptChainPost = "NETSHIM-POSTROUTING"
	// iptChainForward (filter) is jumped to first from FORWARD.
	iptChainForward = "NETSHIM-FORWARD"
	// Docker's two-stage isolation: stage 1 sends traffic leaving a bridge
	// for another interface to stage 2, which drops it if that interface is
	// another bridge of ours.
	iptChainIso1 = "NETSHIM-ISOLATION-STAGE-1"
	iptChainIso2 = "NETSHIM-ISOLATION-STAGE-2"
	// iptChainPorts (filter) accepts connections to published ports.
	iptChainPorts = "NETSHIM-PORTS"
	// iptChainInput and iptChainOutput (filter) keep the host out of
	// isolated networks.
	iptChainInput  = "NETSHIM-INPUT"
	iptChainOutput = "NETSHIM-OUTPUT"
)

// iptRule is one rule as data: table, chain and the rule's arguments, in
// the order iptables-save lists them (source, destination, interfaces,
// protocol, then matches), so that a rule of ours is found in its output
// by its text (TestIptablesCanonical).
type iptRule struct {
	Table string
	Chain string
	Args  []string
}

// object is how a rule is named in the state: "table chain args...". No
// argument of ours contains a space.
func (r iptRule) object() string {
	return r.Table + " " + r.Chain + " " + strings.Join(r.Args, " ")
}

func parseIptObject(obj string) (iptRule, error) {
	f := strings.Fields(obj)
	if len(f) < 3 || (f[0] != "nat" && f[0] != "filter" && f[0] != "raw") {
		return iptRule{}, fmt.Errorf("iptables object %q in state: want table chain args", obj)
	}
	return iptRule{Table: f[0], Chain: f[1], Args: f[2:]}, nil
}

// iptOwnChains are our chains, by table, in the order iptables-restore
// declares them.
var iptOwnChains = [][2]string{
	{"raw", iptChainRaw},
	{"nat", iptChainNAT}, {"nat", iptChainPost},
	{"filter", iptChainForward}, {"filter", iptChainIso1}, {"filter", iptChainIso2}, {"filter", iptChainPorts},
	{"filter", iptChainInput}, {"filter", iptChainOutput},
}

// iptJump is a built-in chain's jump to one of ours: inserted first, or
// appended.
type iptJump struct {
	iptRule
	first bool
}

// iptJumps are the built-in chains' jumps into ours, shared by every
// network: put in by any network, taken out with the last.
func iptJumps() []iptJump {
	return []iptJump{
		{iptRule{"raw", "PREROUTING", []string{"-j", iptChainRaw}}, true},
		{iptRule{"nat", "PREROUTING", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", iptChainNAT}}, false},
		{iptRule{"nat", "OUTPUT", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", iptChainNAT}}, false},
		{iptRule{"nat", "POSTROUTING", []string{"-j", iptChainPost}}, false},
		{iptRule{"filter", "FORWARD", []string{"-j", iptChainForward}}, true},
		{iptRule{"filter", "INPUT", []string{"-j", iptChainInput}}, true},
		{iptRule{"filter", "OUTPUT", []string{"-j", iptChainOutput}}, true},
	}
}

// iptShared are the rules of our chains that every network uses, first
// in their chains: the loopback guard (see loopbackChain; IPv4 only, as
// the kernel never routes ::1), and the isolation and published-port
// stages of forwarding.
func iptShared(v6 bool) []iptRule {
	out := []iptRule{
		// The host's own packets to its addresses on our bridges.
		{"raw", iptChainRaw, []string{"-i", "lo", "-j", "RETURN"}},
		{"filter", iptChainForward, []string{"-j", iptChainIso1}},
		{"filter", iptChainForward, []string{"-j", iptChainPorts}},
	}
	if v6 {
		return out
	}
	return append([]iptRule{{"raw", iptChainRaw, []string{"-d", loopback.String(), "!", "-i", "lo", "-j", "DROP"}}}, out...)
}

// ip6Mark starts the state's name of a rule of ip6tables'.
const ip6Mark = "ip6 "

// byFamily splits recorded objects into iptables' and ip6tables'.
func byFamily(objs []string) (v4, v6 []string) {
	for _, o := range objs {
		if r, ok := strings.CutPrefix(o, ip6Mark); ok {
			v6 = append(v6, r)
		} else {
			v4 = append(v4, o)
		}
	}
	return v4, v6
}

// familyMark starts the state's name of a rule of the family.
func familyMark(v6 bool) string {
	if v6 {
		return ip6Mark
	}
	return ""
}

// tool is the iptables tool name (iptables-save, iptables-restore) of
// the family.
func tool(name string, v6 bool) string {
	if v6 {
		return "ip6" + strings.TrimPrefix(name, "ip")
	}
	return name
}

// iptNetworkRules is the data of a network's rules in one family
// (ip6tables' with v6, none for a network without IPv6), as networkChains
// is for nftables.
func iptNetworkRules(n NetRules, v6 bool) []iptRule {
	for _, f := range families(n) {
		if f.subnet.Addr().Is6() == v6 {
			return iptFamilyRules(n, f)
		}
	}
	return nil
}

// iptFamilyRules are network n's rules in family f.
func iptFamilyRules(n NetRules, f family) []iptRule {
	sub, br := f.subnet.String(), n.Bridge
	v6 := f.subnet.Addr().Is6()
	var out []iptRule
	if v6 {
		// Multicast listener reports stop at the host (see familyChains).
		for _, t := range mldTypes {
			out = append(out, iptRule{"raw", iptChainRaw, []string{"-i", br, "-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", strconv.Itoa(int(t)), "-j", "DROP"}})
		}
	}
	if n.Mode == config.GatewayNAT || n.Mode == config.GatewayIsolated {
		if n.Mode == config.GatewayNAT {
			for _, t := range n.Trusted {
				out = append(out, iptRule{"raw", iptChainRaw, []string{"-d", sub, "-i", t, "-j", "RETURN"}})
			}
		}
		if o := n.Overlay; o != nil && !v6 {
			// The network's containers on other hosts (see familyChains).
			out = append(out, iptRule{"raw", iptChainRaw, []string{"-s", o.Subnet.String(), "-d", sub, "-i", o.VXLAN, "-j", "RETURN"}})
		}
		out = append(out, iptRule{"raw", iptChainRaw, []string{"-d", sub, "!", "-i", br, "-j", "DROP"}})
	}
	if o := n.Overlay; o != nil && n.Masquerade && !v6 {
		out = append(out, iptRule{"nat", iptChainPost, []string{"-s", sub, "-d", o.Subnet.String(), "-j", "RETURN"}})
	}
	if n.Masquerade {
		out = append(out, iptRule{"nat", iptChainPost, []string{"-s", sub, "!", "-o", br, "-j", "MASQUERADE"}})
	}
	if dnatMode(n) {
		// Published ports from the host (127.0.0.1 too) or from a
		// container of this bridge through a host address answer through
		// the host.
		out = append(out,
			iptRule{"nat", iptChainPost, []string{"-o", br, "-m", "addrtype", "--src-type", "LOCAL", "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"}},
			iptRule{"nat", iptChainPost, []string{"-s", sub, "-o", br, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"}})
	}
	out = append(out,
		iptRule{"filter", iptChainIso1, []string{"-i", br, "!", "-o", br, "-m", "conntrack", "!", "--ctstate", "DNAT", "-j", iptChainIso2}},
		iptRule{"filter", iptChainIso2, []string{"-o", br, "-j", "DROP"}},
	)
	if n.Internal {
		out = append(out,
			iptRule{"filter", iptChainForward, []string{"-i", br, "!", "-o", br, "-j", "DROP"}},
			iptRule{"filter", iptChainForward, []string{"!", "-i", br, "-o", br, "-j", "DROP"}},
		)
	} else {
		out = append(out,
			iptRule{"filter", iptChainForward, []string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
			iptRule{"filter", iptChainForward, []string{"-i", br, "-j", "ACCEPT"}},
		)
		if o := n.Overlay; o != nil && !v6 {
			out = append(out, iptRule{"filter", iptChainForward, []string{"-s", o.Subnet.String(), "-i", o.VXLAN, "-o", br, "-j", "ACCEPT"}})
		}
		switch n.Mode {
		case config.GatewayRouted:
			out = append(out,
				iptRule{"filter", iptChainForward, []string{"-o", br, "-p", map[bool]string{false: "icmp", true: "ipv6-icmp"}[v6], "-j", "ACCEPT"}},
				iptRule{"filter", iptChainForward, []string{"-o", br, "-j", "DROP"}})
		case config.GatewayNATUnprotected:
			out = append(out, iptRule{"filter", iptChainForward, []string{"-o", br, "-j", "ACCEPT"}})
		default:
			// Published ports were accepted in NETSHIM-PORTS.
			out = append(out, iptRule{"filter", iptChainForward, []string{"-o", br, "-j", "DROP"}})
		}
	}
	if o := n.Overlay; o != nil && !v6 {
		// The VXLAN port takes the network's VNI from its peers only (see
		// vxlanChain): the VNI is the 3 bytes after the 4 of the VXLAN
		// header that follows the UDP header.
		vxlan := []string{"-p", "udp", "-m", "udp", "--dport", strconv.Itoa(VXLANPort), "-m", "u32", "--u32",
			// Quoted as iptables-save prints it, which is what the rule is
			// compared with.
			fmt.Sprintf(`"0x0>>0x16&0x3c@0xc>>0x8=0x%x"`, o.VNI)}
		for _, p := range o.Peers {
			out = append(out, iptRule{"filter", iptChainInput, append([]string{"-s", netip.PrefixFrom(p, 32).String()}, append(vxlan, "-j", "RETURN")...)})
		}
		out = append(out, iptRule{"filter", iptChainInput, append(slices.Clone(vxlan), "-j", "DROP")})
	}
	if n.Mode == config.GatewayIsolated {
		if n.DNS {
			for _, proto := range []string{"udp", "tcp"} {
				gw := netip.PrefixFrom(f.gateway, f.gateway.BitLen()).String()
				out = append(out, iptRule{"filter", iptChainInput, []string{"-d", gw, "-i", br, "-p", proto, "-m", proto, "--dport", "53", "-j", "ACCEPT"}})
			}
		}
		if v6 {
			// Neighbour discovery (see familyChains).
			for _, t := range ndTypes {
				out = append(out, iptRule{"filter", iptChainInput, []string{"-i", br, "-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", strconv.Itoa(int(t)), "-j", "ACCEPT"}})
			}
		}
		out = append(out, iptRule{"filter", iptChainInput, []string{"-i", br, "-j", "DROP"}})
		if v6 {
			for _, t := range ndTypes {
				out = append(out, iptRule{"filter", iptChainOutput, []string{"-o", br, "-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", strconv.Itoa(int(t)), "-j", "ACCEPT"}})
			}
		}
		out = append(out,
			iptRule{"filter", iptChainOutput, []string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
			iptRule{"filter", iptChainOutput, []string{"-o", br, "-j", "DROP"}})
	}
	return out
}

// iptPortRules is the data of a container's published ports in one
// family (ip6tables' with v6): a DNAT from its host port (none in routed
// mode), and an accept of the container port.
func iptPortRules(p PortRules, v6 bool) []iptRule {
	var out []iptRule
	seen := map[string]bool{}
	add := func(r iptRule) {
		// Two host ports to one container port need one accept: each
		// rule once, so that each goes in and out once.
		if !seen[r.object()] {
			seen[r.object()] = true
			out = append(out, r)
		}
	}
	for _, port := range p.Ports {
		for _, ip := range p.targets(port) {
			if ip.Is6() != v6 {
				continue
			}
			host := netip.PrefixFrom(ip, ip.BitLen()).String()
			if port.HostPort > 0 {
				var args []string
				if port.HostIP.IsValid() && !port.HostIP.IsUnspecified() {
					args = append(args, "-d", netip.PrefixFrom(port.HostIP, port.HostIP.BitLen()).String())
				}
				args = append(args, "-p", port.Proto, "-m", port.Proto, "--dport", strconv.Itoa(port.HostPort), "-j", "DNAT",
					"--to-destination", netip.AddrPortFrom(ip, uint16(port.ContainerPort)).String())
				add(iptRule{"nat", iptChainNAT, args})
			}
			add(iptRule{"filter", iptChainPorts, []string{"-d", host, "-o", p.Bridge, "-p", port.Proto, "-m", port.Proto,
				"--dport", strconv.Itoa(port.ContainerPort), "-j", "ACCEPT"}})
		}
	}
	return out
}

// Iptables is the backend for hosts that manage their firewall with
// iptables. Each iptables run reads the whole ruleset, which is this
// backend's cost, so every change is one iptables-restore, after one
// iptables-save where it must know what is there. The rules the nftables
// backend keeps in iptables (see coexistRules) go through
// github.com/coreos/go-iptables, one iptables run each.
type Iptables struct {
	// ipt is go-iptables, made by newIptables only: making it runs
	// iptables.
	ipt *iptables.IPTables
}

// newIptables is the backend with go-iptables made, for the nftables
// backend's coexistence rules: of ip6tables with v6.
func newIptables(v6 bool) (*Iptables, error) {
	proto := iptables.ProtocolIPv4
	if v6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tool("iptables", v6), err)
	}
	return &Iptables{ipt: ipt}, nil
}

// Name implements Firewall.
func (*Iptables) Name() string { return "iptables" }

// NetworkObjects implements Firewall.
func (*Iptables) NetworkObjects(n NetRules) []string {
	var out []string
	for _, v6 := range []bool{false, true} {
		for _, r := range iptNetworkRules(n, v6) {
			out = append(out, familyMark(v6)+r.object())
		}
	}
	return out
}

func (b *Iptables) ensureChain(table, chain string) error {
	ok, err := b.ipt.ChainExists(table, chain)
	if err != nil {
		return fmt.Errorf("iptables: look up chain %s/%s: %w", table, chain, err)
	}
	if !ok {
		if err := b.ipt.NewChain(table, chain); err != nil {
			return fmt.Errorf("iptables: create chain %s/%s: %w", table, chain, err)
		}
	}
	return nil
}

func (b *Iptables) ensureJump(j iptJump) error {
	var err error
	if j.first {
		err = b.ipt.InsertUnique(j.Table, j.Chain, 1, j.Args...)
	} else {
		err = b.ipt.AppendUnique(j.Table, j.Chain, j.Args...)
	}
	if err != nil {
		return fmt.Errorf("iptables: add %s: %w", j.object(), err)
	}
	return nil
}

// ensureCoexistShared is what the nftables backend needs of ours when
// iptables' FORWARD drops (see coexistRules): our forward chain, jumped to
// first.
func (b *Iptables) ensureCoexistShared() error {
	if err := b.ensureChain("filter", iptChainForward); err != nil {
		return err
	}
	return b.ensureJump(iptJump{iptRule{"filter", "FORWARD", []string{"-j", iptChainForward}}, true})
}

// removeCoexistShared undoes ensureCoexistShared.
func (b *Iptables) removeCoexistShared() error {
	if err := b.ipt.DeleteIfExists("filter", "FORWARD", "-j", iptChainForward); err != nil {
		return fmt.Errorf("iptables: delete the jump to %s: %w", iptChainForward, err)
	}
	return b.deleteChain("filter", iptChainForward)
}

func (b *Iptables) deleteChain(table, chain string) error {
	ok, err := b.ipt.ChainExists(table, chain)
	if err == nil && ok {
		err = b.ipt.ClearAndDeleteChain(table, chain)
	}
	if err != nil {
		return fmt.Errorf("iptables: delete chain %s/%s: %w", table, chain, err)
	}
	return nil
}

// EnsureNetwork implements Firewall: per family, one iptables-save says
// what of ours is there, and one iptables-restore adds what is missing
// (our chains, the jumps to them, the rules every network shares, n's
// rules) and deletes what of prev n no longer has.
func (b *Iptables) EnsureNetwork(n NetRules, prev []string) ([]string, error) {
	prev4, prev6 := byFamily(prev)
	if err := b.ensureFamily(false, n.Name, iptNetworkRules(n, false), prev4); err != nil {
		return nil, err
	}
	if rules6 := iptNetworkRules(n, true); len(rules6)+len(prev6) > 0 {
		if err := b.ensureFamily(true, n.Name, rules6, prev6); err != nil {
			return nil, err
		}
	}
	return b.NetworkObjects(n), nil
}

// ensureFamily is EnsureNetwork in one family.
func (b *Iptables) ensureFamily(v6 bool, name string, rules []iptRule, prev []string) error {
	have, err := b.save(v6)
	if err != nil {
		return err
	}
	declare, cmds := have.missingShared(v6)
	keep := map[string]bool{}
	for _, r := range rules {
		keep[r.object()] = true
	}
	for _, obj := range prev {
		r, err := parseIptObject(obj)
		if err != nil {
			return err
		}
		if !keep[obj] && have.has(r) {
			cmds = append(cmds, iptCmd{Op: "-D", Rule: r})
		}
	}
	// A chain that gains a rule of the network gets the network's rules
	// that were in it again, in their order: they depend on it (an
	// overlay's accept of a new peer goes before the drop of the others).
	mine := map[string]bool{}
	for _, obj := range prev {
		mine[obj] = true
	}
	gains := map[[2]string]bool{}
	for _, r := range rules {
		if !have.has(r) {
			gains[[2]string{r.Table, r.Chain}] = true
		}
	}
	moved := func(r iptRule) bool {
		return gains[[2]string{r.Table, r.Chain}] && mine[r.object()] && have.has(r)
	}
	for _, r := range rules {
		if moved(r) {
			cmds = append(cmds, iptCmd{Op: "-D", Rule: r})
		}
	}
	for _, r := range rules {
		if !have.has(r) || moved(r) {
			cmds = append(cmds, iptCmd{Op: "-A", Rule: r})
		}
	}
	if len(declare)+len(cmds) > 0 {
		if _, err := b.run(tool("iptables-restore", v6), iptRestoreInput(declare, cmds)); err != nil {
			return fmt.Errorf("install the rules of network %s: %w", name, err)
		}
	}
	return nil
}

func (b *Iptables) deleteObjects(objs []string, keep map[string]bool) error {
	for _, obj := range objs {
		if keep[obj] {
			continue
		}
		r, err := parseIptObject(obj)
		if err != nil {
			return err
		}
		if err := b.ipt.DeleteIfExists(r.Table, r.Chain, r.Args...); err != nil {
			return fmt.Errorf("iptables: delete %s: %w", obj, err)
		}
	}
	return nil
}

// RemoveNetwork implements Firewall: per family, one iptables-save says
// what of ours is there, and one iptables-restore deletes the network's
// rules, and with the last network the jumps to our chains and the chains
// themselves (ip6tables' too, if an earlier dual-stack network left them).
func (b *Iptables) RemoveNetwork(installed []string, last bool) error {
	v4, v6 := byFamily(installed)
	if err := b.removeFamily(false, v4, last); err != nil {
		return err
	}
	if len(v6) == 0 && last {
		if _, err := exec.LookPath(tool("iptables-save", true)); err != nil {
			return nil // no ip6tables: nothing of ours can be there
		}
	}
	if len(v6) > 0 || last {
		return b.removeFamily(true, v6, last)
	}
	return nil
}

// removeFamily is RemoveNetwork in one family.
func (b *Iptables) removeFamily(v6 bool, installed []string, last bool) error {
	have, err := b.save(v6)
	if err != nil {
		return err
	}
	var cmds []iptCmd
	if !last {
		for _, obj := range installed {
			r, err := parseIptObject(obj)
			if err != nil {
				return err
			}
			if have.has(r) {
				cmds = append(cmds, iptCmd{Op: "-D", Rule: r})
			}
		}
	} else {
		// Our chains are emptied whole: their rules need no deleting.
		for _, j := range iptJumps() {
			if have.has(j.iptRule) {
				cmds = append(cmds, iptCmd{Op: "-D", Rule: j.iptRule})
			}
		}
		var chains []iptRule
		for _, tc := range iptOwnChains {
			if have.hasChain(tc[0], tc[1]) {
				chains = append(chains, iptRule{Table: tc[0], Chain: tc[1]})
			}
		}
		cmds = append(cmds, iptOps("-F", chains)...)
		cmds = append(cmds, iptOps("-X", chains)...)
	}
	if len(cmds) == 0 {
		return nil
	}
	if _, err := b.run(tool("iptables-restore", v6), iptRestoreInput(nil, cmds)); err != nil {
		return fmt.Errorf("remove a network's rules: %w", err)
	}
	return nil
}

// AddPorts implements Firewall: one iptables-restore per family appends
// every rule. Our chains and the jumps to them came with the network's
// rules, which setup ensures first. A setup that dies after this is undone
// by a teardown from its record, so the rules are never appended twice.
func (b *Iptables) AddPorts(p PortRules) error {
	for _, v6 := range []bool{false, true} {
		rules := iptPortRules(p, v6)
		if len(rules) == 0 {
			continue
		}
		if _, err := b.run(tool("iptables-restore", v6), iptRestoreInput(nil, iptOps("-A", rules))); err != nil {
			return fmt.Errorf("add the published ports of %s: %w", p.IP, err)
		}
	}
	return nil
}

// RemovePorts implements Firewall: per family, one iptables-restore
// deletes every rule; when that fails because some are gone already (a
// flush, a setup that died half way), an iptables-save says which are left
// to delete.
func (b *Iptables) RemovePorts(p PortRules) error {
	for _, v6 := range []bool{false, true} {
		rules := iptPortRules(p, v6)
		if len(rules) == 0 {
			continue
		}
		restore := tool("iptables-restore", v6)
		if _, err := b.run(restore, iptRestoreInput(nil, iptOps("-D", rules))); err == nil {
			continue
		}
		have, err := b.save(v6)
		if err != nil {
			return err
		}
		var left []iptRule
		for _, r := range rules {
			if have.has(r) {
				left = append(left, r)
			}
		}
		if len(left) == 0 {
			continue
		}
		if _, err := b.run(restore, iptRestoreInput(nil, iptOps("-D", left))); err != nil {
			return fmt.Errorf("remove the published ports of %s: %w", p.IP, err)
		}
	}
	return nil
}

// iptCmd is one line of iptables-restore's input: Op (-A, -D, -I with
// Pos, or -F and -X of Rule's chain alone) applied to Rule.
type iptCmd struct {
	Op   string
	Pos  int
	Rule iptRule
}

// iptOps applies op to each rule.
func iptOps(op string, rules []iptRule) []iptCmd {
	out := make([]iptCmd, len(rules))
	for i, r := range rules {
		out[i] = iptCmd{Op: op, Rule: r}
	}
	return out
}

// iptRestoreInput is iptables-restore's input, table by table: the chains
// of declare declared (which, with --noflush, empties those that exist),
// then cmds in their order.
func iptRestoreInput(declare []iptRule, cmds []iptCmd) []byte {
	var in bytes.Buffer
	for _, t := range []string{"raw", "nat", "filter"} {
		var block bytes.Buffer
		for _, d := range declare {
			if d.Table == t {
				fmt.Fprintf(&block, ":%s - [0:0]\n", d.Chain)
			}
		}
		for _, c := range cmds {
			if c.Rule.Table != t {
				continue
			}
			block.WriteString(c.Op + " " + c.Rule.Chain)
			if c.Pos > 0 {
				block.WriteString(" " + strconv.Itoa(c.Pos))
			}
			for _, a := range c.Rule.Args {
				block.WriteString(" " + a)
			}
			block.WriteString("\n")
		}
		if block.Len() > 0 {
			fmt.Fprintf(&in, "*%s\n%sCOMMIT\n", t, block.Bytes())
		}
	}
	return in.Bytes()
}

// missingJumps are the commands that put back the missing jumps to our
// chains, those that go first inserted first.
func (s iptSaved) missingJumps() []iptCmd {
	var cmds []iptCmd
	for _, j := range iptJumps() {
		switch {
		case s.has(j.iptRule):
		case j.first:
			cmds = append(cmds, iptCmd{Op: "-I", Pos: 1, Rule: j.iptRule})
		default:
			cmds = append(cmds, iptCmd{Op: "-A", Rule: j.iptRule})
		}
	}
	return cmds
}

// iptSaved is what iptables-save lists: "table :chain" for each chain and
// "table -A chain args" for each rule.
type iptSaved map[string]bool

// save runs iptables-save, or ip6tables-save.
func (b *Iptables) save(v6 bool) (iptSaved, error) {
	out, err := b.run(tool("iptables-save", v6), nil)
	if err != nil {
		return nil, err
	}
	have := iptSaved{}
	table := ""
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, ":"):
			if f := strings.Fields(l[1:]); len(f) > 0 {
				have[table+" :"+f[0]] = true
			}
		case strings.HasPrefix(l, "-A "):
			have[table+" "+l] = true
		}
	}
	return have, nil
}

func (s iptSaved) hasChain(table, chain string) bool { return s[table+" :"+chain] }

// has says rule r is listed, as our rules are written in iptables-save's
// own order.
func (s iptSaved) has(r iptRule) bool {
	return s[r.Table+" -A "+r.Chain+" "+strings.Join(r.Args, " ")]
}

// missingShared is what is missing of what every network needs: chains to
// declare, and the commands that put back the jumps to them (those that go
// first inserted first) and the shared rules (first in their chains).
func (s iptSaved) missingShared(v6 bool) (declare []iptRule, cmds []iptCmd) {
	for _, tc := range iptOwnChains {
		if !s.hasChain(tc[0], tc[1]) {
			declare = append(declare, iptRule{Table: tc[0], Chain: tc[1]})
		}
	}
	cmds = s.missingJumps()
	pos := map[string]int{}
	for _, r := range iptShared(v6) {
		pos[r.Chain]++
		if !s.has(r) {
			cmds = append(cmds, iptCmd{Op: "-I", Pos: pos[r.Chain], Rule: r})
		}
	}
	return declare, cmds
}

// Present implements Firewall: the built-in chains' jumps into ours are in
// one iptables-save (a flush of a table takes them out), and in one
// ip6tables-save for a dual-stack network.
func (b *Iptables) Present(n NetRules) (bool, error) {
	for _, v6 := range []bool{false, true} {
		if v6 && !n.Subnet6.IsValid() {
			break
		}
		have, err := b.save(v6)
		if err != nil {
			return false, err
		}
		if len(have.missingJumps()) > 0 {
			return false, nil
		}
	}
	return true, nil
}

// run runs the iptables tool name (iptables-save, iptables-restore) of the
// same flavour as the iptables this backend runs.
func (b *Iptables) run(name string, stdin []byte) ([]byte, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	var args []string
	if strings.HasSuffix(name, "-restore") {
		args = []string{"--noflush", "--wait"}
	}
	cmd := exec.Command(path, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("iptables: %s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// iptRuleset is everything of s in one family, shared rules first, in the
// order each chain holds it.
func iptRuleset(s Ruleset, v6 bool) []iptRule {
	rules := iptShared(v6)
	for _, nw := range s.Networks {
		rules = append(rules, iptNetworkRules(nw.Rules, v6)...)
	}
	for _, p := range s.Ports {
		rules = append(rules, iptPortRules(p, v6)...)
	}
	return rules
}

// dualStack reports whether a network of s has IPv6.
func dualStack(s Ruleset) bool {
	for _, nw := range s.Networks {
		if nw.Rules.Subnet6.IsValid() {
			return true
		}
	}
	return false
}

// Reload implements Firewall: per family, one iptables-restore --noflush
// declares each chain of ours, which empties it, puts back missing jumps
// to them, and fills them with exactly what s names.
func (b *Iptables) Reload(s Ruleset) (map[string][]string, error) {
	for _, v6 := range []bool{false, true} {
		if v6 && !dualStack(s) {
			break
		}
		have, err := b.save(v6)
		if err != nil {
			return nil, err
		}
		var declare []iptRule
		for _, tc := range iptOwnChains {
			declare = append(declare, iptRule{Table: tc[0], Chain: tc[1]})
		}
		cmds := have.missingJumps()
		seen := map[string]bool{}
		for _, r := range iptRuleset(s, v6) {
			if !seen[r.object()] {
				seen[r.object()] = true
				cmds = append(cmds, iptCmd{Op: "-A", Rule: r})
			}
		}
		if _, err := b.run(tool("iptables-restore", v6), iptRestoreInput(declare, cmds)); err != nil {
			return nil, err
		}
	}
	installed := map[string][]string{}
	for _, nw := range s.Networks {
		installed[nw.Rules.Name] = b.NetworkObjects(nw.Rules)
	}
	return installed, nil
}

// Missing implements Firewall, from one iptables-save per family: our
// chains, the jumps to them, and the rules of the chains that are there.
func (b *Iptables) Missing(s Ruleset) ([]string, error) {
	var missing []string
	for _, v6 := range []bool{false, true} {
		if v6 && !dualStack(s) {
			break
		}
		have, err := b.save(v6)
		if err != nil {
			return nil, err
		}
		name := tool("iptables", v6)
		for _, tc := range iptOwnChains {
			if !have.hasChain(tc[0], tc[1]) {
				missing = append(missing, name+" chain "+tc[0]+"/"+tc[1])
			}
		}
		for _, j := range iptJumps() {
			if !have.has(j.iptRule) {
				missing = append(missing, name+" rule "+j.object())
			}
		}
		for _, r := range iptRuleset(s, v6) {
			if have.hasChain(r.Table, r.Chain) && !have.has(r) {
				missing = append(missing, name+" rule "+r.object())
			}
		}
	}
	return missing, nil
}
