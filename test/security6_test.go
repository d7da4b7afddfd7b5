package test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netshim/netshim/internal/sandbox"
)

func TestSecurity6Nftables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testSecurity6(t, "nftables")
}

func TestSecurity6Iptables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testSecurity6(t, "iptables")
}

// testSecurity6 is the attacker matrix over IPv6, on dual-stack networks of
// every gateway mode, internal and icc = false: what a LAN neighbour, a
// container of another network, a container of the same network and the
// host can and cannot reach; then the same after a flush of every rule and
// `netshim reload`, and after a flush of the IPv6 rules alone and the next
// container's start. The default network takes its IPv6 addresses from
// fixed_cidr_v6.
func testSecurity6(t *testing.T, backend string) {
	up := uplink6(t)
	sandbox.Run(t, "ip", "-n", "up", "-6", "route", "add", "fd00::/8", "via", "2001:db8:1::1")
	h := newHost(t, fmt.Sprintf(`firewall = %q
data_dir = %q
[bridge]
ipv6 = true
fixed_cidr_v6 = "fd00:dead:beef::/64"
[networks.unprot6]
subnet = "198.18.1.0/24"
ipv6 = true
subnet6 = "fd00:61::/64"
gateway_mode = "nat-unprotected"
[networks.routed6]
subnet = "198.18.2.0/24"
ipv6 = true
subnet6 = "fd00:62::/64"
gateway_mode = "routed"
[networks.iso6]
subnet = "198.18.3.0/24"
ipv6 = true
subnet6 = "fd00:63::/64"
gateway_mode = "isolated"
[networks.int6]
subnet = "198.18.4.0/24"
ipv6 = true
subnet6 = "fd00:64::/64"
internal = true
[networks.icc6]
subnet = "198.18.5.0/24"
ipv6 = true
subnet6 = "fd00:65::/64"
icc = false
`, backend, filepath.Join(t.TempDir(), "data")))
	nat := h.secWeb("natweb6", "-p", "8080:80").mustStart().waitHTTP()
	unprot := h.secWeb("unprotweb6", "--network", "unprot6").mustStart().waitHTTP()
	routed := h.secWeb("routedweb6", "--network", "routed6", "-p", "80").mustStart().waitHTTP()
	iso := h.secWeb("isoweb6", "--network", "iso6").mustStart().waitHTTP()
	intc := h.secWeb("intweb6", "--network", "int6").mustStart().waitHTTP()
	iccA := h.secWeb("icca", "--network", "icc6").mustStart().waitHTTP()
	iccB := h.secWeb("iccb", "--network", "icc6").mustStart().waitHTTP()

	// The default network: its bridge and containers in fixed_cidr_v6.
	if out := nat.mustExec("ip", "-o", "-6", "addr", "show", "eth0", "scope", "global"); !strings.Contains(out, "fd00:dead:beef::2/64") {
		t.Errorf("default network, IPv6 from fixed_cidr_v6:\n%s", out)
	}
	if out := sandbox.Run(t, "ip", "-o", "-6", "addr", "show", "netshim0", "scope", "global"); !strings.Contains(out, "fd00:dead:beef::1/64") {
		t.Errorf("netshim0:\n%s", out)
	}
	if out := h.mustNetshim("port", "routedweb6"); out != "80/tcp -> 198.18.2.2:80\n80/tcp -> [fd00:62::2]:80\n" {
		t.Errorf("routed port: %q", out)
	}

	bridgeOf := func(network string) string {
		var n struct{ Bridge string }
		if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", network)), &n); err != nil {
			t.Fatal(err)
		}
		return n.Bridge
	}
	isoBr, intBr, unprotBr := bridgeOf("iso6"), bridgeOf("int6"), bridgeOf("unprot6")
	// Ways out added by hand, so the packets do reach the host: the
	// firewall, not the routes, must stop them.
	sandbox.Run(t, "nsenter", "-t", fmt.Sprint(iso.pid()), "-n", "ip", "-6", "route", "add", "default", "via", "fd00:63::1")
	sandbox.Run(t, "nsenter", "-t", fmt.Sprint(intc.pid()), "-n", "ip", "-6", "route", "add", "default", "via", "fd00:64::1")
	// icca knows iccb's MAC: its frames are sent, and the bridge must drop
	// them (no neighbour discovery between isolated ports).
	var b struct{ MacAddress string }
	if err := json.Unmarshal([]byte(h.mustNetshim("inspect", "iccb")), &b); err != nil {
		t.Fatal(err)
	}
	sandbox.Run(t, "nsenter", "-t", fmt.Sprint(iccA.pid()), "-n", "ip", "-6", "neigh", "replace", "fd00:65::3", "lladdr", b.MacAddress, "dev", "eth0", "nud", "permanent")
	var a struct{ HostVeth string }
	if err := json.Unmarshal([]byte(h.mustNetshim("inspect", "icca")), &a); err != nil {
		t.Fatal(err)
	}
	// The bridge drops icca's frames for iccb between two isolated ports:
	// a bridge-family probe counts the connection's own frames arriving
	// from icca's port.
	pb := &probes{t: t, family: "bridge"}
	pb.add("icc", "pre", fmt.Sprintf(`iifname %q ip6 daddr fd00:65::3 tcp dport 80`, a.HostVeth))
	serveHostService(t, "tcp6", "[::]:7777")

	p := &probes{t: t, family: "ip6"}
	p.add("lan-nat", "pre", `iifname "uplink" ip6 daddr fd00:dead:beef::2 tcp dport 80`)
	p.add("lan-routed-81", "pre", `iifname "uplink" ip6 daddr fd00:62::2 tcp dport 81`)
	p.add("lan-iso", "pre", `iifname "uplink" ip6 daddr fd00:63::2 tcp dport 80`)
	p.add("lan-int", "pre", `iifname "uplink" ip6 daddr fd00:64::2 tcp dport 80`)
	p.add("other-net", "pre", fmt.Sprintf(`iifname %q ip6 daddr fd00:dead:beef::2 tcp dport 80`, unprotBr))
	p.add("host-iso", "out", fmt.Sprintf(`oifname %q ip6 daddr fd00:63::2 tcp dport 80`, isoBr))
	p.add("iso-out", "pre", fmt.Sprintf(`iifname %q ip6 daddr 2001:db8:ff::1`, isoBr))
	p.add("iso-host", "pre", fmt.Sprintf(`iifname %q ip6 daddr fd00:63::1 tcp dport 7777`, isoBr))
	p.add("int-out", "pre", fmt.Sprintf(`iifname %q ip6 daddr 2001:db8:ff::1`, intBr))

	blocked := p.blocked
	// blockedFrom is blocked for a probe sent from inside container c.
	blockedFrom := func(probe string, c *container, args ...string) (string, bool) {
		if out, err := c.exec(args...); err == nil {
			return fmt.Sprintf("got through: %s", out), false
		}
		if n := p.count(probe); n == 0 {
			return "the probe never reached the host", false
		} else {
			return fmt.Sprintf("blocked (%d packets seen at the host)", n), true
		}
	}
	allowedIn := func(c *container, want string, args ...string) (string, bool) {
		if out, err := c.exec(args...); err != nil || !strings.Contains(out, want) {
			return fmt.Sprintf("did not get through: %v %s", err, out), false
		}
		return "allowed", true
	}
	const wait = 1500 * time.Millisecond
	check := func(title string) {
		p.install()
		pb.install()
		m := &matrix{t: t}
		m.run("LAN -> container:80 direct (nat)", func() (string, bool) {
			return blocked("lan-nat", fetch(up, "[fd00:dead:beef::2]:80", wait))
		})
		m.run("LAN -> host:8080 published (nat)", func() (string, bool) {
			return allowed("hello from natweb6\n", fetch(up, "[2001:db8:1::1]:8080", wait))
		})
		m.run("LAN -> container:80 direct (nat-unprotected)", func() (string, bool) {
			return allowed("hello from unprotweb6\n", fetch(up, "[fd00:61::2]:80", wait))
		})
		m.run("LAN -> container:80 direct, published (routed)", func() (string, bool) {
			return allowed("hello from routedweb6\n", fetch(up, "[fd00:62::2]:80", wait))
		})
		m.run("LAN -> container:81 direct, unpublished (routed)", func() (string, bool) {
			return blocked("lan-routed-81", fetch(up, "[fd00:62::2]:81", wait))
		})
		m.run("LAN -> container:80 direct (isolated)", func() (string, bool) {
			return blocked("lan-iso", fetch(up, "[fd00:63::2]:80", wait))
		})
		m.run("LAN -> container:80 direct (internal)", func() (string, bool) {
			return blocked("lan-int", fetch(up, "[fd00:64::2]:80", wait))
		})
		m.run("host -> container:80 (isolated)", func() (string, bool) {
			return blocked("host-iso", fetch("", "[fd00:63::2]:80", wait))
		})
		m.run("container of another network -> container:80 direct", func() (string, bool) {
			return blockedFrom("other-net", unprot, httpGet6("fd00:dead:beef::2", "80")...)
		})
		m.run("container -> host:8080, its own port (hairpin)", func() (string, bool) {
			return allowedIn(nat, "hello from natweb6", httpGet6("2001:db8:1::1", "8080")...)
		})
		m.run("isolated container -> outside", func() (string, bool) {
			return blockedFrom("iso-out", iso, "ping", "-6", "-c1", "-W1", "2001:db8:ff::1")
		})
		m.run("isolated container -> host service", func() (string, bool) {
			return blockedFrom("iso-host", iso, httpGet6("fd00:63::1", "7777")...)
		})
		m.run("isolated container -> its network's DNS on IPv6", func() (string, bool) {
			return allowedIn(iso, "fd00:63::2", "nslookup", "-type=aaaa", "isoweb6", "fd00:63::1")
		})
		m.run("internal container -> outside", func() (string, bool) {
			return blockedFrom("int-out", intc, "ping", "-6", "-c1", "-W1", "2001:db8:ff::1")
		})
		m.run("icc=false: container -> container of its network", func() (string, bool) {
			if out, err := iccA.exec(httpGet6("fd00:65::3", "80")...); err == nil {
				return fmt.Sprintf("got through: %s", out), false
			}
			if n := pb.count("icc"); n == 0 {
				return "the probe never reached the host's bridge port", false
			} else {
				return fmt.Sprintf("blocked (%d frames seen at the bridge port)", n), true
			}
		})
		m.run("icc=false: container -> its gateway", func() (string, bool) {
			return allowedIn(iccB, "1 packets received", "ping", "-6", "-c1", "-W2", "fd00:65::1")
		})
		m.done(backend + " IPv6: " + title)
	}
	check("as set up")

	flushAll := func() {
		if backend == "iptables" {
			for _, tool := range []string{"iptables", "ip6tables"} {
				for _, table := range []string{"raw", "nat", "filter"} {
					sandbox.Run(t, tool, "-t", table, "-F")
				}
			}
		} else {
			sandbox.Run(t, "nft", "flush", "ruleset")
		}
	}
	flushAll()
	if out := h.mustNetshim("reload"); !strings.HasPrefix(out, "reloaded the firewall rules of 6 networks") {
		t.Errorf("reload: %q", out)
	}
	check("after a flush and `netshim reload`")
	if out := h.mustNetshim("doctor"); !strings.Contains(out, "ok   firewall rules") {
		t.Errorf("doctor after reload:\n%s", out)
	}

	// The IPv6 rules alone flushed: doctor tells, the next hook restores.
	if backend == "iptables" {
		for _, table := range []string{"raw", "nat", "filter"} {
			sandbox.Run(t, "ip6tables", "-t", table, "-F")
		}
	} else {
		sandbox.Run(t, "nft", "delete", "table", "ip6", "netshim")
	}
	if out, _, err := h.netshim("", "doctor"); err == nil || !strings.Contains(out, "FAIL firewall rules") {
		t.Errorf("doctor after an IPv6 flush: %v\n%s", err, out)
	}
	next := h.newBundle(uniqueID(t, "next"), sleeper, "--name", "next").mustStart()
	check("after a flush of the IPv6 rules and the next container's start")
	if out := h.mustNetshim("doctor"); !strings.Contains(out, "ok   firewall rules") {
		t.Errorf("doctor after the next hook:\n%s", out)
	}
	for _, c := range []*container{nat, unprot, routed, iso, intc, iccA, iccB, next} {
		c.stop()
	}
	sandbox.Run(t, "nft", "delete", "table", "ip6", "probe")
	sandbox.Run(t, "nft", "delete", "table", "bridge", "probe")
	assertClean(t, h)
	if out := sandbox.Run(t, "sh", "-c", "ip6tables-save 2>/dev/null"); strings.Contains(out, "NETSHIM") {
		t.Errorf("ip6tables rules left:\n%s", out)
	}
}

// httpGet6 is a command that fetches / from addr:port over IPv6 inside a
// busybox container (its wget does not take an IPv6 literal URL), failing
// without a body within a second and a half.
func httpGet6(addr, port string) []string {
	return []string{"sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 1.5 nc " + addr + " " + port + " | grep -q . && printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 1.5 nc " + addr + " " + port}
}
