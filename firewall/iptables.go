package firewall

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
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

// iptRule is one rule as data: table, chain and the rule's arguments.
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
// in their chains: the loopback guard (see loopbackChain), and the
// isolation and published-port stages of forwarding.
func iptShared() []iptRule {
	return []iptRule{
		{"raw", iptChainRaw, []string{"!", "-i", "lo", "-d", loopback.String(), "-j", "DROP"}},
		// The host's own packets to its addresses on our bridges.
		{"raw", iptChainRaw, []string{"-i", "lo", "-j", "RETURN"}},
		{"filter", iptChainForward, []string{"-j", iptChainIso1}},
		{"filter", iptChainForward, []string{"-j", iptChainPorts}},
	}
}

// iptNetworkRules is the data of a network's rules, as networkChains is
// for nftables.
func iptNetworkRules(n NetRules) []iptRule {
	sub, br := n.Subnet.String(), n.Bridge
	var out []iptRule
	if n.Mode == config.GatewayNAT || n.Mode == config.GatewayIsolated {
		if n.Mode == config.GatewayNAT {
			for _, t := range n.Trusted {
				out = append(out, iptRule{"raw", iptChainRaw, []string{"-d", sub, "-i", t, "-j", "RETURN"}})
			}
		}
		out = append(out, iptRule{"raw", iptChainRaw, []string{"-d", sub, "!", "-i", br, "-j", "DROP"}})
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
			iptRule{"filter", iptChainForward, []string{"-o", br, "!", "-i", br, "-j", "DROP"}},
		)
	} else {
		out = append(out,
			iptRule{"filter", iptChainForward, []string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
			iptRule{"filter", iptChainForward, []string{"-i", br, "-j", "ACCEPT"}},
		)
		switch n.Mode {
		case config.GatewayRouted:
			out = append(out,
				iptRule{"filter", iptChainForward, []string{"-o", br, "-p", "icmp", "-j", "ACCEPT"}},
				iptRule{"filter", iptChainForward, []string{"-o", br, "-j", "DROP"}})
		case config.GatewayNATUnprotected:
			out = append(out, iptRule{"filter", iptChainForward, []string{"-o", br, "-j", "ACCEPT"}})
		default:
			// Published ports were accepted in NETSHIM-PORTS.
			out = append(out, iptRule{"filter", iptChainForward, []string{"-o", br, "-j", "DROP"}})
		}
	}
	if n.Mode == config.GatewayIsolated {
		if n.DNS {
			for _, proto := range []string{"udp", "tcp"} {
				out = append(out, iptRule{"filter", iptChainInput, []string{"-i", br, "-d", n.Gateway.String() + "/32", "-p", proto, "-m", proto, "--dport", "53", "-j", "ACCEPT"}})
			}
		}
		out = append(out,
			iptRule{"filter", iptChainInput, []string{"-i", br, "-j", "DROP"}},
			iptRule{"filter", iptChainOutput, []string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
			iptRule{"filter", iptChainOutput, []string{"-o", br, "-j", "DROP"}})
	}
	return out
}

// iptPortRules is the data of a container's published ports: a DNAT from
// its host port (none in routed mode), and an accept of the container port.
func iptPortRules(p PortRules) []iptRule {
	ip := netip.AddrFrom4(p.IP).String()
	var out []iptRule
	for _, port := range p.Ports {
		if port.HostPort > 0 {
			args := []string{"-p", port.Proto}
			if port.HostIP.IsValid() {
				args = append(args, "-d", port.HostIP.String()+"/32")
			}
			args = append(args, "-m", port.Proto, "--dport", strconv.Itoa(port.HostPort), "-j", "DNAT",
				"--to-destination", ip+":"+strconv.Itoa(port.ContainerPort))
			out = append(out, iptRule{"nat", iptChainNAT, args})
		}
		out = append(out, iptRule{"filter", iptChainPorts, []string{"-d", ip + "/32", "-o", p.Bridge, "-p", port.Proto, "-m", port.Proto,
			"--dport", strconv.Itoa(port.ContainerPort), "-j", "ACCEPT"}})
	}
	return out
}

// Iptables is the backend for hosts that manage their firewall with
// iptables. Each iptables run reads the whole ruleset, which is this
// backend's cost: a container's rules go in and out in one
// iptables-restore each, and the rarer work of networks, reloads and
// doctor goes through github.com/coreos/go-iptables.
type Iptables struct {
	// ipt is made by lib, which each method that uses it calls first:
	// making it runs iptables.
	ipt *iptables.IPTables
}

// newIptables is the backend with go-iptables made, for the nftables
// backend's coexistence rules.
func newIptables() (*Iptables, error) {
	b := &Iptables{}
	if _, err := b.lib(); err != nil {
		return nil, err
	}
	return b, nil
}

// lib is go-iptables, made once.
func (b *Iptables) lib() (*iptables.IPTables, error) {
	if b.ipt == nil {
		ipt, err := iptables.New()
		if err != nil {
			return nil, fmt.Errorf("iptables: %w", err)
		}
		b.ipt = ipt
	}
	return b.ipt, nil
}

// Name implements Firewall.
func (*Iptables) Name() string { return "iptables" }

// NetworkObjects implements Firewall.
func (*Iptables) NetworkObjects(n NetRules) []string {
	var out []string
	for _, r := range iptNetworkRules(n) {
		out = append(out, r.object())
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

// ensureShared creates our chains, the jumps to them and the rules every
// network uses, first in their chains.
func (b *Iptables) ensureShared() error {
	for _, tc := range iptOwnChains {
		if err := b.ensureChain(tc[0], tc[1]); err != nil {
			return err
		}
	}
	for _, j := range iptJumps() {
		if err := b.ensureJump(j); err != nil {
			return err
		}
	}
	pos := map[string]int{}
	for _, r := range iptShared() {
		pos[r.Chain]++
		if err := b.ipt.InsertUnique(r.Table, r.Chain, pos[r.Chain], r.Args...); err != nil {
			return fmt.Errorf("iptables: add %s: %w", r.object(), err)
		}
	}
	return nil
}

// ensureCoexistShared is the part of ensureShared the nftables backend
// needs when iptables' FORWARD drops (see coexistRules): our forward chain,
// jumped to first.
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

// EnsureNetwork implements Firewall.
func (b *Iptables) EnsureNetwork(n NetRules, prev []string) ([]string, error) {
	if _, err := b.lib(); err != nil {
		return nil, err
	}
	if err := b.ensureShared(); err != nil {
		return nil, err
	}
	rules := iptNetworkRules(n)
	keep := map[string]bool{}
	installed := make([]string, 0, len(rules))
	for _, r := range rules {
		keep[r.object()] = true
		installed = append(installed, r.object())
	}
	if err := b.deleteObjects(prev, keep); err != nil {
		return nil, err
	}
	for _, r := range rules {
		if err := b.ipt.AppendUnique(r.Table, r.Chain, r.Args...); err != nil {
			return nil, fmt.Errorf("iptables: add %s: %w", r.object(), err)
		}
	}
	return installed, nil
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

// RemoveNetwork implements Firewall: the network's rules, and with the
// last network the jumps to our chains and the chains themselves, go in
// one iptables-restore; when that fails because some are gone already (a
// flush), each is removed on its own if it is there.
func (b *Iptables) RemoveNetwork(installed []string, last bool) error {
	var rules []iptRule
	for _, obj := range installed {
		r, err := parseIptObject(obj)
		if err != nil {
			return err
		}
		rules = append(rules, r)
	}
	var chains []iptRule
	if last {
		for _, j := range iptJumps() {
			rules = append(rules, j.iptRule)
		}
		for _, tc := range iptOwnChains {
			chains = append(chains, iptRule{Table: tc[0], Chain: tc[1]})
		}
	}
	in := append(iptRestoreInput("-D", rules), iptRestoreInput("-F", chains)...)
	in = append(in, iptRestoreInput("-X", chains)...)
	if _, err := b.run("iptables-restore", in); err == nil {
		return nil
	}
	if _, err := b.lib(); err != nil {
		return err
	}
	if err := b.deleteObjects(installed, nil); err != nil {
		return err
	}
	if !last {
		return nil
	}
	return b.removeShared()
}

// removeShared removes the jumps to our chains, and our chains.
func (b *Iptables) removeShared() error {
	for _, j := range iptJumps() {
		if err := b.ipt.DeleteIfExists(j.Table, j.Chain, j.Args...); err != nil {
			return fmt.Errorf("iptables: delete %s: %w", j.object(), err)
		}
	}
	for _, tc := range iptOwnChains {
		if err := b.deleteChain(tc[0], tc[1]); err != nil {
			return err
		}
	}
	return nil
}

// AddPorts implements Firewall: one iptables-restore appends every rule.
// Our chains and the jumps to them came with the network's rules, which
// setup ensures first. A setup that dies after this is undone by a
// teardown from its record, so the rules are never appended twice.
func (b *Iptables) AddPorts(p PortRules) error {
	if _, err := b.run("iptables-restore", iptRestoreInput("-A", iptPortRules(p))); err != nil {
		return fmt.Errorf("add the published ports of %s: %w", netip.AddrFrom4(p.IP), err)
	}
	return nil
}

// RemovePorts implements Firewall: one iptables-restore deletes every
// rule; when that fails because some are gone already (a flush, a setup
// that died half way), each is deleted on its own if it is there.
func (b *Iptables) RemovePorts(p PortRules) error {
	rules := iptPortRules(p)
	if _, err := b.run("iptables-restore", iptRestoreInput("-D", rules)); err == nil {
		return nil
	}
	ipt, err := b.lib()
	if err != nil {
		return err
	}
	for _, r := range rules {
		if ok, _ := ipt.ChainExists(r.Table, r.Chain); !ok {
			continue
		}
		if err := ipt.DeleteIfExists(r.Table, r.Chain, r.Args...); err != nil {
			return fmt.Errorf("iptables: delete %s: %w", r.object(), err)
		}
	}
	return nil
}

// iptRestoreInput is iptables-restore's input that applies op (-A, -D;
// -F, -X for a rule that names only a chain) to each rule, table by table.
func iptRestoreInput(op string, rules []iptRule) []byte {
	var in bytes.Buffer
	for _, t := range []string{"raw", "nat", "filter"} {
		n := 0
		for _, r := range rules {
			if r.Table != t {
				continue
			}
			if n == 0 {
				fmt.Fprintf(&in, "*%s\n", t)
			}
			n++
			fmt.Fprintf(&in, "%s %s", op, r.Chain)
			for _, a := range r.Args {
				in.WriteString(" " + a)
			}
			in.WriteString("\n")
		}
		if n > 0 {
			in.WriteString("COMMIT\n")
		}
	}
	return in.Bytes()
}

// Present implements Firewall: the built-in chains' jumps into ours are in
// one `iptables-save` (a flush of a table takes them out; one run instead
// of one `iptables -C` per jump).
func (b *Iptables) Present(NetRules) (bool, error) {
	out, err := b.run("iptables-save", nil)
	if err != nil {
		return false, err
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		lines[l] = true
	}
	for _, j := range iptJumps() {
		if !lines["-A "+j.Chain+" "+strings.Join(j.Args, " ")] {
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
	if name == "iptables-restore" {
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

// ruleset is everything of s, shared rules first, in the order each chain
// holds it.
func iptRuleset(s Ruleset) []iptRule {
	rules := iptShared()
	for _, nw := range s.Networks {
		rules = append(rules, iptNetworkRules(nw.Rules)...)
	}
	for _, p := range s.Ports {
		rules = append(rules, iptPortRules(p)...)
	}
	return rules
}

// Reload implements Firewall: the jumps into our chains are ensured, then
// one iptables-restore --noflush declares each chain of ours, which
// empties it, and fills it with exactly what s names.
func (b *Iptables) Reload(s Ruleset) (map[string][]string, error) {
	if _, err := b.lib(); err != nil {
		return nil, err
	}
	for _, tc := range iptOwnChains {
		if err := b.ensureChain(tc[0], tc[1]); err != nil {
			return nil, err
		}
	}
	for _, j := range iptJumps() {
		if err := b.ensureJump(j); err != nil {
			return nil, err
		}
	}
	var in bytes.Buffer
	rules := iptRuleset(s)
	for _, t := range []string{"raw", "nat", "filter"} {
		fmt.Fprintf(&in, "*%s\n", t)
		for _, tc := range iptOwnChains {
			if tc[0] == t {
				fmt.Fprintf(&in, ":%s - [0:0]\n", tc[1])
			}
		}
		seen := map[string]bool{}
		for _, r := range rules {
			if r.Table == t && !seen[r.object()] {
				seen[r.object()] = true
				fmt.Fprintf(&in, "-A %s %s\n", r.Chain, strings.Join(r.Args, " "))
			}
		}
		in.WriteString("COMMIT\n")
	}
	if _, err := b.run("iptables-restore", in.Bytes()); err != nil {
		return nil, err
	}
	installed := map[string][]string{}
	for _, nw := range s.Networks {
		installed[nw.Rules.Name] = b.NetworkObjects(nw.Rules)
	}
	return installed, nil
}

// Missing implements Firewall: each chain looked up, and each rule
// checked with `iptables -C`.
func (b *Iptables) Missing(s Ruleset) ([]string, error) {
	if _, err := b.lib(); err != nil {
		return nil, err
	}
	var missing []string
	chains := map[string]bool{}
	check := func(r iptRule) error {
		key := r.Table + "/" + r.Chain
		there, seen := chains[key]
		if !seen {
			var err error
			if there, err = b.ipt.ChainExists(r.Table, r.Chain); err != nil {
				return fmt.Errorf("iptables: look up chain %s: %w", key, err)
			}
			chains[key] = there
			if !there {
				missing = append(missing, "chain "+key)
			}
		}
		if !there {
			return nil
		}
		ok, err := b.ipt.Exists(r.Table, r.Chain, r.Args...)
		if err != nil {
			return fmt.Errorf("iptables: check %s: %w", r.object(), err)
		}
		if !ok {
			missing = append(missing, "rule "+r.object())
		}
		return nil
	}
	for _, j := range iptJumps() {
		if err := check(j.iptRule); err != nil {
			return nil, err
		}
	}
	for _, r := range iptRuleset(s) {
		if err := check(r); err != nil {
			return nil, err
		}
	}
	return missing, nil
}
