package test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/engine"
	"github.com/netshim/netshim/internal/sandbox"
	"github.com/netshim/netshim/netsetup"
)

// The overlay tests make a cluster inside the sandbox: an underlay bridge
// (192.0.2.0/24, the sandbox on .254 routing to the upstream), one etcd
// server (Debian's etcd-server) on the sandbox's underlay address, and
// "hosts": network namespaces on the underlay, each with its own netshim
// config and state.

const etcdURL = "http://192.0.2.254:2379"

// cluster is the test's underlay and etcd.
type testCluster struct {
	t *testing.T
	// firewall is the hosts' backend.
	firewall string
	dir      string
	etcd     *exec.Cmd
	etcdLog  string
}

func newCluster(t *testing.T) *testCluster {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Fatalf("etcd is not installed (Debian's etcd-server; make test installs it): %v", err)
	}
	c := &testCluster{t: t, dir: t.TempDir()}
	for _, args := range [][]string{
		// A fixed MAC: a bridge takes its lowest port's otherwise, and
		// the hosts' ARP entries for the sandbox go stale as hosts join.
		{"link", "add", "ul0", "address", "02:00:c0:00:02:fe", "type", "bridge"},
		{"addr", "add", "192.0.2.254/24", "dev", "ul0"},
		{"link", "set", "ul0", "up"},
	} {
		sandbox.Run(t, "ip", args...)
	}
	os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	c.startEtcd()
	t.Cleanup(c.stopEtcd)
	return c
}

// startEtcd starts the etcd server and waits until it answers.
func (c *testCluster) startEtcd() {
	c.t.Helper()
	c.etcdLog = filepath.Join(c.dir, "etcd.log")
	log, err := os.OpenFile(c.etcdLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer log.Close()
	c.etcd = exec.Command("etcd", "--data-dir", filepath.Join(c.dir, "etcd"), "--name", "test",
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "test=http://127.0.0.1:2380")
	c.etcd.Stdout, c.etcd.Stderr = log, log
	if err := c.etcd.Start(); err != nil {
		c.t.Fatal(err)
	}
	if !waitFor(20*time.Second, func() bool {
		return exec.Command("etcdctl", "--endpoints", etcdURL, "--command-timeout=1s", "endpoint", "health").Run() == nil
	}) {
		out, _ := os.ReadFile(c.etcdLog)
		c.t.Fatalf("etcd did not come up:\n%s", out)
	}
}

func (c *testCluster) stopEtcd() {
	if c.etcd != nil && c.etcd.Process != nil {
		c.etcd.Process.Kill()
		c.etcd.Wait()
		c.etcd = nil
	}
}

// etcdctl runs etcdctl against the test's etcd.
func (c *testCluster) etcdctl(args ...string) string {
	c.t.Helper()
	out, err := exec.Command("etcdctl", append([]string{"--endpoints", etcdURL}, args...)...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("etcdctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// addHost makes host n: netns hN on the underlay with 192.0.2.N, a default
// route via the sandbox, and a netshim config of the cluster (extra
// [cluster] keys appended).
func (c *testCluster) addHost(n int, extra string) *host {
	c.t.Helper()
	name := fmt.Sprintf("h%d", n)
	for _, args := range [][]string{
		{"netns", "add", name},
		{"link", "add", "ul-" + name, "type", "veth", "peer", "name", "eth0", "netns", name},
		{"link", "set", "ul-" + name, "master", "ul0", "up"},
		{"-n", name, "addr", "add", fmt.Sprintf("192.0.2.%d/24", n), "dev", "eth0"},
		{"-n", name, "link", "set", "eth0", "up"},
		{"-n", name, "link", "set", "lo", "up"},
		{"-n", name, "route", "add", "default", "via", "192.0.2.254"},
	} {
		sandbox.Run(c.t, "ip", args...)
	}
	fw := c.firewall
	if fw == "" {
		fw = "nftables"
	}
	h := newHost(c.t, fmt.Sprintf("data_dir = %q\nfirewall = %q\n[cluster]\netcd_endpoints = [%q]\n%s", filepath.Join(c.dir, name+"-data"), fw, etcdURL, extra))
	h.netns = name
	return h
}

// inspectAddr is a container's address on network net, from `netshim
// inspect`.
func inspectAddr(t *testing.T, h *host, id, net string) netip.Addr {
	t.Helper()
	var info struct {
		Networks map[string]struct{ IPAddress string }
	}
	out := h.mustNetshim("inspect", id)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("inspect %s: %v\n%s", id, err, out)
	}
	a, err := netip.ParseAddr(info.Networks[net].IPAddress)
	if err != nil {
		t.Fatalf("inspect %s: no address on %s: %v", id, net, err)
	}
	return a
}

// Rules of an overlay network whose packet counters the test reads.
const (
	ruleVXLANDrop     = "vxlan-drop"     // the VXLAN port's drop of the network's VNI
	ruleOverlayAccept = "overlay-accept" // the forward of other hosts' containers to the bridge
)

// ruleCounter is the packet count of rule (ruleVXLANDrop or
// ruleOverlayAccept) of overlay network ov on host h.
func ruleCounter(t *testing.T, h *host, backend, rule string) int {
	t.Helper()
	var cmd *exec.Cmd
	var want []string
	switch {
	case backend == "iptables" && rule == ruleVXLANDrop:
		cmd, want = h.command("iptables", "-L", "NETSHIM-INPUT", "-v", "-x", "-n"), []string{"DROP", "u32"}
	case backend == "iptables":
		cmd, want = h.command("iptables", "-L", "NETSHIM-FORWARD", "-v", "-x", "-n"), []string{"ACCEPT", " vx-"}
	case rule == ruleVXLANDrop:
		cmd, want = h.command("nft", "list", "chain", "ip", "netshim", "vx-ov"), []string{"drop"}
	default:
		cmd, want = h.command("nft", "list", "chain", "ip", "netshim", "fwd-ov"), []string{`iifname "vx-`, "accept"}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		ok := backend == "iptables" || strings.Contains(line, "counter packets")
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if !ok {
			continue
		}
		var n int
		if backend == "iptables" {
			fmt.Sscanf(strings.TrimSpace(line), "%d", &n)
		} else {
			fmt.Sscanf(line[strings.Index(line, "counter packets")+len("counter packets "):], "%d", &n)
		}
		return n
	}
	t.Fatalf("no rule with %q in:\n%s", want, out)
	return 0
}

func TestOverlayNftables(t *testing.T) {
	if sandbox.Enter(t) {
		testOverlay(t, "nftables")
	}
}

func TestOverlayIptables(t *testing.T) {
	if sandbox.Enter(t) {
		testOverlay(t, "iptables")
	}
}

// testOverlay: three hosts on one overlay network reach each other by
// address and name, and the upstream through their own masquerade; a
// host of the underlay that is no peer cannot inject VXLAN packets; a
// fourth host joins (seen at once by a host that watches, by the others
// at their sync) and dies (its lease expires; the others forget it).
func testOverlay(t *testing.T, backend string) {
	c := newCluster(t)
	c.firewall = backend
	up := sandbox.Uplink(t)
	sandbox.Run(t, "ip", "-n", "up", "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
	h1, h2, h3 := c.addHost(1, ""), c.addHost(2, ""), c.addHost(3, "")

	id := strings.TrimSpace(h1.mustNetshim("network", "create", "-d", "overlay", "--subnet", "10.200.0.0/16", "ov"))
	if len(id) != 64 {
		t.Fatalf("network create printed %q, want an id", id)
	}
	if out := h2.mustNetshim("network", "ls"); !strings.Contains(out, "ov") || !strings.Contains(out, "overlay") || !strings.Contains(out, "10.200.0.0/16") {
		t.Fatalf("network ls on another host does not show the overlay network:\n%s", out)
	}
	if _, errOut, err := h2.netshim("", "network", "create", "-d", "overlay", "--subnet", "10.200.128.0/17", "ov-b"); err == nil || !strings.Contains(errOut, "overlaps overlay network ov") {
		t.Fatalf("an overlapping overlay network: err %v, %s", err, errOut)
	}

	for _, bad := range []struct{ args, want string }{
		{"-d overlay ov2", "--subnet: an overlay network needs one"},
		{"-d overlay --subnet 10.210.0.0/16 --host-prefix 8 ov2", "--host-prefix 8: must be longer than the subnet's /16 and at most /29"},
		{"-d overlay --subnet 10.210.0.0/16 --ipv6 ov2", "--ipv6: overlay networks are IPv4 only"},
		{"-d overlay --subnet 10.210.0.0/16 ov", "network ov already exists"},
	} {
		_, errOut, err := h3.netshim("", append([]string{"network", "create"}, strings.Fields(bad.args)...)...)
		if err == nil || !strings.Contains(errOut, bad.want) || strings.Count(strings.TrimSpace(errOut), "\n") > 0 {
			t.Errorf("network create %s: %v %q, want one line with %q", bad.args, err, errOut, bad.want)
		}
	}
	sleep := []string{"sleep", "3600"}
	c1 := h1.newBundle(uniqueID(t, "c1"), sleep, "--network", "ov", "--name", "c1").mustStart()
	c2 := h2.webBundle("c2", "--network", "ov", "-p", "8080:80").mustStart().waitHTTP()
	c3 := h3.newBundle(uniqueID(t, "c3"), sleep, "--network", "ov", "--name", "c3").mustStart()
	for _, h := range []*host{h1, h2, h3} {
		h.mustNetshim("overlay", "sync")
	}
	if _, errOut, err := h3.netshim("", "network", "rm", "ov"); err == nil || !strings.Contains(errOut, "overlay network ov has active endpoints on hosts 192.0.2.1, 192.0.2.2, 192.0.2.3") {
		t.Errorf("network rm of an overlay in use: %v %s", err, errOut)
	}
	// network connect with a cluster configured: an overlay network is
	// refused as such, a name known nowhere is not found.
	for _, bad := range []struct{ network, want string }{
		{"ov", "network ov: a running container can only be connected to bridge networks"},
		{"nonet", "network nonet not found"},
	} {
		_, errOut, err := h1.netshim("", "network", "connect", bad.network, "c1")
		if err == nil || !strings.Contains(errOut, bad.want) || strings.Count(strings.TrimSpace(errOut), "\n") > 0 {
			t.Errorf("network connect %s c1: %v %q, want one line with %q", bad.network, err, errOut, bad.want)
		}
	}
	a1, a2, a3 := inspectAddr(t, h1, c1.id, "ov"), inspectAddr(t, h2, c2.id, "ov"), inspectAddr(t, h3, c3.id, "ov")
	t.Logf("c1 %s, c2 %s, c3 %s", a1, a2, a3)
	subnets := map[netip.Prefix]bool{}
	for _, a := range []netip.Addr{a1, a2, a3} {
		p, _ := a.Prefix(24)
		if subnets[p] || !netip.MustParsePrefix("10.200.0.0/16").Contains(a) {
			t.Fatalf("addresses %s %s %s: want one /24 of 10.200.0.0/16 per host", a1, a2, a3)
		}
		subnets[p] = true
	}
	if out := c1.mustExec("cat", "/sys/class/net/eth0/mtu"); strings.TrimSpace(out) != "1450" {
		t.Fatalf("container MTU %s, want the underlay's 1500 less 50", out)
	}
	// By address and by name, across hosts.
	c1.mustExec("ping", "-c", "1", "-W", "2", a2.String())
	c2.mustExec("ping", "-c", "1", "-W", "2", a3.String())
	c3.mustExec("ping", "-c", "1", "-W", "2", a1.String())
	if out := c1.mustExec("nslookup", "c3"); !strings.Contains(out, a3.String()) {
		t.Fatalf("c1 resolves c3 (on another host):\n%s", out)
	}
	c1.mustExec("ping", "-c", "1", "-W", "2", "c2")
	c3.mustExec("ping", "-c", "1", "-W", "2", "c1")
	if out := c1.mustExec("timeout", "3", "wget", "-q", "-O", "-", "http://c2/"); !strings.Contains(out, "hello from c2") {
		t.Fatalf("c1 -> http://c2/ across hosts: %q", out)
	}
	// A published port answers on its container's host, as on a bridge.
	if body, err := httpGet("", "192.0.2.2:8080"); err != nil || !strings.Contains(body, "hello from c2") {
		t.Fatalf("the underlay -> host 2's published 8080: %q %v", body, err)
	}

	// Out of the cluster through the local host's masquerade: the upstream
	// sees host 1's underlay address.
	l := listenIn(t, up, "203.0.113.1:8080")
	go c1.exec("timeout", "3", "nc", "203.0.113.1", "8080")
	from, err := acceptRemote(l, 5*time.Second)
	if err != nil {
		t.Fatalf("c1 -> upstream: %v", err)
	}
	if from != "192.0.2.1" {
		t.Fatalf("the upstream saw %s, want host 1's underlay address", from)
	}

	// VXLAN packets of ov's VNI for c1, the same bytes from a peer (host 2)
	// and from a host of the underlay that is no peer: the peer's reach
	// the bridge, the other's are dropped at host 1's VXLAN port.
	rogue := c.addHost(66, "")
	_ = rogue
	vni := overlayVNI(t, c, "ov")
	vtep := vtepMAC(t, h1, id)
	frame := vxlanFrame(vni, vtep, netip.MustParseAddr("10.200.1.77"), a1)
	dropped := ruleCounter(t, h1, backend, ruleVXLANDrop)
	passed := ruleCounter(t, h1, backend, ruleOverlayAccept)
	for i := 0; i < 3; i++ {
		sendUDP(t, "h66", "192.0.2.66:40000", "192.0.2.1:4789", frame)
	}
	eventually(t, 2*time.Second, "the non-peer's VXLAN packets counted as dropped at host 1", func() bool {
		return ruleCounter(t, h1, backend, ruleVXLANDrop) >= dropped+3
	})
	if got := ruleCounter(t, h1, backend, ruleOverlayAccept); got != passed {
		t.Fatalf("a non-peer's VXLAN frames reached the bridge: %d -> %d", passed, got)
	}
	for i := 0; i < 3; i++ {
		sendUDP(t, "h2", "192.0.2.2:40000", "192.0.2.1:4789", frame)
	}
	eventually(t, 2*time.Second, "the peer's VXLAN packets forwarded to the bridge at host 1", func() bool {
		return ruleCounter(t, h1, backend, ruleOverlayAccept) >= passed+3
	})
	if got := ruleCounter(t, h1, backend, ruleVXLANDrop); got != dropped+3 {
		t.Fatalf("a peer's VXLAN packets were dropped: %d -> %d", dropped+3, got)
	}

	// A fourth host joins: host 3 watches and has it within 2 s, hosts 1
	// and 2 after a sync.
	watch := h3.command(netshimBin, "--config", h3.config, "--state-dir", h3.stateDir, "overlay", "watch")
	watchLog, _ := os.Create(filepath.Join(c.dir, "watch.log"))
	watch.Stdout, watch.Stderr = watchLog, watchLog
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watch.Process.Kill(); watch.Wait() })
	time.Sleep(300 * time.Millisecond) // its first sync and watch
	h4 := c.addHost(4, `lease_ttl = "5s"`)
	c4 := h4.newBundle(uniqueID(t, "c4"), sleep, "--network", "ov", "--name", "c4").mustStart()
	a4 := inspectAddr(t, h4, c4.id, "ov")
	sub4, _ := a4.Prefix(24)
	if !waitFor(2*time.Second, func() bool { return hasRoute(t, h3, sub4) }) {
		out, _ := os.ReadFile(watchLog.Name())
		t.Fatalf("host 3 (overlay watch) has no route to host 4's %s within 2 s:\n%s", sub4, out)
	}
	c3.mustExec("ping", "-c", "1", "-W", "2", a4.String())
	if hasRoute(t, h1, sub4) {
		t.Fatalf("host 1 routes to host 4 before it synced")
	}
	if out, _, _ := h1.netshim("", "doctor"); !strings.Contains(out, "192.0.2.4 ("+sub4.String()+") NOT installed") {
		t.Fatalf("doctor on host 1 does not say host 4 is not installed yet:\n%s", out)
	}
	h1.mustNetshim("overlay", "sync")
	h2.mustNetshim("overlay", "sync")
	if out, _, _ := h1.netshim("", "doctor"); !strings.Contains(out, "192.0.2.4 ("+sub4.String()+") installed") || !strings.Contains(out, "expires in") {
		t.Fatalf("doctor on host 1 after its sync:\n%s", out)
	}
	c1.mustExec("ping", "-c", "1", "-W", "2", a4.String())
	c4.mustExec("ping", "-c", "1", "-W", "2", "c2")

	// Host 4 dies: nothing renews its 5 s lease; when it expires, etcd
	// drops its subnet and names, and the others drop its route,
	// neighbour and FDB entry at their next sync (host 3 at once).
	mac4 := netsetup.VTEPMAC(netip.MustParseAddr("192.0.2.4"), vni).String()
	for _, h := range []*host{h1, h2, h3} {
		if !hasPeer(t, h, id, sub4, mac4) {
			t.Fatalf("host %s lacks host 4's route, neighbour or FDB entry", h.netns)
		}
	}
	eventually(t, 15*time.Second, "host 4's lease expired", func() bool {
		return !strings.Contains(c.etcdctl("get", "--prefix", "--keys-only", "/netshim/subnets/ov/"), sub4.Addr().String())
	})
	eventually(t, 2*time.Second, "host 3 (overlay watch) forgot host 4", func() bool { return !hasPeer(t, h3, id, sub4, mac4) && !hasAnyPeer(t, h3, id, sub4, mac4) })
	for _, h := range []*host{h1, h2} {
		h.mustNetshim("overlay", "sync")
		if hasAnyPeer(t, h, id, sub4, mac4) {
			t.Fatalf("host %s keeps a route, neighbour or FDB entry of host 4 after its sync", h.netns)
		}
	}
	if out := c.etcdctl("get", "--prefix", "--keys-only", "/netshim/names/ov/192.0.2.4/"); strings.TrimSpace(out) != "" {
		t.Fatalf("host 4's names outlived its lease:\n%s", out)
	}
	c1.mustExec("ping", "-c", "1", "-W", "2", "c3")
}

// overlayVNI is network name's VNI, as etcd holds it.
func overlayVNI(t *testing.T, c *testCluster, name string) uint32 {
	t.Helper()
	var n struct{ VNI uint32 }
	out := c.etcdctl("get", "--print-value-only", "/netshim/networks/"+name)
	if err := json.Unmarshal([]byte(out), &n); err != nil || n.VNI == 0 {
		t.Fatalf("network %s in etcd: %v\n%s", name, err, out)
	}
	return n.VNI
}

// vtepMAC is host h's VXLAN device MAC on network id.
func vtepMAC(t *testing.T, h *host, id string) []byte {
	t.Helper()
	out, err := h.command("cat", "/sys/class/net/vx-"+id[:12]+"/address").CombinedOutput()
	if err != nil {
		// sysfs shows the sandbox's links: ask ip.
		out, err = h.command("ip", "-br", "link", "show", "vx-"+id[:12]).CombinedOutput()
		if err != nil {
			t.Fatalf("vxlan device of %s on %s: %v\n%s", id, h.netns, err, out)
		}
		out = []byte(strings.Fields(string(out))[2])
	}
	mac, err := net.ParseMAC(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// vxlanFrame is a VXLAN packet's UDP payload: VNI vni, an Ethernet frame
// to dstMAC carrying a UDP datagram from src to dst port 9.
func vxlanFrame(vni uint32, dstMAC []byte, src, dst netip.Addr) []byte {
	b := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	b = append(b, dstMAC...)
	b = append(b, 0x02, 0, 0, 0, 0, 0x77, 0x08, 0x00)
	payload := []byte("vxlan probe")
	ip := []byte{0x45, 0, 0, byte(20 + 8 + len(payload)), 0, 1, 0, 0, 64, 17, 0, 0}
	s4, d4 := src.As4(), dst.As4()
	ip = append(append(ip, s4[:]...), d4[:]...)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(ip[i])<<8 | uint32(ip[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	ip[10], ip[11] = byte(^sum>>8), byte(^sum)
	udp := []byte{0x15, 0xb3, 0, 9, 0, byte(8 + len(payload)), 0, 0}
	return append(append(append(b, ip...), udp...), payload...)
}

// sendUDP sends one datagram from src to dst inside netns name.
func sendUDP(t *testing.T, name, src, dst string, payload []byte) {
	t.Helper()
	ns, err := netns.GetFromPath("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	err = netsetup.Do(ns, func() error {
		la, _ := net.ResolveUDPAddr("udp4", src)
		ra, _ := net.ResolveUDPAddr("udp4", dst)
		conn, err := net.DialUDP("udp4", la, ra)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write(payload)
		return err
	})
	if err != nil {
		t.Fatalf("send from %s to %s: %v", src, dst, err)
	}
}

// hasRoute reports whether host h routes subnet p.
func hasRoute(t *testing.T, h *host, p netip.Prefix) bool {
	out, _ := h.command("ip", "route", "show", p.String()).CombinedOutput()
	return strings.Contains(string(out), p.String())
}

// hasPeer reports whether host h has every entry of the peer with subnet p
// and VTEP MAC mac on network id: route, permanent neighbour, FDB entry.
func hasPeer(t *testing.T, h *host, id string, p netip.Prefix, mac string) bool {
	route, neigh, fdb := peerEntries(t, h, id, p, mac)
	return route && neigh && fdb
}

// hasAnyPeer reports whether host h has any of them.
func hasAnyPeer(t *testing.T, h *host, id string, p netip.Prefix, mac string) bool {
	route, neigh, fdb := peerEntries(t, h, id, p, mac)
	return route || neigh || fdb
}

func peerEntries(t *testing.T, h *host, id string, p netip.Prefix, mac string) (route, neigh, fdb bool) {
	dev := "vx-" + id[:12]
	gw := p.Addr().Next().String()
	r, _ := h.command("ip", "route", "show", p.String(), "dev", dev).CombinedOutput()
	n, _ := h.command("ip", "neigh", "show", gw, "dev", dev).CombinedOutput()
	f, _ := h.command("bridge", "fdb", "show", "dev", dev).CombinedOutput()
	return strings.Contains(string(r), "via "+gw), strings.Contains(string(n), mac) && strings.Contains(string(n), "PERMANENT"),
		strings.Contains(string(f), mac)
}

// TestOverlayEtcdDown: with etcd stopped, a host that holds a lease goes
// on starting and stopping containers, a host without one is refused with
// one line and nothing made; with etcd back, one sync publishes what was
// missed and the new host joins.
func TestOverlayEtcdDown(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	c := newCluster(t)
	h1, h2 := c.addHost(1, ""), c.addHost(2, "")
	h1.mustNetshim("network", "create", "-d", "overlay", "--subnet", "10.200.0.0/16", "ov")
	sleep := []string{"sleep", "3600"}
	a1 := h1.newBundle(uniqueID(t, "a1"), sleep, "--network", "ov", "--name", "a1").mustStart()
	a2 := h2.newBundle(uniqueID(t, "a2"), sleep, "--network", "ov", "--name", "a2").mustStart()
	h1.mustNetshim("overlay", "sync")
	a1.mustExec("ping", "-c", "1", "-W", "2", "a2")

	c.stopEtcd()
	b1 := h1.newBundle(uniqueID(t, "b1"), sleep, "--network", "ov", "--name", "b1").mustStart()
	addr2 := inspectAddr(t, h2, a2.id, "ov")
	b1.mustExec("ping", "-c", "1", "-W", "2", addr2.String())
	a1.stop()
	if log, _ := os.ReadFile(filepath.Join(h1.stateDir, "hook.log")); !strings.Contains(string(log), "not published (overlay sync will)") {
		t.Fatalf("the hook did not log the names it could not publish:\n%s", log)
	}
	if out, _, _ := h1.netshim("", "doctor"); !strings.Contains(out, "unreachable") || !strings.Contains(out, "by this host's last renewal") {
		t.Fatalf("doctor with etcd down:\n%s", out)
	}
	h3 := c.addHost(3, `etcd_timeout = "1s"`)
	c3 := h3.newBundle(uniqueID(t, "c3"), sleep, "--network", "ov", "--name", "c3")
	err := c3.start()
	if err == nil {
		c3.stop()
		t.Fatal("a host without a lease started a container on the overlay while etcd was down")
	}
	if !strings.Contains(err.Error(), "overlay network ov: this host holds no subnet lease and etcd (http://192.0.2.254:2379) is unreachable") {
		t.Fatalf("the refusal does not say why: %v", err)
	}
	c3.stop() // runc leaves the failed container's state
	if out := h3.mustNetshim("ps"); strings.Contains(out, c3.id) {
		t.Fatalf("the refused container has a record:\n%s", out)
	}
	if out, _ := h3.command("ip", "-br", "link").CombinedOutput(); strings.Contains(string(out), "vx-") || strings.Contains(string(out), "ov-") || strings.Contains(string(out), "veth") {
		t.Fatalf("the refused setup left links:\n%s", out)
	}

	c.startEtcd()
	out := h1.mustNetshim("overlay", "sync")
	if !strings.Contains(out, "names of "+engine.ShortID(b1.id)+" published") || !strings.Contains(out, "names of "+engine.ShortID(a1.id)+" withdrawn") {
		t.Fatalf("the sync after etcd came back did not publish b1 and withdraw a1:\n%s", out)
	}
	eventually(t, 3*time.Second, "a2 resolves b1, published late", func() bool {
		out, _ := a2.exec("nslookup", "b1")
		return strings.Contains(out, inspectAddr(t, h1, b1.id, "ov").String())
	})
	if out, err := a2.exec("nslookup", "a1"); err == nil && strings.Contains(out, "10.200.") {
		t.Fatalf("a2 still resolves a1, stopped while etcd was down:\n%s", out)
	}
	c3 = h3.newBundle(uniqueID(t, "c3b"), sleep, "--network", "ov", "--name", "c3").mustStart()
	h1.mustNetshim("overlay", "sync")
	c3.mustExec("ping", "-c", "1", "-W", "2", "b1")
	if out := c.etcdctl("get", "--prefix", "--keys-only", "/netshim/subnets/ov/"); strings.Count(out, "/netshim/subnets/ov/") != 3 {
		t.Fatalf("want three subnet leases:\n%s", out)
	}
}

// TestOverlayParallel starts 20 containers on each of three hosts at once,
// on a network none of them has joined yet: one subnet per host, no
// address twice.
func TestOverlayParallel(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	c := newCluster(t)
	hosts := []*host{c.addHost(1, ""), c.addHost(2, ""), c.addHost(3, "")}
	hosts[0].mustNetshim("network", "create", "-d", "overlay", "--subnet", "10.201.0.0/16", "--host-prefix", "26", "par")
	var all []*container
	var hostOf []*host
	for hi, h := range hosts {
		for i := 0; i < 20; i++ {
			all = append(all, h.newBundle(uniqueID(t, fmt.Sprintf("p%d-%d", hi+1, i)), []string{"sleep", "3600"}, "--network", "par"))
			hostOf = append(hostOf, h)
		}
	}
	errs := make(chan error, len(all))
	for _, ctr := range all {
		go func() { errs <- ctr.start() }()
	}
	var failed []string
	for range all {
		if err := <-errs; err != nil {
			failed = append(failed, err.Error())
		}
	}
	t.Cleanup(func() {
		for _, ctr := range all {
			ctr.stop()
		}
	})
	if len(failed) > 0 {
		t.Fatalf("%d of %d parallel starts failed: %s", len(failed), len(all), failed[0])
	}
	seen := map[netip.Addr]string{}
	subnetOf := map[*host]netip.Prefix{}
	for i, ctr := range all {
		a := inspectAddr(t, hostOf[i], ctr.id, "par")
		if other, dup := seen[a]; dup {
			t.Fatalf("%s and %s both have %s", other, ctr.id, a)
		}
		seen[a] = ctr.id
		p, _ := a.Prefix(26)
		if s, ok := subnetOf[hostOf[i]]; ok && s != p {
			t.Fatalf("host %s has containers in %s and %s", hostOf[i].netns, s, p)
		}
		subnetOf[hostOf[i]] = p
	}
	owners := map[netip.Prefix]string{}
	for h, p := range subnetOf {
		if o, dup := owners[p]; dup {
			t.Fatalf("hosts %s and %s share subnet %s", o, h.netns, p)
		}
		owners[p] = h.netns
	}
	if out := c.etcdctl("get", "--prefix", "--keys-only", "/netshim/subnets/par/"); strings.Count(out, "/netshim/subnets/par/") != 3 {
		t.Fatalf("want one subnet lease per host:\n%s", out)
	}
	t.Logf("%d containers on 3 hosts, %d addresses, subnets %v", len(all), len(seen), subnetOf)
}

// TestOverlayHostReturns: a host dies (its containers gone without a
// poststop, its lease unrenewed); the others forget it once the lease
// expires; when it returns, gc clears what it left and its next
// container gets its subnet back.
func TestOverlayHostReturns(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	c := newCluster(t)
	// Host 2 names its underlay: it has no default route to find it by.
	h1, h2 := c.addHost(1, ""), c.addHost(2, "lease_ttl = \"5s\"\nunderlay_interface = \"eth0\"")
	sandbox.Run(t, "ip", "-n", "h2", "route", "del", "default")
	if out, _, _ := h2.netshim("", "doctor"); !strings.Contains(out, "eth0 192.0.2.2, mtu 1500 (overlay mtu 1450)") {
		t.Fatalf("doctor on host 2 does not show its named underlay:\n%s", out)
	}
	id := strings.TrimSpace(h1.mustNetshim("network", "create", "-d", "overlay", "--subnet", "10.200.0.0/16", "ov"))
	sleep := []string{"sleep", "3600"}
	c1 := h1.newBundle(uniqueID(t, "c1"), sleep, "--network", "ov", "--name", "c1").mustStart()
	c2 := h2.newBundle(uniqueID(t, "c2"), sleep, "--network", "ov", "--name", "c2").mustStart()
	h1.mustNetshim("overlay", "sync")
	c1.mustExec("ping", "-c", "1", "-W", "2", "c2")
	a2 := inspectAddr(t, h2, c2.id, "ov")
	sub2, _ := a2.Prefix(24)
	mac2 := netsetup.VTEPMAC(netip.MustParseAddr("192.0.2.2"), overlayVNI(t, c, "ov")).String()

	// Host 2 dies.
	h2.runc("kill", c2.id, "KILL")
	eventually(t, 15*time.Second, "host 2's lease expired", func() bool {
		return !strings.Contains(c.etcdctl("get", "--prefix", "--keys-only", "/netshim/subnets/ov/"), sub2.Addr().String())
	})
	h1.mustNetshim("overlay", "sync")
	if hasAnyPeer(t, h1, id, sub2, mac2) {
		t.Fatal("host 1 keeps host 2's route, neighbour or FDB entry after its lease expired")
	}
	if out, err := c1.exec("nslookup", "c2"); err == nil && strings.Contains(out, a2.String()) {
		t.Fatalf("c2's name outlived its host's lease:\n%s", out)
	}
	// The responder answers all the same: c2's name is gone, not DNS.
	if out := c1.mustExec("nslookup", "c1"); !strings.Contains(out, inspectAddr(t, h1, c1.id, "ov").String()) {
		t.Fatalf("c1 does not resolve itself:\n%s", out)
	}

	// It returns.
	out := h2.mustNetshim("gc")
	if !strings.Contains(out, c2.id) {
		t.Fatalf("gc did not clear the dead container:\n%s", out)
	}
	if links, _ := h2.command("ip", "-br", "link").CombinedOutput(); strings.Contains(string(links), "vx-") || strings.Contains(string(links), "veth") {
		t.Fatalf("links left after gc:\n%s", links)
	}
	if out := h2.mustNetshim("overlay", "sync"); !strings.Contains(out, "etcd lease") {
		t.Fatalf("the returning host took no new lease:\n%s", out)
	}
	c2b := h2.newBundle(uniqueID(t, "c2b"), sleep, "--network", "ov", "--name", "c2b").mustStart()
	if a := inspectAddr(t, h2, c2b.id, "ov"); !sub2.Contains(a) {
		t.Fatalf("the returning host's container has %s, want its old subnet %s back", a, sub2)
	}
	h1.mustNetshim("overlay", "sync")
	c1.mustExec("ping", "-c", "1", "-W", "2", "c2b")

	// Removed once no container is on it; the other host forgets it.
	c1.stop()
	c2b.stop()
	h1.mustNetshim("network", "rm", "ov")
	if out := h2.mustNetshim("overlay", "sync"); !strings.Contains(out, "overlay network ov: removed from the cluster; forgotten here") {
		t.Fatalf("host 2's sync after the network's removal:\n%s", out)
	}
	for _, h := range []*host{h1, h2} {
		links, err := h.command("ip", "-br", "link").CombinedOutput()
		if err != nil || !strings.Contains(string(links), "eth0") {
			t.Fatalf("ip link on %s: %v\n%s", h.netns, err, links)
		}
		if strings.Contains(string(links), "vx-") || strings.Contains(string(links), "ov-") {
			t.Fatalf("links of the removed network left on %s:\n%s", h.netns, links)
		}
	}
	if out := c.etcdctl("get", "--prefix", "--keys-only", "/netshim/"); strings.TrimSpace(out) != "" {
		t.Fatalf("keys left in etcd after the network's removal:\n%s", out)
	}
}
