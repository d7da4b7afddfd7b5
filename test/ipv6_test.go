package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netshim/netshim/internal/sandbox"
)

// uplink6 gives the sandbox's uplink IPv6: 2001:db8:1::1 in the sandbox,
// 2001:db8:1::2 upstream, with 2001:db8:ff::1 on the upstream's lo routed
// through it. Addresses go without DAD, so they are usable at once.
func uplink6(t *testing.T) string {
	up := sandbox.Uplink(t)
	for _, c := range [][]string{
		{"addr", "add", "2001:db8:1::1/64", "dev", "uplink", "nodad"},
		{"-n", "up", "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad"},
		{"-n", "up", "addr", "add", "2001:db8:ff::1/128", "dev", "lo"},
		{"route", "add", "2001:db8:ff::/64", "via", "2001:db8:1::2"},
	} {
		sandbox.Run(t, "ip", c...)
	}
	return up
}

// masqueradedFrom has c connect to the upstream's [2001:db8:ff::1]:port
// and returns the source address the upstream saw.
func masqueradedFrom(t *testing.T, c *container, upNS string, port string) string {
	t.Helper()
	l := listenIn(t, upNS, "[2001:db8:ff::1]:"+port)
	go c.exec("sh", "-c", "echo hi | nc 2001:db8:ff::1 "+port)
	src, err := acceptRemote(l, 5*time.Second)
	if err != nil {
		t.Fatalf("%s to the upstream over IPv6: %v", c.id, err)
	}
	return src
}

// A dual-stack user network: addresses of both families, each container
// reaching the other over IPv6, the upstream through masquerade; a network
// without IPv6 keeps IPv6 off on eth0 and ::1 on lo; teardown leaves no
// IPv6 address, route or rule.
func TestDualStackNftables(t *testing.T) { testDualStack(t, "nftables") }

func TestDualStackIptables(t *testing.T) { testDualStack(t, "iptables") }

func testDualStack(t *testing.T, backend string) {
	{
		{
			if !sandbox.Enter(t) {
				return
			}
			up := uplink6(t)
			h := newHost(t, `firewall = "`+backend+`"
data_dir = "`+filepath.Join(t.TempDir(), "data")+`"
[networks.v6]
subnet = "10.60.0.0/24"
ipv6 = true
subnet6 = "fd00:60::/64"
[networks.v4]
subnet = "10.40.0.0/24"
`)
			a := h.newBundle(uniqueID(t, "a"), sleeper, "--name", "a", "--network", "v6").mustStart()
			b := h.newBundle(uniqueID(t, "b"), sleeper, "--name", "b", "--network", "v6", "--ip6", "fd00:60::99").mustStart()
			if out := a.mustExec("ip", "-o", "addr", "show", "eth0"); !strings.Contains(out, "10.60.0.2/24") || !strings.Contains(out, "fd00:60::2/64") || !strings.Contains(out, "fe80::") {
				t.Errorf("a's eth0:\n%s", out)
			}
			if out := a.mustExec("ip", "-6", "route", "show", "default"); !strings.Contains(out, "via fd00:60::1 dev eth0") {
				t.Errorf("a's IPv6 default route: %q", out)
			}
			// The bridge's link-local address is usable at once (no DAD):
			// while tentative, the host would not resolve the containers'
			// addresses, and what it forwards to them would wait.
			var v6net struct{ Bridge string }
			if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "v6")), &v6net); err != nil {
				t.Fatal(err)
			}
			if out := sandbox.Run(t, "ip", "-6", "addr", "show", "dev", v6net.Bridge); !strings.Contains(out, "scope link") || strings.Contains(out, "tentative") {
				t.Errorf("the bridge's IPv6 addresses:\n%s", out)
			}
			if out := b.mustExec("cat", "/etc/hosts"); !strings.Contains(out, "fd00:60::99\t") || !strings.Contains(out, "::1\tlocalhost") {
				t.Errorf("b's /etc/hosts:\n%s", out)
			}
			// Each reaches the other over IPv6, and the gateway.
			a.mustExec("ping", "-6", "-c1", "-W2", "fd00:60::99")
			b.mustExec("ping", "-6", "-c1", "-W2", "fd00:60::2")
			b.mustExec("ping", "-6", "-c1", "-W2", "fd00:60::1")
			// By name: AAAA, from the responder on either gateway, and PTR
			// in ip6.arpa.
			a.mustExec("ping", "-6", "-c1", "-W2", "b")
			if out := a.mustExec("nslookup", "-type=aaaa", "b"); !strings.Contains(out, "fd00:60::99") {
				t.Errorf("AAAA of b:\n%s", out)
			}
			if out := b.mustExec("nslookup", "-type=aaaa", "a", "fd00:60::1"); !strings.Contains(out, "fd00:60::2") {
				t.Errorf("AAAA of a from the responder's IPv6 address:\n%s", out)
			}
			if out := a.mustExec("nslookup", "fd00:60::99"); !strings.Contains(out, "name = b") {
				t.Errorf("PTR of b's IPv6 address:\n%s", out)
			}
			// Out through masquerade: the upstream has no route back to
			// fd00:60::/64, and sees the uplink's address.
			if src := masqueradedFrom(t, a, up, "8006"); src != "2001:db8:1::1" {
				t.Errorf("upstream saw %s, want the sandbox's uplink 2001:db8:1::1", src)
			}
			if out := sandbox.Run(t, "sysctl", "-n", "net.ipv6.conf.all.forwarding"); strings.TrimSpace(out) != "1" {
				t.Errorf("IPv6 forwarding: %s", out)
			}

			var ep map[string]any
			if err := json.Unmarshal([]byte(h.mustNetshim("inspect", "b")), &ep); err != nil || ep["GlobalIPv6Address"] != "fd00:60::99" ||
				ep["GlobalIPv6PrefixLen"] != float64(64) || ep["IPv6Gateway"] != "fd00:60::1" || ep["IPAddress"] != "10.60.0.3" {
				t.Errorf("inspect b: %v %v", ep, err)
			}
			var info struct {
				EnableIPv6        bool
				Subnet6, Gateway6 string
				Containers        map[string]struct{ IPv4Address, IPv6Address string }
			}
			if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "v6")), &info); err != nil || !info.EnableIPv6 ||
				info.Subnet6 != "fd00:60::/64" || info.Gateway6 != "fd00:60::1" || info.Containers[a.id].IPv6Address != "fd00:60::2/64" ||
				info.Containers[a.id].IPv4Address != "10.60.0.2/24" {
				t.Errorf("network inspect v6: %+v %v", info, err)
			}
			if out := h.mustNetshim("ps"); !strings.Contains(out, "10.60.0.3/24,fd00:60::99/64") {
				t.Errorf("ps:\n%s", out)
			}

			// An address taken, or outside the subnet, is refused with one
			// line naming it.
			for _, bad := range []struct{ ip6, want string }{
				{"fd00:60::99", "annotation netshim/ip6"},
				{"fd00:61::5", "outside subnet fd00:60::/64"},
			} {
				c := h.newBundle(uniqueID(t, "bad"), sleeper, "--network", "v6", "--ip6", bad.ip6)
				if err := c.start(); err == nil || !strings.Contains(err.Error(), bad.want) {
					t.Errorf("--ip6 %s: %v", bad.ip6, err)
				}
			}

			testPorts6(t, h, up)

			// IPv4 only: no global IPv6 on eth0, ::1 on lo and in /etc/hosts.
			v4 := h.newBundle(uniqueID(t, "v4"), sleeper, "--network", "v4").mustStart()
			if out := v4.mustExec("cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"); strings.TrimSpace(out) != "1" {
				t.Errorf("IPv6 on eth0 of an IPv4-only network: %s", out)
			}
			if out := v4.mustExec("ip", "-6", "addr", "show", "dev", "eth0"); strings.TrimSpace(out) != "" {
				t.Errorf("IPv6 addresses on eth0 of an IPv4-only network:\n%s", out)
			}
			if out := v4.mustExec("ip", "-6", "addr", "show", "dev", "lo"); !strings.Contains(out, "::1/128") {
				t.Errorf("lo lacks ::1:\n%s", out)
			}
			if out := v4.mustExec("cat", "/etc/hosts"); !strings.Contains(out, "::1\tlocalhost") {
				t.Errorf("v4's /etc/hosts:\n%s", out)
			}
			// Connected live to the dual-stack network with --ip6: its new
			// interface has that address and answers over IPv6.
			h.mustNetshim("network", "connect", "--ip6", "fd00:60::77", "v6", v4.id)
			if out := v4.mustExec("ip", "-o", "-6", "addr", "show", "dev", "eth1", "scope", "global"); !strings.Contains(out, "fd00:60::77/64") {
				t.Errorf("v4's eth1 after connect --ip6:\n%s", out)
			}
			b.mustExec("ping", "-6", "-c1", "-W2", "fd00:60::77")
			h.mustNetshim("network", "disconnect", "v6", v4.id)

			// A created network takes a /64 of the host's ULA /48.
			id := strings.TrimSpace(h.mustNetshim("network", "create", "--ipv6", "auto6"))
			if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "auto6")), &info); err != nil || !info.EnableIPv6 ||
				!strings.HasPrefix(info.Subnet6, "fd") || !strings.HasSuffix(info.Subnet6, "::/64") {
				t.Errorf("network inspect auto6: %+v %v", info, err)
			}
			if out := sandbox.Run(t, "ip", "-o", "-6", "addr", "show", "br-"+id[:12]); !strings.Contains(out, info.Gateway6+"/64") {
				t.Errorf("auto6's bridge lacks %s:\n%s", info.Gateway6, out)
			}
			// One --subnet per family, as Docker takes them.
			h.mustNetshim("network", "create", "--ipv6", "--subnet", "10.66.0.0/24", "--subnet", "fd00:66::/64", "--gateway", "fd00:66::fe", "both6")
			var both struct {
				EnableIPv6                         bool
				Subnet, Gateway, Subnet6, Gateway6 string
			}
			if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "both6")), &both); err != nil || !both.EnableIPv6 ||
				both.Subnet != "10.66.0.0/24" || both.Gateway != "10.66.0.1" || both.Subnet6 != "fd00:66::/64" || both.Gateway6 != "fd00:66::fe" {
				t.Errorf("network inspect both6: %+v %v", both, err)
			}
			h.mustNetshim("network", "rm", "both6")
			if _, errOut, err := h.netshim("", "network", "create", "--ipv6", "--subnet", "fd00:60::/56", "clash6"); err == nil || !strings.Contains(errOut, "overlaps network v6") {
				t.Errorf("overlapping IPv6 subnet: %v %s", err, errOut)
			}
			if _, errOut, err := h.netshim("", "network", "create", "--subnet", "fd00:70::/64", "no6"); err == nil || !strings.Contains(errOut, "needs --ipv6") {
				t.Errorf("IPv6 subnet without --ipv6: %v %s", err, errOut)
			}
			auto := h.newBundle(uniqueID(t, "auto"), sleeper, "--network", "auto6").mustStart()
			if out := auto.mustExec("ip", "-o", "-6", "addr", "show", "eth0", "scope", "global"); !strings.Contains(out, strings.TrimSuffix(info.Subnet6, "/64")+"2/64") {
				t.Errorf("auto's eth0:\n%s", out)
			}
			// Networks do not reach each other over IPv6 either; the probe
			// proves the ping reached the host.
			p := &probes{t: t, family: "ip6"}
			p.add("auto6-to-v6", "pre", fmt.Sprintf(`iifname %q ip6 daddr fd00:60::2`, "br-"+id[:12]))
			p.install()
			if out, err := auto.exec("ping", "-6", "-c1", "-W1", "fd00:60::2"); err == nil {
				t.Errorf("auto6 reached v6:\n%s", out)
			} else if p.count("auto6-to-v6") == 0 {
				t.Error("auto6 -> v6: the probe never reached the host")
			}
			sandbox.Run(t, "nft", "delete", "table", "ip6", "probe")

			for _, c := range []*container{a, b, v4, auto} {
				c.stop()
			}
			waitReclaimers(t)
			if out := sandbox.Run(t, "ip", "-6", "neigh", "show", "nud", "permanent"); strings.TrimSpace(out) != "" {
				t.Errorf("neighbour entries left:\n%s", out)
			}
			// The bridge keeps its address and its subnet's route, as an
			// IPv4 bridge does; nothing else of fd00:60::/64 is routed.
			for _, l := range strings.Split(sandbox.Run(t, "ip", "-6", "route", "show"), "\n") {
				if strings.Contains(l, "fd00:60") && !strings.HasPrefix(l, "fd00:60::/64 dev "+v6net.Bridge+" ") {
					t.Errorf("route left: %s", l)
				}
			}
			if out := sandbox.Run(t, "sh", "-c", "nft list ruleset; ip6tables-save 2>/dev/null"); strings.Contains(out, "fd00:60") {
				t.Errorf("IPv6 rules left:\n%s", out)
			}
		}
	}
}

// testPorts6 publishes ports of containers on the dual-stack network v6:
// with no host address on both families, one port for both with -P, on one
// family with 0.0.0.0, [::] or an IPv6 host address; conflicts on either
// family, [::1], and an IPv6 host address on an IPv4-only network refused.
func testPorts6(t *testing.T, h *host, up string) {
	t.Helper()
	web := h.webBundle("web6", "--network", "v6", "-p", "8080:80", "-p", "[2001:db8:1::1]:8081:80", "-p", "0.0.0.0:8082:80").mustStart().waitHTTP()
	answers := func(from, addr string) bool {
		return strings.Contains(fetch(from, addr, 2*time.Second).body, "hello from web6")
	}
	for _, c := range []struct {
		from, addr string
		want       bool
	}{
		{up, "198.51.100.1:8080", true}, {up, "[2001:db8:1::1]:8080", true}, // both families
		{"", "[2001:db8:1::1]:8080", true},                                   // from the host, not on [::1]
		{up, "[2001:db8:1::1]:8081", true}, {up, "198.51.100.1:8081", false}, // IPv6 only
		{up, "198.51.100.1:8082", true}, {up, "[2001:db8:1::1]:8082", false}, // IPv4 only
	} {
		if got := answers(c.from, c.addr); got != c.want {
			t.Errorf("%s from %q: answered %v, want %v", c.addr, c.from, got, c.want)
		}
	}
	if out := h.mustNetshim("port", "web6"); out != "80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8080\n80/tcp -> [2001:db8:1::1]:8081\n80/tcp -> 0.0.0.0:8082\n" {
		t.Errorf("port web6:\n%s", out)
	}
	// [::]:8082 is free: 0.0.0.0:8082 holds IPv4 only.
	other := h.webBundle("other6", "--network", "v6", "-p", "[::]:8082:80").mustStart().waitHTTP()
	if body := fetch(up, "[2001:db8:1::1]:8082", 2*time.Second).body; !strings.Contains(body, "hello from other6") {
		t.Errorf("[::]:8082 reached %q", body)
	}
	// -P: one port, free in both families, answering on both.
	all := h.webBundle("all6", "--network", "v6", "--expose", "80", "-P").mustStart().waitHTTP()
	lines := strings.Split(strings.TrimSpace(h.mustNetshim("port", "all6", "80")), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "0.0.0.0:") || !strings.HasPrefix(lines[1], "[::]:") ||
		strings.TrimPrefix(lines[0], "0.0.0.0:") != strings.TrimPrefix(lines[1], "[::]:") {
		t.Fatalf("port all6 80: %q", lines)
	}
	port := strings.TrimPrefix(lines[0], "0.0.0.0:")
	for _, addr := range []string{"198.51.100.1:" + port, "[2001:db8:1::1]:" + port} {
		if body := fetch(up, addr, 2*time.Second).body; !strings.Contains(body, "hello from all6") {
			t.Errorf("-P port %s: %q", addr, body)
		}
	}
	// Refused, with one line naming the cause.
	for _, bad := range []struct{ network, publish, want string }{
		{"v6", "[::]:8080:80", "port 8080/tcp is already allocated by web6"},
		{"v6", "0.0.0.0:8080:80", "port 8080/tcp is already allocated by web6"},
		{"v6", "[2001:db8:1::1]:8081:80", "port 8081/tcp is already allocated by web6"},
		{"v6", "[::1]:8083:80", "cannot publish on [::1]"},
		{"v4", "[2001:db8:1::1]:8084:80", "network v4 has no IPv6"},
	} {
		// `netshim bundle` refuses what it can tell; the hook the rest.
		c := h.newBundle(uniqueID(t, "bad"), sleeper, "--network", bad.network)
		_, errOut, err := h.netshim("", "bundle", c.bundle, "--network", bad.network, "-p", bad.publish)
		if err == nil {
			err = c.start()
		} else {
			err = errors.New(errOut)
		}
		if err == nil || !strings.Contains(err.Error(), bad.want) || strings.Count(strings.TrimSpace(err.Error()), "\n") > 0 {
			t.Errorf("-p %s on %s: %v", bad.publish, bad.network, err)
		}
	}
	for _, c := range []*container{web, other, all} {
		c.stop()
	}
}

// gc covers IPv6 state: a dual-stack container whose process died without
// a poststop gives back both its addresses and, as its network's last,
// the network's IPv6 rules; the network's responder is stopped. And a
// setup killed after it reserved both addresses is undone by the next
// hook, for both families.
func TestDualStackGC(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	sandbox.Uplink(t)
	h := newHost(t, `[networks.d]
subnet = "10.70.0.0/24"
ipv6 = true
subnet6 = "fd00:70::/64"
`)
	ann := map[string]string{"netshim/network": "d"}
	a := h.newProc("a", ann)
	a.mustSetup()
	if out := a.mustIn("ip", "-o", "-6", "addr", "show", "eth0", "scope", "global"); !strings.Contains(out, "fd00:70::2/64") {
		t.Fatalf("a's eth0:\n%s", out)
	}
	addrs, _ := filepath.Glob(filepath.Join(h.stateDir, "networks", "d.addrs", "*"))
	if len(addrs) != 2 {
		t.Fatalf("allocations of a: %v", addrs)
	}
	a.cmd.Process.Kill()
	a.cmd.Wait()
	if out := h.mustNetshim("gc"); !strings.Contains(out, "container a (a): its process is gone") {
		t.Errorf("gc:\n%s", out)
	}
	if out := sandbox.Run(t, "nft", "list", "ruleset"); strings.Contains(out, "fd00:70") || strings.Contains(out, "netshim") {
		t.Errorf("rules left after gc:\n%s", out)
	}
	waitFor(2*time.Second, func() bool { return len(responders()) == 0 })
	if r := responders(); len(r) != 0 {
		t.Errorf("responder left: %v", r)
	}

	// Killed after its record (both addresses reserved) was written.
	b := h.newProc("b", ann)
	if !b.hookWithFault("createRuntime", "creating", "setup:record") {
		t.Fatal("the fault point was not reached")
	}
	c := h.newProc("c", ann)
	c.mustSetup()
	if out := c.mustIn("ip", "-o", "addr", "show", "eth0"); !strings.Contains(out, "10.70.0.2/24") || !strings.Contains(out, "fd00:70::2/64") {
		t.Errorf("c did not get the addresses b's killed setup held:\n%s", out)
	}
	// The network's state lost: gc rebuilds it from c's record, IPv6
	// subnet and rules included, so c's teardown removes them.
	if err := os.Remove(filepath.Join(h.stateDir, "networks", "d.json")); err != nil {
		t.Fatal(err)
	}
	if out := h.mustNetshim("gc"); !strings.Contains(out, "state of network d, rebuilt from records") {
		t.Errorf("gc after the network's state was lost:\n%s", out)
	}
	if out := sandbox.Run(t, "cat", filepath.Join(h.stateDir, "networks", "d.json")); !strings.Contains(out, `"subnet6":"fd00:70::/64"`) || !strings.Contains(out, "ip6/fwd-d") {
		t.Errorf("rebuilt state of d:\n%s", out)
	}
	c.mustTeardown()
	assertClean(t, h)
}

// IPv6 turned on for a network in the config while containers are
// attached is refused (their network's rules know nothing of IPv6), with
// one line and nothing left of the refused setup; once they are gone the
// next container gets both families. Turned off again, the network
// forgets its IPv6 subnet.
func TestDualStackTurnedOn(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	sandbox.Uplink(t)
	h := newHost(t, "[networks.d]\nsubnet = \"10.71.0.0/24\"\n")
	ann := map[string]string{"netshim/network": "d"}
	a := h.newProc("a", ann)
	a.mustSetup()
	writeFile(t, h.config, "[networks.d]\nsubnet = \"10.71.0.0/24\"\nipv6 = true\nsubnet6 = \"fd00:71::/64\"\n")
	b := h.newProc("b", ann)
	if out, err := b.hook("createRuntime", "creating"); err == nil || !strings.Contains(out, "network d: IPv6 turned on while containers are attached; stop them first") {
		t.Errorf("IPv6 turned on under a running container: %v %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(h.stateDir, "containers", "b.json")); err == nil {
		t.Error("the refused setup left a record")
	}
	a.mustTeardown()
	b.mustSetup()
	if out := b.mustIn("ip", "-o", "addr", "show", "eth0"); !strings.Contains(out, "10.71.0.2/24") || !strings.Contains(out, "fd00:71::2/64") {
		t.Errorf("b's eth0:\n%s", out)
	}
	b.mustTeardown()
	writeFile(t, h.config, "[networks.d]\nsubnet = \"10.71.0.0/24\"\n")
	c := h.newProc("c", ann)
	c.mustSetup()
	if out := sandbox.Run(t, "cat", filepath.Join(h.stateDir, "networks", "d.json")); strings.Contains(out, "fd00:71") {
		t.Errorf("the network kept its IPv6 subnet:\n%s", out)
	}
	if out := sandbox.Run(t, "nft", "list", "ruleset"); strings.Contains(out, "ip6") {
		t.Errorf("IPv6 rules for an IPv4-only network:\n%s", out)
	}
	c.mustTeardown()
	assertClean(t, h)
}

// On a dual-stack network the multicast that only costs goes no further
// than the host: a container's multicast listener reports reach the host
// (a probe counts them) and no other container (a counter in that
// container's netns sees none of them), while neighbour discovery between
// containers still floods and works. Nor does a container send router
// solicitations (nothing advertises), or run duplicate address detection
// for its link-local address, which is usable at once.
func TestDualStackMulticastNftables(t *testing.T) { testDualStackMulticast(t, "nftables") }

func TestDualStackMulticastIptables(t *testing.T) { testDualStackMulticast(t, "iptables") }

func testDualStackMulticast(t *testing.T, backend string) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, fmt.Sprintf("firewall = %q\n[bridge]\nipv6 = true\nfixed_cidr_v6 = \"fd00:b0::/64\"\n", backend))
	b := h.newProc("mc-b", nil)
	b.mustSetup()
	// a is the network's second container: 172.17.0.3, and its MAC is
	// made from that address.
	const aMAC = "02:42:ac:11:00:03"
	mld := "icmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report }"
	seen := exec.Command("nsenter", "-t", fmt.Sprint(b.pid), "-n", "--", "nft", "-f", "-")
	seen.Stdin = strings.NewReader(fmt.Sprintf(`table ip6 seen {
	chain pre {
		type filter hook prerouting priority -400; policy accept;
		ether saddr %[1]s %[2]s counter comment "mld"
		ether saddr %[1]s icmpv6 type nd-neighbor-solicit counter comment "ns"
	}
}
`, aMAC, mld))
	if out, err := seen.CombinedOutput(); err != nil {
		t.Fatalf("counters in mc-b: %v\n%s", err, out)
	}
	seenIn := func(name string) int {
		out := b.mustIn("nft", "list", "table", "ip6", "seen")
		m := regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "` + name + `"`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no counter %q in mc-b:\n%s", name, out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	p := &probes{t: t, family: "ip6"}
	p.add("mld", "pre", fmt.Sprintf(`iifname "netshim0" ether saddr %s %s`, aMAC, mld))
	p.add("rs", "pre", fmt.Sprintf(`iifname "netshim0" ether saddr %s icmpv6 type nd-router-solicit`, aMAC))
	p.install()

	a := h.newProc("mc-a", nil)
	a.mustSetup()
	if out := a.mustIn("ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "link/ether "+aMAC+" ") {
		t.Fatalf("mc-a's eth0, want MAC %s:\n%s", aMAC, out)
	}
	if out := a.mustIn("ip", "-6", "addr", "show", "dev", "eth0", "scope", "link"); !strings.Contains(out, "fe80::") || strings.Contains(out, "tentative") {
		t.Errorf("mc-a's link-local address, right after setup:\n%s", out)
	}
	// The reports of joining its groups, and their repeats within a
	// second or two.
	eventually(t, 5*time.Second, "mc-a's multicast listener reports reach the host", func() bool { return p.count("mld") >= 2 })
	time.Sleep(2 * time.Second)
	if n := seenIn("mld"); n != 0 {
		t.Errorf("mc-b received %d of mc-a's multicast listener reports (the host saw %d)", n, p.count("mld"))
	} else {
		t.Logf("mc-a's multicast listener reports: blocked (%d seen at the host, none in mc-b)", p.count("mld"))
	}
	if n := p.count("rs"); n != 0 {
		t.Errorf("mc-a sent %d router solicitations", n)
	}
	// Allowed: neighbour discovery, flooded as before.
	b6 := b.mustIn("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
	if !strings.Contains(b6, "fd00:b0::2/64") {
		t.Fatalf("mc-b's address:\n%s", b6)
	}
	a.mustIn("ping", "-6", "-c", "1", "-W", "2", "fd00:b0::2")
	if n := seenIn("ns"); n == 0 {
		t.Error("mc-b saw none of mc-a's neighbour solicitations, yet answered its ping")
	}
	a.mustTeardown()
	b.mustTeardown()
	sandbox.Run(t, "nft", "delete", "table", "ip6", "probe") // it names netshim0
	assertClean(t, h)
}
