package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netshim/netshim/internal/sandbox"
)

var sleeper = []string{"sleep", "3600"}

// The core acceptance run: two containers on the default bridge, a link,
// NAT to an upstream, none and host modes, and nothing left afterwards.
func TestRuncDefaultBridge(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	upNS := sandbox.Uplink(t)
	h := newHost(t, "")
	db := h.newBundle(uniqueID(t, "db"), sleeper, "--name", "db_wordpress").mustStart()
	web := h.newBundle(uniqueID(t, "web"), sleeper, "--name", "web", "--link", "db_wordpress:db").mustStart()

	// Addresses and MACs as Docker gives them.
	for _, c := range []struct {
		c       *container
		ip, mac string
	}{{db, "172.17.0.2/16", "02:42:ac:11:00:02"}, {web, "172.17.0.3/16", "02:42:ac:11:00:03"}} {
		out := c.c.mustExec("ip", "addr", "show", "eth0")
		if !strings.Contains(out, "inet "+c.ip+" ") || !strings.Contains(out, "link/ether "+c.mac) {
			t.Errorf("%s eth0:\n%s", c.c.id, out)
		}
	}
	// The bridge holds the gateway and both host ends, named veth + 7 hex.
	if out := sandbox.Run(t, "ip", "-o", "addr", "show", "netshim0"); !strings.Contains(out, "inet 172.17.0.1/16") {
		t.Errorf("bridge address: %s", out)
	}
	// Multicast floods, as on a plain switch: no snooping (see EnsureBridge).
	if out := sandbox.Run(t, "ip", "-d", "link", "show", "netshim0"); !strings.Contains(out, "mcast_snooping 0") {
		t.Errorf("bridge multicast snooping on:\n%s", out)
	}
	ports := sandbox.Run(t, "ip", "-o", "link", "show", "master", "netshim0")
	if n := strings.Count(ports, ": veth"); n != 2 {
		t.Errorf("want 2 veth ports on the bridge, got:\n%s", ports)
	}

	// Both ways on the bridge, and from the sandbox ("the host").
	db.mustExec("ping", "-c1", "-W2", "172.17.0.3")
	web.mustExec("ping", "-c1", "-W2", "172.17.0.2")
	web.mustExec("ping", "-c1", "-W2", "172.17.0.1")
	sandbox.Run(t, "ping", "-c1", "-W2", "172.17.0.2")
	sandbox.Run(t, "ping", "-c1", "-W2", "172.17.0.3")

	// Out to the "internet": the upstream has no route back to 172.17/16,
	// so a reply proves masquerade; the listener sees the uplink address.
	web.mustExec("ping", "-c1", "-W2", "203.0.113.1")
	l := listenIn(t, upNS, "203.0.113.1:8000")
	done := make(chan string, 1)
	go func() {
		out, _ := web.exec("sh", "-c", "echo hi | nc 203.0.113.1 8000")
		done <- out
	}()
	src, err := acceptRemote(l, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if src != "198.51.100.1" {
		t.Errorf("upstream saw source %s, want the sandbox's uplink 198.51.100.1", src)
	}
	if out := <-done; !strings.Contains(out, "you are 198.51.100.1") {
		t.Errorf("container got %q", out)
	}
	if out := sandbox.Run(t, "sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(out) != "1" {
		t.Errorf("ip_forward = %s", out)
	}
	nft := sandbox.Run(t, "nft", "list", "table", "ip", "netshim")
	if !strings.Contains(nft, `ip saddr 172.17.0.0/16 oifname != "netshim0"`) || !strings.Contains(nft, "masquerade") {
		t.Errorf("masquerade rule:\n%s", nft)
	}

	// --link db_wordpress:db: resolves through /etc/hosts.
	hosts := web.mustExec("cat", "/etc/hosts")
	if !strings.Contains(hosts, "172.17.0.2\tdb db_wordpress\n") || !strings.Contains(hosts, "172.17.0.3\t"+web.id+" web\n") {
		t.Errorf("web /etc/hosts:\n%s", hosts)
	}
	web.mustExec("ping", "-c1", "-W2", "db")

	// none: only lo.
	none := h.newBundle(uniqueID(t, "none"), sleeper, "--network", "none").mustStart()
	if out := none.mustExec("ip", "-o", "link"); strings.Count(out, "\n") != 1 || !strings.Contains(out, "lo:") || !strings.Contains(out, "UP") {
		t.Errorf("none mode links:\n%s", out)
	}
	// IPv6 on lo alone, as in Docker 26 and later, and /etc/hosts lists ::1.
	for _, c := range []*container{web, none} {
		if out := c.mustExec("ip", "-o", "-6", "addr"); strings.Count(out, "inet6") != 1 || !strings.Contains(out, "inet6 ::1/128") {
			t.Errorf("%s's IPv6 addresses, want lo's ::1 alone:\n%s", c.id, out)
		}
		if out := c.mustExec("cat", "/etc/hosts"); !strings.Contains(out, "::1\tlocalhost ip6-localhost ip6-loopback\n") {
			t.Errorf("%s's /etc/hosts lacks ::1:\n%s", c.id, out)
		}
	}
	// A container whose own sysctls turn IPv6 off: no ::1 anywhere.
	nov6 := h.newBundle(uniqueID(t, "nov6"), sleeper)
	setSysctl(t, nov6.bundle, "net.ipv6.conf.all.disable_ipv6", "1")
	nov6.mustStart()
	if out := nov6.mustExec("ip", "-o", "-6", "addr"); strings.TrimSpace(out) != "" {
		t.Errorf("IPv6 addresses with IPv6 off:\n%s", out)
	}
	if out := nov6.mustExec("cat", "/etc/hosts"); strings.Contains(out, "::1") || !strings.Contains(out, "127.0.0.1\tlocalhost\n") {
		t.Errorf("/etc/hosts with IPv6 off:\n%s", out)
	}
	// host: the sandbox's own interfaces.
	hostc := h.newBundle(uniqueID(t, "host"), sleeper, "--network", "host").mustStart()
	if out := hostc.mustExec("ip", "-o", "link"); !strings.Contains(out, "netshim0") || !strings.Contains(out, "uplink") {
		t.Errorf("host mode links:\n%s", out)
	}

	out := h.mustNetshim("ps")
	for _, want := range []string{"db_wordpress", "172.17.0.2/16", "02:42:ac:11:00:02", "web", "none", "host"} {
		if !strings.Contains(out, want) {
			t.Errorf("ps lacks %q:\n%s", want, out)
		}
	}
	var ep map[string]any
	if err := json.Unmarshal([]byte(h.mustNetshim("inspect", "web")), &ep); err != nil || ep["IPAddress"] != "172.17.0.3" || ep["Gateway"] != "172.17.0.1" ||
		ep["Network"] != "bridge" || ep["MacAddress"] != "02:42:ac:11:00:03" || ep["Bridge"] != "netshim0" || ep["ContainerVeth"] != "eth0" {
		t.Errorf("inspect web: %v %v", ep, err)
	} else if veth, _ := ep["HostVeth"].(string); veth == "" || !strings.Contains(sandbox.Run(t, "ip", "-o", "link", "show", "master", "netshim0"), veth+"@") {
		t.Errorf("inspect web: host veth %q is not on netshim0", veth)
	}

	for _, c := range []*container{db, web, none, nov6, hostc} {
		c.stop()
	}
	assertClean(t, h)
}

// assertClean checks that nothing netshim made for containers is left:
// no veth, no netshim table or chain, no allocation, no record.
func assertClean(t *testing.T, h *host) {
	t.Helper()
	if out := sandbox.Run(t, "nft", "list", "ruleset"); strings.Contains(strings.ToLower(out), "netshim") {
		t.Errorf("rules left:\n%s", out)
	}
	assertCleanLinks(t, h)
}

// assertCleanLinks is assertClean without the firewall.
func assertCleanLinks(t *testing.T, h *host) {
	t.Helper()
	// Teardown leaves deleting host veths to the reclaimer, and a veth
	// whose container netns is being destroyed is removed by the kernel's
	// cleanup: neither is waited for by the hook.
	waitReclaimers(t)
	out := ""
	if !waitFor(2*time.Second, func() bool {
		out = sandbox.Run(t, "ip", "-o", "link")
		return !strings.Contains(out, "veth")
	}) {
		t.Errorf("veth left:\n%s", out)
	}
	recs, _ := filepath.Glob(filepath.Join(h.stateDir, "containers", "*.json"))
	if len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
	addrs, _ := filepath.Glob(filepath.Join(h.stateDir, "networks", "*.addrs", "*"))
	if len(addrs) != 0 {
		t.Errorf("allocations left: %v", addrs)
	}
}

// setSysctl sets one of the bundle's linux.sysctl, as a user's config.json may.
func setSysctl(t *testing.T, bundle, key, value string) {
	t.Helper()
	path := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	linux, _ := spec["linux"].(map[string]any)
	sysctl, _ := linux["sysctl"].(map[string]any)
	if sysctl == nil {
		sysctl = map[string]any{}
	}
	sysctl[key] = value
	linux["sysctl"] = sysctl
	if data, err = json.Marshal(spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
