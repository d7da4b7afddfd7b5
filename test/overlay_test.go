package test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netshim/netshim/internal/sandbox"
)

// The overlay tests make a cluster inside the sandbox: an underlay bridge
// (192.0.2.0/24, the sandbox on .254 routing to the upstream), one etcd
// server (Debian's etcd-server) on the sandbox's underlay address, and
// "hosts": network namespaces on the underlay, each with its own netshim
// config and state.

const etcdURL = "http://192.0.2.254:2379"

// cluster is the test's underlay and etcd.
type testCluster struct {
	t       *testing.T
	dir     string
	etcd    *exec.Cmd
	etcdLog string
}

func newCluster(t *testing.T) *testCluster {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Fatalf("etcd is not installed (Debian's etcd-server; make test installs it): %v", err)
	}
	c := &testCluster{t: t, dir: t.TempDir()}
	for _, args := range [][]string{
		{"link", "add", "ul0", "type", "bridge"},
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
	h := newHost(c.t, fmt.Sprintf("data_dir = %q\n[cluster]\netcd_endpoints = [%q]\n%s", filepath.Join(c.dir, name+"-data"), etcdURL, extra))
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

// nftCounter is the packet count of the first rule of chain in host h's
// netshim table whose text contains all of want.
func nftCounter(t *testing.T, h *host, chain string, want ...string) int {
	t.Helper()
	out, err := h.command("nft", "list", "chain", "ip", "netshim", chain).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list chain %s: %v\n%s", chain, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		ok := strings.Contains(line, "counter packets")
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			var n int
			fmt.Sscanf(line[strings.Index(line, "counter packets")+len("counter packets "):], "%d", &n)
			return n
		}
	}
	t.Fatalf("no rule with %q in chain %s:\n%s", want, chain, out)
	return 0
}

func TestOverlay(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	c := newCluster(t)
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

	sleep := []string{"sleep", "3600"}
	c1 := h1.newBundle(uniqueID(t, "c1"), sleep, "--network", "ov", "--name", "c1").mustStart()
	c2 := h2.newBundle(uniqueID(t, "c2"), sleep, "--network", "ov", "--name", "c2").mustStart()
	c3 := h3.newBundle(uniqueID(t, "c3"), sleep, "--network", "ov", "--name", "c3").mustStart()
	for _, h := range []*host{h1, h2, h3} {
		h.mustNetshim("overlay", "sync")
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

	// Out of the cluster through the local host's masquerade: the upstream
	// sees host 1's underlay address.
	l := listenIn(t, up, "203.0.113.1:8080")
	go c1.exec("timeout", "3", "nc", "203.0.113.1", "8080")
	from, err := acceptRemote(l, 5*time.Second)
	if err != nil {
		t.Fatalf("c1 -> upstream: %v", err)
	}
	if !strings.HasPrefix(from, "192.0.2.1:") {
		t.Fatalf("the upstream saw %s, want host 1's underlay address", from)
	}
}
