package engine

import (
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/firewall"
	"github.com/netshim/netshim/netsetup"
)

// Check is one line of `netshim doctor`.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

func sysctlValue(name string) string {
	data, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// Doctor inspects the host for what netshim needs and what gets in its way.
func (e *Engine) Doctor() []Check {
	var out []Check
	fwd := sysctlValue("net.ipv4.ip_forward")
	out = append(out, Check{"ip_forward", true, map[bool]string{true: "net.ipv4.ip_forward = 1",
		false: "net.ipv4.ip_forward = " + fwd + " (netshim sets it to 1 at the first bridge setup)"}[fwd == "1"]})
	fwd6 := sysctlValue("net.ipv6.conf.all.forwarding")
	switch {
	case fwd6 == "":
		out = append(out, Check{"ipv6 forwarding", true, "the kernel has no IPv6: dual-stack networks cannot be used"})
	case fwd6 == "1":
		out = append(out, Check{"ipv6 forwarding", true, "net.ipv6.conf.all.forwarding = 1 (host interfaces take router advertisements only where accept_ra = 2)"})
	default:
		out = append(out, Check{"ipv6 forwarding", true, "net.ipv6.conf.all.forwarding = " + fwd6 + " (netshim sets it to 1 at a dual-stack network's first setup, as Docker does)"})
	}
	brnf := sysctlValue("net.bridge.bridge-nf-call-iptables")
	switch brnf {
	case "":
		out = append(out, Check{"bridge netfilter", true, "br_netfilter is not active: bridged traffic skips the ip firewall hooks"})
	default:
		out = append(out, Check{"bridge netfilter", true, "net.bridge.bridge-nf-call-iptables = " + brnf +
			" (bridged traffic goes through the ip firewall hooks; netshim sets hairpin on its ports for this)"})
	}
	c, err := nftables.New()
	if err == nil {
		_, err = c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	}
	if err != nil {
		out = append(out, Check{"nftables backend", false, "netlink to nf_tables failed: " + err.Error()})
	} else {
		detail := "works (netlink to nf_tables)"
		if ch, err := c.ListChain(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "filter"}, "FORWARD"); err == nil && ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
			detail += "; iptables' FORWARD policy is DROP: netshim adds per-network accepts there"
		}
		out = append(out, Check{"nftables backend", true, detail})
	}
	if path, err := exec.LookPath("iptables"); err != nil {
		out = append(out, Check{"iptables backend", false, "iptables is not installed (apt-get install iptables)"})
	} else if b, err := exec.Command(path, "-w", "-t", "nat", "-S", "POSTROUTING").CombinedOutput(); err != nil {
		out = append(out, Check{"iptables backend", false, "iptables -t nat fails: " + strings.TrimSpace(string(b))})
	} else {
		ver, _ := exec.Command(path, "--version").Output()
		out = append(out, Check{"iptables backend", true, "works (" + strings.TrimSpace(string(ver)) + ")"})
	}
	if b, err := exec.Command("iptables", "-w", "-S", "FORWARD").Output(); err == nil {
		policy := strings.SplitN(string(b), "\n", 2)[0]
		out = append(out, Check{"FORWARD policy", true, strings.TrimPrefix(policy, "-P FORWARD ")})
	}
	out = append(out, Check{"firewall in use", true, e.Config.Firewall})
	out = append(out, e.firewallCheck())
	out = append(out, e.clusterChecks()...)
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return append(out, Check{"host routes", false, err.Error()})
	}
	defer h.Close()
	nets, err := e.UserNetworks()
	if err != nil {
		return append(out, Check{"networks", false, err.Error()})
	}
	bridges := []string{e.Config.Bridge.Bridge}
	// Each network's subnets, as configured or as chosen at first use.
	var subnets []struct {
		name string
		p    netip.Prefix
	}
	for _, n := range append([]config.Network{e.Config.Bridge}, nets...) {
		bridges = append(bridges, n.Bridge)
		sub, sub6 := n.Subnet, n.Subnet6
		if s, err := e.Store.GetNet(n.Name); err == nil && s != nil {
			sub, sub6 = cmp.Or(sub, s.Subnet), cmp.Or(sub6, s.Subnet6)
		}
		for _, p := range []netip.Prefix{sub, sub6} {
			if p.IsValid() {
				subnets = append(subnets, struct {
					name string
					p    netip.Prefix
				}{n.Name, p})
			}
		}
	}
	host, err := netsetup.HostPrefixes(h, unix.AF_INET, bridges...)
	if err == nil {
		var host6 []netip.Prefix
		host6, err = netsetup.HostPrefixes(h, unix.AF_INET6, bridges...)
		host = append(host, host6...)
	}
	if err != nil {
		return append(out, Check{"host routes", false, err.Error()})
	}
	clash := false
	for _, s := range subnets {
		name, p := s.name, s.p
		for _, hp := range host {
			if hp.Overlaps(p) {
				clash = true
				out = append(out, Check{"subnet " + name, false, fmt.Sprintf("%s collides with %s, an address or route of the host", p, hp)})
			}
		}
	}
	if !clash {
		out = append(out, Check{"subnets", true, fmt.Sprintf("%d network subnets, none collides with a host address or route", len(subnets))})
	}
	return out
}

// firewallCheck compares the firewall with what the state says is
// installed.
func (e *Engine) firewallCheck() Check {
	const name = "firewall rules"
	sets, _, err := e.recordedRules()
	if err != nil {
		return Check{name, false, err.Error()}
	}
	var missing []string
	networks := 0
	for backend, rs := range sets {
		fw, err := firewall.New(backend)
		if err != nil {
			return Check{name, false, err.Error()}
		}
		m, err := fw.Missing(*rs)
		if err != nil {
			return Check{name, false, err.Error()}
		}
		missing = append(missing, m...)
		networks += len(rs.Networks)
	}
	if len(missing) == 0 {
		return Check{name, true, fmt.Sprintf("every rule of the %d networks in use and of their published ports is in place", networks)}
	}
	sort.Strings(missing)
	more := ""
	if len(missing) > 3 {
		more = fmt.Sprintf(" and %d more", len(missing)-3)
		missing = missing[:3]
	}
	return Check{name, false, "missing: " + strings.Join(missing, "; ") + more +
		" (the host's firewall was flushed or reloaded since): run `netshim reload`"}
}
