package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/internal/sandbox"
	"github.com/netshim/netshim/netsetup"
)

// webBundle is a busybox container serving "hello from NAME" over HTTP on 80
// and echoing UDP on 5353.
func (h *host) webBundle(name string, flags ...string) *container {
	h.t.Helper()
	id := uniqueID(h.t, name)
	c := h.newBundle(id, []string{"sh", "-c", "httpd -p 80 -h /www && exec /udpecho :5353"}, append([]string{"--name", name}, flags...)...)
	www := filepath.Join(c.bundle, "rootfs", "www")
	os.MkdirAll(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte("hello from "+name+"\n"), 0o644)
	data, err := os.ReadFile(udpEchoBin)
	if err != nil {
		h.t.Fatal(err)
	}
	os.WriteFile(filepath.Join(c.bundle, "rootfs", "udpecho"), data, 0o755)
	return c
}

// waitHTTP waits until the container's httpd answers inside it.
func (c *container) waitHTTP() *container {
	c.h.t.Helper()
	eventually(c.h.t, 2*time.Second, "httpd in "+c.id+" answers", func() bool {
		_, err := c.exec("wget", "-q", "-O", "/dev/null", "http://127.0.0.1/")
		return err == nil
	})
	return c
}

// dialIn connects from inside the netns at nsPath ("" for the sandbox).
func dialIn(nsPath, network, addr string) (net.Conn, error) {
	if nsPath == "" {
		return net.DialTimeout(network, addr, 3*time.Second)
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var c net.Conn
	err = netsetup.Do(ns, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, 3*time.Second)
		return err
	})
	return c, err
}

// httpGet fetches / from addr, from inside nsPath, and returns the body.
func httpGet(nsPath, addr string) (string, error) {
	c, err := dialIn(nsPath, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
	resp, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	_, body, _ := strings.Cut(string(resp), "\r\n\r\n")
	return body, nil
}

// udpFlow returns a function that sends a datagram to addr from one fixed
// source address and port in nsPath, and returns the reply.
func udpFlow(t *testing.T, nsPath, addr string) func(string) (string, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var c *net.UDPConn
	err = netsetup.Do(ns, func() error {
		var err error
		c, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 51, 100, 2), Port: 40404}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return func(msg string) (string, error) {
		buf := make([]byte, 512)
		for try := 0; try < 3; try++ {
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(time.Second))
			if n, err := c.Read(buf); err == nil {
				return string(buf[:n]), nil
			}
		}
		return "", fmt.Errorf("no UDP reply from %s", addr)
	}
}

// udpAsk sends one datagram from nsPath and returns the reply.
func udpAsk(nsPath, addr, msg string) (string, error) {
	c, err := dialIn(nsPath, "udp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 512)
	for try := 0; try < 3; try++ {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", fmt.Errorf("no UDP reply from %s", addr)
}

func TestPublishNftables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testPublish(t, "nftables")
}

func TestPublishIptables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testPublish(t, "iptables")
}

// testPublish is the published-ports acceptance run for one backend.
func testPublish(t *testing.T, backend string) {
	up := sandbox.Uplink(t)
	before := rulesetDump(t, backend)
	h := newHost(t, fmt.Sprintf("firewall = %q\n", backend))
	web := h.webBundle("web", "-p", "8080:80", "-p", "127.0.0.1:9090:80", "-p", "5353:5353/udp").mustStart().waitHTTP()
	auto := h.webBundle("auto", "--expose", "80", "-P").mustStart().waitHTTP()
	client := h.newBundle(uniqueID(t, "client"), sleeper, "--name", "client").mustStart()

	want := "hello from web\n"
	// -p 8080:80 from the upstream, the sandbox's own address and
	// 127.0.0.1, and from another container through the uplink address.
	for _, tc := range []struct{ ns, addr, what string }{
		{up, "198.51.100.1:8080", "upstream"},
		{"", "198.51.100.1:8080", "host to its own address"},
		{"", "127.0.0.1:8080", "host to localhost"},
		{"", "172.17.0.1:8080", "host to the bridge address"},
	} {
		if body, err := httpGet(tc.ns, tc.addr); err != nil || body != want {
			t.Errorf("%s %s: %q %v", tc.what, tc.addr, body, err)
		}
	}
	if out := client.mustExec("timeout", "5", "wget", "-q", "-O", "-", "http://198.51.100.1:8080/"); out != want {
		t.Errorf("container to uplink:8080: %q", out)
	}
	if out := web.mustExec("timeout", "5", "wget", "-q", "-O", "-", "http://198.51.100.1:8080/"); out != want {
		t.Errorf("container to its own published port (hairpin): %q", out)
	}

	// 127.0.0.1:9090 answers there only.
	if body, err := httpGet("", "127.0.0.1:9090"); err != nil || body != want {
		t.Errorf("127.0.0.1:9090: %q %v", body, err)
	}
	if body, err := httpGet(up, "198.51.100.1:9090"); err == nil {
		t.Errorf("127.0.0.1:9090 answered on the uplink: %q", body)
	}
	if body, err := httpGet("", "198.51.100.1:9090"); err == nil {
		t.Errorf("127.0.0.1:9090 answered on the host's uplink address: %q", body)
	}

	// UDP carries a datagram both ways.
	if reply, err := udpAsk(up, "198.51.100.1:5353", "ping"); err != nil || reply != "echo: ping" {
		t.Errorf("udp: %q %v", reply, err)
	}

	// -P: a port in ip_local_port_range, shown by `netshim port`, answering.
	out := h.mustNetshim("port", "auto")
	m := regexp.MustCompile(`^80/tcp -> 0\.0\.0\.0:(\d+)\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("netshim port auto: %q", out)
	}
	hostPort, _ := strconv.Atoi(m[1])
	lo, hi, _ := netsetup.EphemeralRange()
	if hostPort < lo || hostPort > hi {
		t.Errorf("-P port %d outside %d-%d", hostPort, lo, hi)
	}
	if body, err := httpGet(up, fmt.Sprintf("198.51.100.1:%d", hostPort)); err != nil || body != "hello from auto\n" {
		t.Errorf("-P port %d: %q %v", hostPort, body, err)
	}
	if out := h.mustNetshim("port", "web"); !strings.Contains(out, "80/tcp -> 0.0.0.0:8080\n") || !strings.Contains(out, "80/tcp -> 127.0.0.1:9090\n") || !strings.Contains(out, "5353/udp -> 0.0.0.0:5353\n") {
		t.Errorf("netshim port web:\n%s", out)
	}
	var ep struct {
		Ports []struct {
			ContainerPort int
			Proto, HostIP string
			HostPort      int
		}
	}
	if err := json.Unmarshal([]byte(h.mustNetshim("inspect", "web")), &ep); err != nil || len(ep.Ports) != 3 ||
		ep.Ports[0].ContainerPort != 80 || ep.Ports[0].Proto != "tcp" || ep.Ports[0].HostIP != "0.0.0.0" || ep.Ports[0].HostPort != 8080 {
		t.Errorf("inspect web's ports: %+v %v", ep.Ports, err)
	}
	if out := h.mustNetshim("port", "web", "80/tcp"); out != "0.0.0.0:8080\n127.0.0.1:9090\n" {
		t.Errorf("netshim port web 80/tcp: %q", out)
	}
	if _, errOut, err := h.netshim("", "port", "web", "81"); err == nil || !strings.Contains(errOut, "netshim: no public port 81/tcp published for web") {
		t.Errorf("netshim port web 81: %v %q", err, errOut)
	}
	if out := h.mustNetshim("ps"); !strings.Contains(out, "0.0.0.0:8080->80/tcp, 127.0.0.1:9090->80/tcp, 0.0.0.0:5353->5353/udp") {
		t.Errorf("ps:\n%s", out)
	}

	// A second container asking for 8080 is refused; the first keeps working.
	veths := strings.Count(sandbox.Run(t, "ip", "-o", "link"), "veth")
	dup := h.webBundle("dup", "-p", "8080:80")
	err := dup.start()
	if err == nil || !strings.Contains(err.Error(), "netshim: port 8080/tcp is already allocated by web") {
		t.Errorf("conflict: %v", err)
	}
	dup.stop()
	if n := strings.Count(sandbox.Run(t, "ip", "-o", "link"), "veth"); n != veths {
		t.Errorf("refused container left links: %d veths, had %d", n, veths)
	}
	if body, err := httpGet(up, "198.51.100.1:8080"); err != nil || body != want {
		t.Errorf("after the conflict: %q %v", body, err)
	}

	if backend == "iptables" {
		nat := sandbox.Run(t, "iptables", "-t", "nat", "-nvL")
		for _, re := range []string{
			// iptables 1.8.9 prints protocol numbers: 0 is all, 6 is tcp.
			`NETSHIM +(all|0) +-- +\* +\* +0\.0\.0\.0/0 +0\.0\.0\.0/0 +ADDRTYPE match dst-type LOCAL`,
			`MASQUERADE +(all|0) +-- +\* +!netshim0 +172\.17\.0\.0/16 +0\.0\.0\.0/0`,
			`DNAT +(tcp|6) +-- +\* +\* +0\.0\.0\.0/0 +0\.0\.0\.0/0 +tcp dpt:8080 to:172\.17\.0\.2:80`,
			`DNAT +(tcp|6) +-- +\* +\* +0\.0\.0\.0/0 +127\.0\.0\.1 +tcp dpt:9090 to:172\.17\.0\.2:80`,
		} {
			if !regexp.MustCompile(re).MatchString(nat) {
				t.Errorf("iptables -t nat -nvL lacks %s:\n%s", re, nat)
			}
		}
	}

	// A UDP flow from a fixed source port keeps going to whoever publishes
	// the port next: teardown dropped the conntrack entry that pointed at
	// the old container (the new one has another address).
	flow := udpFlow(t, up, "198.51.100.1:5353")
	if reply, err := flow("one"); err != nil || reply != "echo: one" {
		t.Errorf("udp flow to web: %q %v", reply, err)
	}
	web.stop()
	web2 := h.webBundle("web2", "-p", "5353:5353/udp", "--ip", "172.17.0.9").mustStart().waitHTTP()
	if reply, err := flow("two"); err != nil || reply != "echo: two" {
		t.Errorf("udp flow after the port moved to web2: %q %v", reply, err)
	}

	for _, c := range []*container{web2, auto, client} {
		c.stop()
	}
	assertClean(t, h)
	if after := rulesetDump(t, backend); after != before {
		t.Errorf("ruleset after teardown differs from before setup:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

// rulesetDump is the firewall state to compare before and after: the whole
// nftables ruleset (iptables-nft rules included) without counters.
func rulesetDump(t *testing.T, backend string) string {
	if backend == "iptables" {
		// iptables-nft makes tables and base chains on first use and they
		// stay: a host that uses iptables has them already, so make them
		// before comparing.
		for _, tc := range [][2]string{{"raw", "PREROUTING"}, {"nat", "PREROUTING"}, {"nat", "OUTPUT"}, {"nat", "POSTROUTING"},
			{"filter", "FORWARD"}, {"filter", "INPUT"}, {"filter", "OUTPUT"}} {
			sandbox.Run(t, "iptables", "-t", tc[0], "-I", tc[1], "-j", "ACCEPT")
			sandbox.Run(t, "iptables", "-t", tc[0], "-D", tc[1], "-j", "ACCEPT")
		}
		var kept []string
		counters := regexp.MustCompile(`\[\d+:\d+\]`)
		for _, l := range strings.Split(sandbox.Run(t, "iptables-save"), "\n") {
			if !strings.HasPrefix(l, "#") { // timestamps
				kept = append(kept, counters.ReplaceAllString(l, ""))
			}
		}
		return strings.Join(kept, "\n") + sandbox.Run(t, "nft", "-s", "list", "ruleset")
	}
	return sandbox.Run(t, "nft", "-s", "list", "ruleset")
}

// With FORWARD's policy DROP in iptables and ip6tables (Docker installed,
// say), published ports and outbound traffic still work, over IPv4 and
// IPv6, and teardown leaves the host's rules as they were, policy
// included.
func TestForwardDropNftables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testForwardDrop(t, "nftables")
}

func TestForwardDropIptables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testForwardDrop(t, "iptables")
}

func testForwardDrop(t *testing.T, backend string) {
	up := uplink6(t)
	for _, tool := range []string{"iptables", "ip6tables"} {
		sandbox.Run(t, tool, "-P", "FORWARD", "DROP")
	}
	sandbox.Run(t, "iptables", "-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "DROP")      // someone else's rule
	sandbox.Run(t, "ip6tables", "-A", "FORWARD", "-s", "2001:db8:99::/64", "-j", "DROP") // and another
	dump := func() string {
		// As rulesetDump does for iptables: ip6tables-nft makes its
		// tables and base chains on first use, and they stay.
		for _, tc := range [][2]string{{"raw", "PREROUTING"}, {"nat", "PREROUTING"}, {"nat", "OUTPUT"}, {"nat", "POSTROUTING"},
			{"filter", "FORWARD"}, {"filter", "INPUT"}, {"filter", "OUTPUT"}} {
			sandbox.Run(t, "ip6tables", "-t", tc[0], "-I", tc[1], "-j", "ACCEPT")
			sandbox.Run(t, "ip6tables", "-t", tc[0], "-D", tc[1], "-j", "ACCEPT")
		}
		return rulesetDump(t, "iptables") + sandbox.Run(t, "ip6tables-save")
	}
	before := dump()
	// bip6 (Docker 28) gives the bridge its address, fixed_cidr_v6 the
	// range containers' addresses come from.
	h := newHost(t, fmt.Sprintf("firewall = %q\n[bridge]\nipv6 = true\nbip6 = \"fd00:17::1/64\"\nfixed_cidr_v6 = \"fd00:17::100/120\"\n", backend))
	web := h.webBundle("web", "-p", "8080:80").mustStart().waitHTTP()
	if out := web.mustExec("ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global"); !strings.Contains(out, "fd00:17::100/64") {
		t.Errorf("web's IPv6 address from fixed_cidr_v6 inside bip6:\n%s", out)
	}
	if out := sandbox.Run(t, "ip", "-o", "-6", "addr", "show", "dev", "netshim0", "scope", "global"); !strings.Contains(out, "fd00:17::1/64") {
		t.Errorf("netshim0's bip6:\n%s", out)
	}
	for _, addr := range []string{"198.51.100.1:8080", "[2001:db8:1::1]:8080"} {
		if body := fetch(up, addr, 2*time.Second).body; body != "hello from web\n" {
			t.Errorf("published port %s under FORWARD DROP: %q\n%s", addr, body, sandbox.Run(t, "sh", "-c", "ip6tables-save; nft list ruleset; ip -6 route; ip -6 addr"))
		}
	}
	web.mustExec("ping", "-c1", "-W2", "203.0.113.1")
	web.mustExec("ping", "-6", "-c1", "-W2", "2001:db8:ff::1")
	if out := sandbox.Run(t, "iptables", "-S", "FORWARD"); !strings.HasPrefix(out, "-P FORWARD DROP\n-A FORWARD -j NETSHIM-FORWARD\n") {
		t.Errorf("FORWARD:\n%s", out)
	}
	web.stop()
	assertCleanLinks(t, h)
	if after := dump(); stripSaveDate(after) != stripSaveDate(before) {
		t.Errorf("rules after teardown differ:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

// stripSaveDate drops the comment lines of iptables-save's output, which
// carry the time.
func stripSaveDate(s string) string {
	var kept []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			kept = append(kept, regexp.MustCompile(`\[\d+:\d+\]`).ReplaceAllString(l, ""))
		}
	}
	return strings.Join(kept, "\n")
}
