package netsetup

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// Chains of the iptables backend, laid out like Docker's so that
// `iptables -t nat -nvL` reads like `docker`'s: NETSHIM in nat is jumped to
// from PREROUTING and OUTPUT for local destinations and holds the DNATs;
// NETSHIM-FORWARD in filter is jumped to first from FORWARD.
const (
	iptChainNAT     = "NETSHIM"
	iptChainForward = "NETSHIM-FORWARD"
	// Docker's two-stage isolation: stage 1 sends traffic leaving a bridge
	// for another interface to stage 2, which drops it if that interface is
	// another bridge of ours.
	iptChainIso1 = "NETSHIM-ISOLATION-STAGE-1"
	iptChainIso2 = "NETSHIM-ISOLATION-STAGE-2"
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
	if len(f) < 3 || (f[0] != "nat" && f[0] != "filter") {
		return iptRule{}, fmt.Errorf("iptables object %q in state: want table chain args", obj)
	}
	return iptRule{Table: f[0], Chain: f[1], Args: f[2:]}, nil
}

// iptShared are the jumps into our chains, shared by every network: put in
// by any network, taken out with the last.
func iptShared() []iptRule {
	return []iptRule{
		{"nat", "PREROUTING", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", iptChainNAT}},
		{"nat", "OUTPUT", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", iptChainNAT}},
		{"filter", "FORWARD", []string{"-j", iptChainForward}},
		{"filter", iptChainForward, []string{"-j", iptChainIso1}},
	}
}

// iptOwnChains are our chains, by table.
var iptOwnChains = [][2]string{{"nat", iptChainNAT}, {"filter", iptChainForward}, {"filter", iptChainIso1}, {"filter", iptChainIso2}}

// iptNetworkRules is the data of a network's rules.
func iptNetworkRules(n NetRules) []iptRule {
	sub, br := n.Subnet.String(), n.Bridge
	out := []iptRule{
		{"filter", iptChainIso1, []string{"-i", br, "!", "-o", br, "-j", iptChainIso2}},
		{"filter", iptChainIso2, []string{"-o", br, "-j", "DROP"}},
	}
	if n.Masquerade {
		out = append(out, iptRule{"nat", "POSTROUTING", []string{"-s", sub, "!", "-o", br, "-j", "MASQUERADE"}})
	}
	if n.Internal {
		return append(out,
			iptRule{"filter", iptChainForward, []string{"-i", br, "!", "-o", br, "-j", "DROP"}},
			iptRule{"filter", iptChainForward, []string{"-o", br, "!", "-i", br, "-j", "DROP"}},
		)
	}
	return append(out,
		// Published ports from the host (127.0.0.1 too) or from a container
		// of this bridge through a host address answer through the host.
		iptRule{"nat", "POSTROUTING", []string{"-o", br, "-m", "addrtype", "--src-type", "LOCAL", "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"}},
		iptRule{"nat", "POSTROUTING", []string{"-s", sub, "-o", br, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"}},
		// Forwarding even when FORWARD's policy is DROP (Docker installed).
		iptRule{"filter", iptChainForward, []string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
		iptRule{"filter", iptChainForward, []string{"-i", br, "-j", "ACCEPT"}},
	)
}

// iptPortRules is the data of a container's published ports.
func iptPortRules(p PortRules) []iptRule {
	ip := netip.AddrFrom4(p.IP).String()
	var out []iptRule
	for _, port := range p.Ports {
		args := []string{"-p", port.Proto}
		if port.HostIP.IsValid() {
			args = append(args, "-d", port.HostIP.String()+"/32")
		}
		args = append(args, "-m", port.Proto, "--dport", strconv.Itoa(port.HostPort), "-j", "DNAT",
			"--to-destination", ip+":"+strconv.Itoa(port.ContainerPort))
		out = append(out,
			iptRule{"nat", iptChainNAT, args},
			iptRule{"filter", iptChainForward, []string{"-d", ip + "/32", "-o", p.Bridge, "-p", port.Proto, "-m", port.Proto,
				"--dport", strconv.Itoa(port.ContainerPort), "-j", "ACCEPT"}},
		)
	}
	return out
}

// Iptables is the backend for hosts that manage their firewall with
// iptables: rules through github.com/coreos/go-iptables. Each rule is an
// iptables run, which is this backend's cost.
type Iptables struct {
	ipt *iptables.IPTables
}

func newIptables() (*Iptables, error) {
	ipt, err := iptables.New()
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	return &Iptables{ipt: ipt}, nil
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

// ensureShared creates our chains and the jumps to them, in the filter
// table only when filterOnly (coexistence with the nftables backend).
func (b *Iptables) ensureShared(filterOnly bool) error {
	for _, tc := range iptOwnChains {
		if filterOnly && tc[0] != "filter" {
			continue
		}
		if err := b.ensureChain(tc[0], tc[1]); err != nil {
			return err
		}
	}
	for _, r := range iptShared() {
		if filterOnly && r.Table != "filter" {
			continue
		}
		var err error
		if r.Chain == "FORWARD" || r.Chain == iptChainForward {
			err = b.ipt.InsertUnique(r.Table, r.Chain, 1, r.Args...)
		} else {
			err = b.ipt.AppendUnique(r.Table, r.Chain, r.Args...)
		}
		if err != nil {
			return fmt.Errorf("iptables: add %s: %w", r.object(), err)
		}
	}
	return nil
}

// EnsureNetwork implements Firewall.
func (b *Iptables) EnsureNetwork(n NetRules, prev []string) ([]string, error) {
	if err := b.ensureShared(false); err != nil {
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

// RemoveNetwork implements Firewall.
func (b *Iptables) RemoveNetwork(installed []string, last bool) error {
	if err := b.deleteObjects(installed, nil); err != nil {
		return err
	}
	if !last {
		return nil
	}
	return b.removeShared(false)
}

// removeShared removes our chains and the jumps to them.
func (b *Iptables) removeShared(filterOnly bool) error {
	for _, r := range iptShared() {
		if filterOnly && r.Table != "filter" {
			continue
		}
		if err := b.ipt.DeleteIfExists(r.Table, r.Chain, r.Args...); err != nil {
			return fmt.Errorf("iptables: delete %s: %w", r.object(), err)
		}
	}
	for _, tc := range iptOwnChains {
		if filterOnly && tc[0] != "filter" {
			continue
		}
		ok, err := b.ipt.ChainExists(tc[0], tc[1])
		if err == nil && ok {
			err = b.ipt.ClearAndDeleteChain(tc[0], tc[1])
		}
		if err != nil {
			return fmt.Errorf("iptables: delete chain %s/%s: %w", tc[0], tc[1], err)
		}
	}
	return nil
}

// AddPorts implements Firewall.
func (b *Iptables) AddPorts(p PortRules) error {
	if len(p.Ports) == 0 {
		return nil
	}
	// Our chains and the jumps to them came with the network's rules,
	// which setup installs first: every iptables run reads the whole
	// ruleset, so checking them again would cost per container.
	for _, r := range iptPortRules(p) {
		if err := b.ipt.AppendUnique(r.Table, r.Chain, r.Args...); err != nil {
			return fmt.Errorf("iptables: add %s: %w", r.object(), err)
		}
	}
	return nil
}

// RemovePorts implements Firewall.
func (b *Iptables) RemovePorts(p PortRules) error {
	for _, r := range iptPortRules(p) {
		if ok, _ := b.ipt.ChainExists(r.Table, r.Chain); !ok {
			continue
		}
		if err := b.ipt.DeleteIfExists(r.Table, r.Chain, r.Args...); err != nil {
			return fmt.Errorf("iptables: delete %s: %w", r.object(), err)
		}
	}
	return nil
}
