package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netshim/netshim/internal/sandbox"
)

func TestMultiNetworkNftables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testMultiNetwork(t, "nftables")
}

func TestMultiNetworkIptables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testMultiNetwork(t, "iptables")
}

// testMultiNetwork: a container on frontend and backend (interfaces eth0
// and eth1, in that order) reaches a frontend-only and a backend-only
// container by name, each network's names answering with the address on
// the network the query came from, aliases per network; the two others do
// not reach each other; the default route goes where gw-priority, or the
// order, says; teardown leaves nothing.
func testMultiNetwork(t *testing.T, backend string) {
	sandbox.Uplink(t)
	h := newHost(t, fmt.Sprintf(`firewall = %q
data_dir = %q
[networks.frontend]
subnet = "10.81.0.0/24"
bridge = "br.front"
[networks.backend]
subnet = "10.82.0.0/24"
`, backend, filepath.Join(t.TempDir(), "data")))
	// web publishes a port on every address, 127.0.0.1 too: its bridge,
	// whose name holds a dot, gets route_localnet.
	web := h.newBundle(uniqueID(t, "web"), sleeper, "--name", "web", "--network", "frontend",
		"--network", "name=backend,alias=api,ip=10.82.0.50", "-p", "8080:80").mustStart()
	if out := sandbox.Run(t, "cat", "/proc/sys/net/ipv4/conf/br.front/route_localnet"); strings.TrimSpace(out) != "1" {
		t.Errorf("route_localnet of br.front: %s", out)
	}
	fonly := h.newBundle(uniqueID(t, "fonly"), sleeper, "--name", "fonly", "--network", "frontend", "--mac-address", "02:00:0a:51:00:99").mustStart()
	bonly := h.newBundle(uniqueID(t, "bonly"), sleeper, "--name", "bonly", "--network", "backend").mustStart()
	prio := h.newBundle(uniqueID(t, "prio"), sleeper, "--name", "prio", "--network", "frontend",
		"--network", "name=backend,gw-priority=10").mustStart()

	if out := web.mustExec("ip", "-o", "-4", "addr"); !strings.Contains(out, "eth0    inet 10.81.0.2/24") || !strings.Contains(out, "eth1    inet 10.82.0.50/24") {
		t.Errorf("web's interfaces:\n%s", out)
	}
	if out := fonly.mustExec("ip", "link", "show", "eth0"); !strings.Contains(out, "link/ether 02:00:0a:51:00:99") {
		t.Errorf("fonly's --mac-address:\n%s", out)
	}
	for c, want := range map[*container]string{web: "default via 10.81.0.1 dev eth0", prio: "default via 10.82.0.1 dev eth1"} {
		if out := c.mustExec("ip", "route"); !strings.Contains(out, want+" ") || strings.Count(out, "default") != 1 {
			t.Errorf("%s's default route: %q, want %q", c.id, out, want)
		}
	}
	// By name, from each side; the answer is the address on the asker's
	// network; an alias is of its own network only.
	web.mustExec("ping", "-c1", "-W2", "fonly")
	web.mustExec("ping", "-c1", "-W2", "bonly")
	fonly.mustExec("ping", "-c1", "-W2", "web")
	bonly.mustExec("ping", "-c1", "-W2", "api")
	for _, c := range []struct {
		from       *container
		name, want string
	}{{fonly, "web", "10.81.0.2"}, {bonly, "web", "10.82.0.50"}, {bonly, "api", "10.82.0.50"}, {web, "bonly", "10.82.0.2"}} {
		if out := c.from.mustExec("nslookup", c.name); !strings.Contains(out, "Address: "+c.want) || strings.Count(out, "Address: 10.8") != 1 {
			t.Errorf("%s resolving %s:\n%s", c.from.id, c.name, out)
		}
	}
	if out, err := fonly.exec("nslookup", "api"); err == nil && strings.Contains(out, "10.82.0.50") {
		t.Errorf("frontend resolves backend's alias:\n%s", out)
	}
	if out, err := fonly.exec("nslookup", "bonly"); err == nil && strings.Contains(out, "10.82") {
		t.Errorf("frontend resolves a backend-only name:\n%s", out)
	}

	// The frontend-only container does not reach the backend-only one;
	// the probe proves its packets reached the host.
	var front struct{ Bridge string }
	if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "frontend")), &front); err != nil {
		t.Fatal(err)
	}
	sandbox.Run(t, "nsenter", "-t", fmt.Sprint(fonly.pid()), "-n", "ip", "route", "add", "10.82.0.0/24", "via", "10.81.0.1")
	p := &probes{t: t}
	p.add("front-to-back", "pre", fmt.Sprintf(`iifname %q ip daddr 10.82.0.2`, front.Bridge))
	p.install()
	if out, err := fonly.exec("ping", "-c1", "-W1", "10.82.0.2"); err == nil {
		t.Errorf("frontend reached backend:\n%s", out)
	} else if n := p.count("front-to-back"); n == 0 {
		t.Error("frontend -> backend: the probe never reached the host")
	}
	sandbox.Run(t, "nft", "delete", "table", "ip", "probe")

	var ep struct {
		Networks map[string]struct {
			Interface, IPAddress, MacAddress string
			DNSNames                         []string
			DefaultRoute                     bool
		}
	}
	if err := json.Unmarshal([]byte(h.mustNetshim("inspect", "web")), &ep); err != nil {
		t.Fatal(err)
	}
	if f, b := ep.Networks["frontend"], ep.Networks["backend"]; f.Interface != "eth0" || f.IPAddress != "10.81.0.2" || !f.DefaultRoute ||
		b.Interface != "eth1" || b.IPAddress != "10.82.0.50" || b.DefaultRoute || !strings.Contains(strings.Join(b.DNSNames, ","), "api") ||
		strings.Contains(strings.Join(f.DNSNames, ","), "api") || f.MacAddress == b.MacAddress {
		t.Errorf("inspect web: %+v", ep.Networks)
	}
	if out := h.mustNetshim("ps"); !strings.Contains(out, "frontend,backend") || !strings.Contains(out, "10.81.0.2/24,10.82.0.50/24") {
		t.Errorf("ps:\n%s", out)
	}
	if out := web.mustExec("cat", "/etc/hosts"); !strings.Contains(out, "10.81.0.2\t") || !strings.Contains(out, "10.82.0.50\t") {
		t.Errorf("web's /etc/hosts:\n%s", out)
	}
	for _, name := range []string{"frontend", "backend"} {
		var info struct {
			Containers map[string]struct{ Name string }
		}
		if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", name)), &info); err != nil || info.Containers[web.id].Name != "web" {
			t.Errorf("network inspect %s: %+v %v", name, info, err)
		}
	}

	// Refused with one line, nothing left.
	for _, bad := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--network", "frontend", "--network", "frontend"}, "network frontend is given twice"},
		{[]string{"--network", "host", "--network", "frontend"}, "host and none cannot be combined"},
		{[]string{"--network", "name=backend,colour=blue"}, `unknown option "colour"`},
		{[]string{"--network", "frontend", "--network", "name=backend,ip=10.82.0.50"}, "10.82.0.50"},
	} {
		c := h.newBundle(uniqueID(t, "bad"), sleeper, "--network", "frontend")
		_, errOut, err := h.netshim("", append([]string{"bundle", c.bundle}, bad.flags...)...)
		if err == nil {
			err = c.start()
		} else {
			err = fmt.Errorf("%s", errOut)
		}
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: %v", bad.flags, err)
		}
	}
	// The taken address was refused after the first network was reserved:
	// nothing of it is left.
	if out := h.mustNetshim("ps"); strings.Count(out, "\n") != 5 {
		t.Errorf("ps after refusals:\n%s", out)
	}

	for _, c := range []*container{web, fonly, bonly, prio} {
		c.stop()
	}
	waitFor(2*time.Second, func() bool { return len(responders()) == 0 })
	assertClean(t, h)
	if r := responders(); len(r) != 0 {
		t.Errorf("responders left: %v", r)
	}
}

func TestNetworkConnectNftables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testNetworkConnect(t, "nftables")
}

func TestNetworkConnectIptables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testNetworkConnect(t, "iptables")
}

// testNetworkConnect: `network connect` attaches a running container to
// another network, whose containers then resolve and reach it by name (and
// it them) at once; `disconnect` takes it off, name, interface, address and
// all, its other network untouched; bad cases change nothing; a connect
// killed at each step is taken back by gc; poststop after a live connect
// leaves nothing.
func testNetworkConnect(t *testing.T, backend string) {
	sandbox.Uplink(t)
	h := newHost(t, fmt.Sprintf(`firewall = %q
data_dir = %q
[networks.a]
subnet = "10.83.0.0/24"
[networks.b]
subnet = "10.84.0.0/24"
`, backend, filepath.Join(t.TempDir(), "data")))
	c1 := h.newBundle(uniqueID(t, "c1"), sleeper, "--name", "c1", "--network", "a").mustStart()
	c2 := h.newBundle(uniqueID(t, "c2"), sleeper, "--name", "c2", "--network", "b").mustStart()
	if _, err := c2.exec("nslookup", "c1"); err == nil {
		t.Fatal("c1 resolves on b before it is connected")
	}

	h.mustNetshim("network", "connect", "--alias", "one", "b", "c1")
	// At once: the command has returned, the names answer and the
	// interface carries traffic.
	c2.mustExec("ping", "-c1", "-W1", "c1")
	c2.mustExec("ping", "-c1", "-W1", "one")
	c1.mustExec("ping", "-c1", "-W1", "c2")
	if out := c1.mustExec("ip", "-o", "-4", "addr"); !strings.Contains(out, "eth0    inet 10.83.0.2/24") || !strings.Contains(out, "eth1    inet 10.84.0.3/24") {
		t.Errorf("c1 after connect:\n%s", out)
	}
	if out := c1.mustExec("ip", "route"); !strings.Contains(out, "default via 10.83.0.1 dev eth0") || strings.Count(out, "default") != 1 {
		t.Errorf("c1's routes after connect (the default route stays):\n%s", out)
	}
	var info struct {
		Containers map[string]struct{ Name, IPv4Address string }
	}
	if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "b")), &info); err != nil || info.Containers[c1.id].IPv4Address != "10.84.0.3/24" {
		t.Errorf("network inspect b: %+v %v", info, err)
	}
	if out := c1.mustExec("cat", "/etc/hosts"); !strings.Contains(out, "10.83.0.2\t") || !strings.Contains(out, "10.84.0.3\t") || !strings.Contains(out, "::1\tlocalhost") {
		t.Errorf("c1's /etc/hosts after connect:\n%s", out)
	}
	// A container of the default network (no DNS there) connected to a
	// user network: its resolv.conf now names that network's responder.
	c3 := h.newBundle(uniqueID(t, "c3"), sleeper, "--name", "c3").mustStart()
	h.mustNetshim("network", "connect", "--ip", "10.84.0.77", "b", "c3")
	if out := c3.mustExec("cat", "/etc/resolv.conf"); !strings.Contains(out, "nameserver 10.84.0.1") {
		t.Errorf("c3's resolv.conf after connect:\n%s", out)
	}
	c3.mustExec("ping", "-c1", "-W1", "c2")
	if out := c2.mustExec("nslookup", "c3"); !strings.Contains(out, "Address: 10.84.0.77") {
		t.Errorf("c3 connected with --ip:\n%s", out)
	}
	c3.stop()

	// Bad cases: one line each, nothing changed.
	before := h.mustNetshim("ps")
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"connect", "b", "c1"}, "container c1 is already attached to network b"},
		{[]string{"connect", "nonet", "c1"}, "network nonet not found"},
		{[]string{"connect", "a", "nobody"}, "no such container: nobody"},
		{[]string{"connect", "--ip", "10.83.0.2", "a", "c2"}, "address 10.83.0.2 on network a: address already in use by container"},
		{[]string{"disconnect", "a", "c2"}, "container c2 is not connected to network a"},
		{[]string{"connect", "--ip", "10.0.0.1/24", "a", "c2"}, `--ip: "10.0.0.1/24" is not an IPv4 address`},
	} {
		_, errOut, err := h.netshim("", append([]string{"network"}, bad.args...)...)
		if err == nil || !strings.Contains(errOut, bad.want) || strings.Count(strings.TrimSpace(errOut), "\n") > 0 {
			t.Errorf("network %v: %v %q", bad.args, err, errOut)
		}
	}
	if after := h.mustNetshim("ps"); after != before {
		t.Errorf("a refused command changed things:\n%s\n%s", before, after)
	}

	h.mustNetshim("network", "disconnect", "b", "c1")
	if out, err := c2.exec("nslookup", "c1"); err == nil {
		t.Errorf("c1 still resolves on b:\n%s", out)
	}
	if out := c1.mustExec("cat", "/etc/hosts"); strings.Contains(out, "10.84.0.3") || !strings.Contains(out, "::1\tlocalhost") {
		t.Errorf("c1's /etc/hosts after disconnect:\n%s", out)
	}
	if out := c1.mustExec("ip", "-o", "link"); strings.Contains(out, "eth1") {
		t.Errorf("c1 keeps eth1:\n%s", out)
	}
	c1.mustExec("ping", "-c1", "-W1", "10.83.0.1") // a untouched
	if out := sandbox.Run(t, "ls", filepath.Join(h.stateDir, "networks", "b.addrs")); strings.Contains(out, "10.84.0.3") {
		t.Errorf("c1's address on b is still held: %s", out)
	}
	// Off its last network, a container keeps lo only.
	h.mustNetshim("network", "disconnect", "a", "c1")
	if out := c1.mustExec("ip", "-o", "link"); strings.Contains(out, "eth") {
		t.Errorf("c1 off every network:\n%s", out)
	}
	h.mustNetshim("network", "connect", "a", "c1")
	if out := c1.mustExec("ip", "route"); !strings.Contains(out, "default via 10.83.0.1 dev eth0") {
		t.Errorf("c1 connected again, with no default route before:\n%s", out)
	}

	// Killed at each step, then gc: nothing half-attached.
	for _, point := range []string{"connect:record", "setup:veth", "connect:attached"} {
		cmd := exec.Command(netshimBin, "--config", h.config, "--state-dir", h.stateDir, "network", "connect", "b", "c1")
		cmd.Env = append(os.Environ(), "NETSHIM_FAULT="+point)
		if err := cmd.Run(); err == nil {
			t.Fatalf("connect with fault %s was not killed", point)
		}
		out := h.mustNetshim("gc")
		if !strings.Contains(out, "its connect to network b was killed; taken back") {
			t.Errorf("gc after a connect killed at %s:\n%s", point, out)
		}
		if out := c1.mustExec("ip", "-o", "link"); strings.Contains(out, "eth1") {
			t.Errorf("after a connect killed at %s and gc: c1 has\n%s", point, out)
		}
		if out := sandbox.Run(t, "ls", filepath.Join(h.stateDir, "networks", "b.addrs")); strings.TrimSpace(out) != "10.84.0.2" { // c2's only
			t.Errorf("after a connect killed at %s and gc: b's allocations %s", point, out)
		}
		if _, err := c2.exec("nslookup", "c1"); err == nil {
			t.Errorf("after a connect killed at %s and gc: c1 resolves on b", point)
		}
	}
	// Without gc: the next connect takes the killed one back itself.
	killed := exec.Command(netshimBin, "--config", h.config, "--state-dir", h.stateDir, "network", "connect", "b", "c1")
	killed.Env = append(os.Environ(), "NETSHIM_FAULT=connect:attached")
	if err := killed.Run(); err == nil {
		t.Fatal("connect with a fault was not killed")
	}
	h.mustNetshim("network", "connect", "b", "c1")
	c2.mustExec("ping", "-c1", "-W1", "c1")
	if out := c1.mustExec("ip", "-o", "link"); strings.Count(out, "eth1") != 1 || strings.Contains(out, "eth2") {
		t.Errorf("c1 after a killed connect and a connect again:\n%s", out)
	}
	h.mustNetshim("network", "disconnect", "b", "c1")

	// A container whose process is gone (its poststop not run yet) is not
	// running: refused, with one line.
	c4 := h.newBundle(uniqueID(t, "c4"), sleeper, "--name", "c4", "--network", "a").mustStart()
	h.runc("kill", c4.id, "KILL")
	waitFor(2*time.Second, func() bool {
		out, _ := h.runc("state", c4.id)
		return !strings.Contains(out, `"running"`)
	})
	if _, errOut, err := h.netshim("", "network", "connect", "b", "c4"); err == nil || !strings.Contains(errOut, "container c4 is not running") {
		t.Errorf("connect of a stopped container: %v %q", err, errOut)
	}
	c4.stop()

	// Poststop after a live connect leaves nothing.
	h.mustNetshim("network", "connect", "b", "c1")
	c1.stop()
	c2.stop()
	waitFor(2*time.Second, func() bool { return len(responders()) == 0 })
	assertClean(t, h)
}
