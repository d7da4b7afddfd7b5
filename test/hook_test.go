package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/internal/sandbox"
)

// proc is a process in a fresh netns standing in for a container: the hook
// needs only its PID and a bundle.
type proc struct {
	h      *host
	id     string
	pid    int
	bundle string
	cmd    *exec.Cmd
}

// newProc starts `unshare -n sleep` and writes a bundle with the given
// annotations (and an empty rootfs for /etc files).
func (h *host) newProc(id string, ann map[string]string) *proc {
	h.t.Helper()
	cmd := exec.Command("unshare", "-n", "sleep", "100000")
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	bundle := filepath.Join(h.dir, "bundles", id)
	os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755)
	p := &proc{h: h, id: id, pid: cmd.Process.Pid, bundle: bundle, cmd: cmd}
	p.writeSpec(ann)
	eventually(h.t, 2*time.Second, "unshare runs sleep in a netns of its own", func() bool {
		a, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p.pid))
		b, _ := os.Readlink("/proc/self/ns/net")
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid))
		return a != b && strings.HasSuffix(exe, "/sleep")
	})
	return p
}

func (p *proc) writeSpec(ann map[string]string) {
	spec := map[string]any{"ociVersion": "1.0.2", "hostname": p.id, "root": map[string]any{"path": "rootfs"}, "annotations": ann}
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(p.bundle, "config.json"), data, 0o644); err != nil {
		p.h.t.Fatal(err)
	}
}

func (p *proc) state(status string) string {
	return fmt.Sprintf(`{"ociVersion":"1.0.2","id":%q,"status":%q,"pid":%d,"bundle":%q}`, p.id, status, p.pid, p.bundle)
}

// hook runs the hook for this process; stage may be empty.
func (p *proc) hook(stage, status string) (string, error) {
	args := []string{"hook"}
	if stage != "" {
		args = append(args, stage)
	}
	out, errOut, err := p.h.netshim(p.state(status), args...)
	if out != "" {
		p.h.t.Errorf("hook %s printed on stdout: %q", stage, out)
	}
	return errOut, err
}

func (p *proc) mustSetup() {
	p.h.t.Helper()
	if errOut, err := p.hook("createRuntime", "creating"); err != nil {
		p.h.t.Fatalf("setup %s: %v: %s", p.id, err, errOut)
	}
}

func (p *proc) mustTeardown() {
	p.h.t.Helper()
	if errOut, err := p.hook("poststop", "stopped"); err != nil {
		p.h.t.Fatalf("teardown %s: %v: %s", p.id, err, errOut)
	}
}

// in runs a command in the process's netns.
func (p *proc) in(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"-t", fmt.Sprint(p.pid), "-n", "--"}, args...)...).CombinedOutput()
	return string(out), err
}

func (p *proc) mustIn(args ...string) string {
	p.h.t.Helper()
	out, err := p.in(args...)
	if err != nil {
		p.h.t.Fatalf("in %s: %s: %v\n%s", p.id, strings.Join(args, " "), err, out)
	}
	return out
}

// Every bad input is refused with one line naming the field and the value,
// a non-zero exit, and nothing left behind.
func TestHookBadInput(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	// A container that exists, for links and taken addresses.
	good := h.newProc("good", map[string]string{"netshim/name": "good"})
	good.mustSetup()

	type tc struct {
		name   string
		stdin  func(p *proc) string
		args   []string
		ann    map[string]string
		config string
		want   string
	}
	cases := []tc{
		{name: "garbage state", stdin: func(*proc) string { return "{not json" }, want: "state JSON on stdin"},
		{name: "empty state", stdin: func(*proc) string { return "" }, want: "state JSON on stdin: empty"},
		{name: "bad id", stdin: func(p *proc) string { return strings.Replace(p.state("creating"), `"id":"`+p.id, `"id":"../`+p.id, 1) }, want: `state field id "../`},
		{name: "pid type", stdin: func(p *proc) string {
			return strings.Replace(p.state("creating"), fmt.Sprintf(`"pid":%d`, p.pid), `"pid":"x"`, 1)
		}, want: "state field pid"},
		{name: "no pid", stdin: func(p *proc) string {
			return strings.Replace(p.state("creating"), fmt.Sprintf(`"pid":%d`, p.pid), `"pid":0`, 1)
		}, want: `state field pid "0": setup needs the container's pid`},
		{name: "relative bundle", stdin: func(p *proc) string { return strings.Replace(p.state("creating"), `"bundle":"/`, `"bundle":"`, 1) }, want: "state field bundle"},
		{name: "bad stage", args: []string{"hook", "prestop"}, want: `hook stage "prestop"`},
		{name: "running status", stdin: func(p *proc) string { return p.state("running") }, args: []string{"hook"}, want: `state field status "running"`},
		{name: "bad ip", ann: map[string]string{"netshim/ip": "300.1.1.1"}, want: `annotation netshim/ip = "300.1.1.1": "300.1.1.1" is not an IPv4 address`},
		{name: "ip outside", ann: map[string]string{"netshim/ip": "10.9.9.9"}, want: "address 10.9.9.9 on network bridge: outside subnet 172.17.0.0/16"},
		{name: "ip taken", ann: map[string]string{"netshim/ip": "172.17.0.2"}, want: "address 172.17.0.2 on network bridge: address already in use by container good"},
		{name: "unknown network", ann: map[string]string{"netshim/network": "nosuch"}, want: "network nosuch not found"},
		{name: "bad network name", ann: map[string]string{"netshim/network": "a/b"}, want: `annotation netshim/network = "a/b"`},
		{name: "missing link", ann: map[string]string{"netshim/links": "ghost:g"}, want: `link ghost:g: no running container named "ghost" on network bridge`},
		{name: "bad link", ann: map[string]string{"netshim/links": "-x"}, want: `annotation netshim/links = "-x"`},
		{name: "unknown annotation", ann: map[string]string{"netshim/colour": "red"}, want: `annotation netshim/colour = "red": unknown netshim annotation`},
		{name: "bad add-host", ann: map[string]string{"netshim/add-host": "nohost"}, want: `annotation netshim/add-host = "nohost": "nohost" is not host:ip`},
		{name: "bad dns", ann: map[string]string{"netshim/dns": "1.2.3"}, want: `annotation netshim/dns = "1.2.3": "1.2.3" is not an IP address`},
		{name: "name in use", ann: map[string]string{"netshim/name": "good"}, want: `container name "good" is already in use by container good`},
		{name: "bad config", config: "[bridge]\nbip = \"x\"\n", want: `bridge.bip = "x": not an IPv4 address with prefix length`},
		{name: "unknown config key", config: "[bridge]\nbipp = \"x\"\n", want: `bridge.bipp: unknown key`},
		{name: "host mode with own netns", ann: map[string]string{"netshim/network": "host"}, want: "network host: container bad has its own network namespace"},
	}
	for _, c := range cases {
		bad := h.newProc("bad", c.ann)
		stdin := bad.state("creating")
		if c.stdin != nil {
			stdin = c.stdin(bad)
		}
		args := c.args
		if args == nil {
			args = []string{"hook", "createRuntime"}
		}
		hh := h
		if c.config != "" {
			hh = newHost(t, c.config)
			hh.stateDir = h.stateDir
		}
		out, errOut, err := hh.netshim(stdin, args...)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
		}
		lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "netshim: ") || !strings.Contains(lines[0], c.want) {
			t.Errorf("%s: stderr %q, want one line with %q", c.name, errOut, c.want)
		}
		if out != "" {
			t.Errorf("%s: stdout %q", c.name, out)
		}
		if _, err := os.Stat(filepath.Join(h.stateDir, "containers", "bad.json")); err == nil {
			t.Errorf("%s: record left", c.name)
		}
		// The pair made while the address was reserved is gone too.
		if n := strings.Count(sandbox.Run(t, "ip", "-o", "link"), "veth"); n != 1 {
			t.Errorf("%s: %d veths, want good's only", c.name, n)
		}
		if out, _ := bad.in("ip", "-o", "link"); strings.Contains(out, "eth0") {
			t.Errorf("%s: eth0 left in the container: %s", c.name, out)
		}
		bad.cmd.Process.Kill()
		bad.cmd.Wait()
	}
	// A failure after the veth exists (the rootfs's /etc/hosts is a
	// dangling symlink) is undone: no veth, no record, no allocation.
	bad := h.newProc("late", nil)
	os.MkdirAll(filepath.Join(bad.bundle, "rootfs", "etc"), 0o755)
	os.Symlink("/nonexistent/hosts", filepath.Join(bad.bundle, "rootfs", "etc", "hosts"))
	errOut, err := bad.hook("createRuntime", "creating")
	if err == nil || !strings.Contains(errOut, "refusing to write") {
		t.Errorf("late failure: %v %q", err, errOut)
	}
	if n := strings.Count(sandbox.Run(t, "ip", "-o", "link"), "veth"); n != 1 {
		t.Errorf("late failure: %d veths, want good's only", n)
	}
	if out, _ := bad.in("ip", "-o", "link"); strings.Contains(out, "eth0") {
		t.Errorf("late failure left eth0 in the container: %s", out)
	}
	good.mustTeardown()
	assertClean(t, h)
	data, _ := os.ReadFile(filepath.Join(h.stateDir, "hook.log"))
	if !strings.Contains(string(data), "id=good name=good stage=createRuntime") || !strings.Contains(string(data), "error: ") {
		t.Errorf("hook.log:\n%s", data)
	}
}

// Runtimes run hooks zero, one or two times: every order works.
func TestHookOddSequences(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	a := h.newProc("a", map[string]string{"netshim/publish": "8080:80"})
	a.mustSetup()
	once := sandbox.Run(t, "nft", "-s", "list", "ruleset")
	a.mustSetup() // createRuntime twice: same address, one veth, no duplicate rule
	if out := a.mustIn("ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, "172.17.0.2/16") || strings.Count(out, "inet ") != 1 {
		t.Errorf("after two setups: %s", out)
	}
	if n := strings.Count(sandbox.Run(t, "ip", "-o", "link"), "veth"); n != 1 {
		t.Errorf("%d veths after two setups", n)
	}
	if twice := sandbox.Run(t, "nft", "-s", "list", "ruleset"); twice != once {
		t.Errorf("rules changed by a second setup:\n--- once\n%s\n--- twice\n%s", once, twice)
	}
	// The stage comes from the status when not given (crun passes "created").
	b := h.newProc("b", nil)
	if errOut, err := b.hook("", "created"); err != nil {
		t.Fatalf("status created: %v %s", err, errOut)
	}
	b.mustIn("ping", "-c1", "-W2", "172.17.0.2")
	if errOut, err := b.hook("", "stopped"); err != nil {
		t.Fatalf("status stopped: %v %s", err, errOut)
	}
	// Teardown twice, with no PID, and for an id never set up.
	a.mustTeardown()
	a.mustTeardown()
	if _, errOut, err := h.netshim(`{"ociVersion":"1.0.2","id":"never","status":"stopped","bundle":"/nonexistent"}`, "hook", "poststop"); err != nil {
		t.Errorf("unknown id: %v %s", err, errOut)
	}
	// The veth of a dead container is gone with its netns; teardown copes.
	c := h.newProc("c", nil)
	c.mustSetup()
	c.cmd.Process.Kill()
	c.cmd.Wait()
	c.mustTeardown()
	// prestart is accepted as createRuntime.
	d := h.newProc("d", nil)
	if errOut, err := d.hook("prestart", "created"); err != nil {
		t.Fatalf("prestart: %v %s", err, errOut)
	}
	d.mustTeardown()
	assertClean(t, h)
}

// daemon.json equivalents: bip, fixed_cidr, mtu, default_gateway, dns; a
// static address; add-host with host-gateway.
func TestHookDaemonOptions(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, `
[bridge]
bridge = "docker0"
bip = "192.0.2.1/24"
fixed_cidr = "192.0.2.128/25"
mtu = 1400
default_gateway = "192.0.2.254"
dns = ["203.0.113.53"]
dns_search = ["example.test"]
`)
	a := h.newProc("a", map[string]string{"netshim/add-host": "gw:host-gateway,db.test:198.51.100.7", "netshim/dns-option": "ndots:2"})
	a.mustSetup()
	out := a.mustIn("ip", "-o", "-4", "addr", "show", "eth0")
	if !strings.Contains(out, "192.0.2.128/24") {
		t.Errorf("fixed_cidr: %s", out)
	}
	if out := a.mustIn("ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1400") {
		t.Errorf("mtu: %s", out)
	}
	if out := sandbox.Run(t, "ip", "link", "show", "docker0"); !strings.Contains(out, "mtu 1400") {
		t.Errorf("bridge mtu: %s", out)
	}
	if out := a.mustIn("ip", "route"); !strings.Contains(out, "default via 192.0.2.254") {
		t.Errorf("default_gateway: %s", out)
	}
	resolv, _ := os.ReadFile(filepath.Join(a.bundle, "rootfs/etc/resolv.conf"))
	if !strings.Contains(string(resolv), "nameserver 203.0.113.53\n") || !strings.Contains(string(resolv), "search example.test\n") || !strings.Contains(string(resolv), "options ndots:2\n") {
		t.Errorf("resolv.conf:\n%s", resolv)
	}
	hosts, _ := os.ReadFile(filepath.Join(a.bundle, "rootfs/etc/hosts"))
	if !strings.Contains(string(hosts), "192.0.2.1\tgw\n") || !strings.Contains(string(hosts), "198.51.100.7\tdb.test\n") {
		t.Errorf("hosts:\n%s", hosts)
	}
	b := h.newProc("b", map[string]string{"netshim/ip": "192.0.2.77", "netshim/dns": "198.51.100.53"})
	b.mustSetup()
	if out := b.mustIn("ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, "192.0.2.77/24") {
		t.Errorf("static ip: %s", out)
	}
	if out := b.mustIn("ip", "link", "show", "eth0"); !strings.Contains(out, "02:42:c0:00:02:4d") {
		t.Errorf("mac of static ip: %s", out)
	}
	resolv, _ = os.ReadFile(filepath.Join(b.bundle, "rootfs/etc/resolv.conf"))
	if !strings.Contains(string(resolv), "nameserver 198.51.100.53\n") || strings.Contains(string(resolv), "203.0.113.53") {
		t.Errorf("--dns overrides the network's dns:\n%s", resolv)
	}
	b.mustIn("ping", "-c1", "-W2", "192.0.2.128")
	a.mustTeardown()
	b.mustTeardown()
	assertClean(t, h)
}

// Without bip, the default network takes the first pool that collides
// with no host address or route, and keeps it.
func TestHookPoolChoice(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	sandbox.Run(t, "ip", "link", "add", "dummy0", "type", "bridge")
	sandbox.Run(t, "ip", "addr", "add", "172.17.5.1/24", "dev", "dummy0")
	sandbox.Run(t, "ip", "link", "set", "dummy0", "up")
	sandbox.Run(t, "ip", "route", "add", "172.18.0.0/15", "dev", "dummy0")
	h := newHost(t, "")
	a := h.newProc("a", nil)
	a.mustSetup()
	if out := a.mustIn("ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, "172.20.0.2/16") {
		t.Errorf("pool: %s", out)
	}
	a.mustTeardown()
	sandbox.Run(t, "ip", "link", "del", "dummy0")
	b := h.newProc("b", nil)
	b.mustSetup()
	if out := b.mustIn("ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, "172.20.0.2/16") {
		t.Errorf("pool not kept once chosen: %s", out)
	}
	b.mustTeardown()
	assertClean(t, h)
}

// icc = false blocks container-to-container traffic on the bridge but not
// to the gateway; internal = true has no way out.
func TestHookICCAndInternal(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	sandbox.Uplink(t)
	h := newHost(t, `
[bridge]
icc = false
[networks.inside]
subnet = "192.0.2.0/24"
internal = true
`)
	a := h.newProc("a", nil)
	b := h.newProc("b", nil)
	a.mustSetup()
	b.mustSetup()
	b.mustIn("ping", "-c1", "-W2", "172.17.0.1")
	if out, err := b.in("ping", "-c1", "-W1", "172.17.0.2"); err == nil {
		t.Errorf("icc=false: container reached container:\n%s", out)
	}
	b.mustIn("ping", "-c1", "-W2", "203.0.113.1")
	c := h.newProc("c", map[string]string{"netshim/network": "inside"})
	d := h.newProc("d", map[string]string{"netshim/network": "inside"})
	c.mustSetup()
	d.mustSetup()
	d.mustIn("ping", "-c1", "-W2", "192.0.2.2")
	if out := d.mustIn("ip", "route"); strings.Contains(out, "default") {
		t.Errorf("internal network has a default route:\n%s", out)
	}
	if out, err := exec.Command("nsenter", "-t", fmt.Sprint(d.pid), "-n", "ip", "route", "add", "default", "via", "192.0.2.1").CombinedOutput(); err != nil {
		t.Fatalf("%s", out)
	}
	if out, err := d.in("ping", "-c1", "-W1", "203.0.113.1"); err == nil {
		t.Errorf("internal: reached the outside with a route added by hand:\n%s", out)
	}
	if out := sandbox.Run(t, "nft", "list", "ruleset"); regexp.MustCompile(`192\.0\.2\.0/24.*masquerade`).MatchString(out) {
		t.Errorf("internal network is masqueraded:\n%s", out)
	}
	for _, p := range []*proc{a, b, c, d} {
		p.mustTeardown()
	}
	assertClean(t, h)
}

// Random host ports come from ip_local_port_range (or the config's), skip
// ports reserved by netshim and ports host processes listen on; an explicit
// port a host process holds is refused.
func TestHookPortAllocation(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "ip_local_port_range = \"40000-40002\"\n")
	l, err := net.Listen("tcp4", "0.0.0.0:40000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a := h.newProc("a", map[string]string{"netshim/publish": "80"})
	a.mustSetup()
	b := h.newProc("b", map[string]string{"netshim/publish": "80,53/udp"})
	b.mustSetup()
	if out := h.mustNetshim("port", "a"); out != "80/tcp -> 0.0.0.0:40001\n" {
		t.Errorf("a: %q (40000 is listened on)", out)
	}
	if out := h.mustNetshim("port", "b"); out != "80/tcp -> 0.0.0.0:40002\n53/udp -> 0.0.0.0:40000\n" {
		t.Errorf("b: %q", out)
	}
	c := h.newProc("c", map[string]string{"netshim/publish": "80"})
	if errOut, err := c.hook("createRuntime", "creating"); err == nil || !strings.Contains(errOut, "netshim: no free host port in 40000-40002/tcp") {
		t.Errorf("exhausted range: %v %q", err, errOut)
	}
	d := h.newProc("d", map[string]string{"netshim/publish": "40000:80"})
	if errOut, err := d.hook("createRuntime", "creating"); err == nil || !strings.Contains(errOut, "netshim: port 40000/tcp is in use by a host process") {
		t.Errorf("explicit port held by a host process: %v %q", err, errOut)
	}
	e := h.newProc("e", map[string]string{"netshim/publish": "127.0.0.1:40001:80"})
	if errOut, err := e.hook("createRuntime", "creating"); err == nil || !strings.Contains(errOut, "netshim: port 40001/tcp is already allocated by a") {
		t.Errorf("overlapping host address: %v %q", err, errOut)
	}
	a.mustTeardown()
	b.mustTeardown()
	if left, _ := os.ReadDir(filepath.Join(h.stateDir, "ports")); len(left) > 0 {
		t.Error("port reservations left after teardown")
	}
	assertClean(t, h)
}

// An internal network's responder answers its own names and forwards
// nothing; a network created with --internal has no way out.
func TestHookInternalNetworkDNS(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	up := sandbox.Uplink(t)
	upstreamDNS(t, up)
	fakeResolvConf(t, "nameserver 203.0.113.1\n")
	h := newHost(t, "data_dir = \""+filepath.Join(t.TempDir(), "data")+"\"\n")
	h.mustNetshim("network", "create", "--internal", "--subnet", "192.0.2.0/24", "backend")
	h.mustNetshim("network", "create", "--subnet", "198.18.0.0/24", "front")
	a := h.newProc("a", map[string]string{"netshim/network": "backend", "netshim/name": "api", "netshim/aliases": "svc"})
	a.mustSetup()
	f := h.newProc("f", map[string]string{"netshim/network": "front", "netshim/name": "web"})
	f.mustSetup()
	ask := func(server, name string) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Timeout: 2 * time.Second}
		r, _, err := c.Exchange(m, server)
		return r, err
	}
	for _, name := range []string{"api.", "svc.", "a."} {
		if r, err := ask("192.0.2.1:53", name); err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.2" {
			t.Errorf("internal network, %s: %v %v", name, r, err)
		}
	}
	if r, err := ask("192.0.2.1:53", "outside.test."); err != nil || r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
		t.Errorf("internal network forwarded outside.test: %v %v", r, err)
	}
	if r, err := ask("198.18.0.1:53", "outside.test."); err != nil || len(r.Answer) != 1 {
		t.Errorf("front network does not forward: %v %v", r, err)
	}
	if r, err := ask("198.18.0.1:53", "api."); err != nil || len(r.Answer) != 0 {
		t.Errorf("front resolves backend's names: %v %v", r, err)
	}
	// TCP too.
	m := new(dns.Msg)
	m.SetQuestion("web.", dns.TypeA)
	if r, _, err := (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Exchange(m, "198.18.0.1:53"); err != nil || len(r.Answer) != 1 {
		t.Errorf("tcp query: %v %v", r, err)
	}
	if out := a.mustIn("ip", "route"); strings.Contains(out, "default") {
		t.Errorf("internal network has a default route:\n%s", out)
	}
	a.mustTeardown()
	f.mustTeardown()
	if r := responders(); len(r) != 0 {
		t.Errorf("responders left: %v", r)
	}
	assertClean(t, h)
}

// Teardown of a container that is still running (CNI DEL style) cuts it off
// before the hook returns: its host veth is down, the gateway no longer
// answers, the published port is withdrawn. Deleting the veth is left to a
// detached reclaimer, which leaves nothing behind, and the address can be
// handed out again at once.
func TestHookTeardownLiveContainer(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	a := h.newProc("live", map[string]string{"netshim/publish": "8080:80"})
	a.mustSetup()
	var r struct {
		Attachments []struct {
			HostVeth string   `json:"host_veth"`
			Addrs    []string `json:"addrs"`
		} `json:"attachments"`
	}
	data, err := os.ReadFile(filepath.Join(h.stateDir, "containers", a.id+".json"))
	if err != nil || json.Unmarshal(data, &r) != nil || len(r.Attachments) != 1 || r.Attachments[0].HostVeth == "" {
		t.Fatalf("record: %v %s", err, data)
	}
	rec := struct{ HostVeth, IP string }{r.Attachments[0].HostVeth, strings.Split(r.Attachments[0].Addrs[0], "/")[0]}
	a.mustIn("ping", "-c", "1", "-W", "1", "172.17.0.1")
	a.mustTeardown()
	if out, err := exec.Command("ip", "-o", "link", "show", rec.HostVeth).CombinedOutput(); err == nil && !strings.Contains(string(out), "state DOWN") {
		t.Errorf("host veth still up after teardown: %s", out)
	}
	if out, err := a.in("ping", "-c", "1", "-W", "1", "172.17.0.1"); err == nil {
		t.Errorf("torn-down container still reaches the gateway: %s", out)
	}
	if out := sandbox.Run(t, "nft", "list", "ruleset"); strings.Contains(out, "8080") {
		t.Errorf("port still published:\n%s", out)
	}
	b := h.newProc("next", map[string]string{"netshim/publish": "8080:80"})
	b.mustSetup()
	if out := b.mustIn("ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(out, rec.IP+"/") {
		t.Errorf("address %s not handed out again: %s", rec.IP, out)
	}
	waitReclaimers(t)
	if out, err := exec.Command("ip", "link", "show", rec.HostVeth).CombinedOutput(); err == nil {
		t.Errorf("reclaimer left the veth: %s", out)
	}
	b.mustTeardown()
	assertClean(t, h)
}

// The network has no IPv6: as in Docker 26 and later, the container's eth0
// has none, lo keeps ::1 and /etc/hosts lists it, and the host end of its
// veth gets no link-local address, so no duplicate address detection or MLD
// report is flooded by the bridge to every other container.
func TestHookNoIPv6LinkLocal(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	a := h.newProc("v6a", nil)
	a.mustSetup()
	b := h.newProc("v6b", nil)
	b.mustSetup()
	time.Sleep(300 * time.Millisecond) // addrconf would have added them by now
	if out := a.mustIn("ip", "-6", "-o", "addr"); !strings.Contains(out, ": lo") || !strings.Contains(out, "inet6 ::1/128") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("the container's IPv6 addresses, want lo's ::1 alone:\n%s", out)
	}
	if out := a.mustIn("cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"); strings.TrimSpace(out) != "1" {
		t.Errorf("IPv6 on on the container's eth0: disable_ipv6=%s", out)
	}
	if out := a.mustIn("ip", "-o", "-4", "addr", "show", "dev", "lo"); !strings.Contains(out, "127.0.0.1/8") {
		t.Errorf("container lo not up with 127.0.0.1: %s", out)
	}
	// A server that binds each address "localhost" names can.
	a.mustIn("python3", "-c", `import socket; socket.socket(socket.AF_INET6).bind(("::1", 0))`)
	if hosts, _ := os.ReadFile(filepath.Join(a.bundle, "rootfs/etc/hosts")); !strings.Contains(string(hosts), "::1\tlocalhost ip6-localhost ip6-loopback\n") {
		t.Errorf("/etc/hosts lacks ::1:\n%s", hosts)
	}
	for _, l := range strings.Split(sandbox.Run(t, "ip", "-6", "-o", "addr"), "\n") {
		if strings.Contains(l, "veth") {
			t.Errorf("a host veth has an IPv6 address: %s", l)
		}
	}
	a.mustIn("ping", "-c", "1", "-W", "1", "172.17.0.3")
	a.mustTeardown()
	b.mustTeardown()
	assertClean(t, h)
}

// Host ends get their MAC from the kernel, each its own (udev, networkd
// and NetworkManager rules that match a MAC then match one link), and
// containers reach each other and the gateway.
func TestHookHostEndsOwnMACs(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	a := h.newProc("maca", nil)
	a.mustSetup()
	b := h.newProc("macb", nil)
	b.mustSetup()
	mac := func(l string) string {
		i := strings.Index(l, "link/ether ")
		if i < 0 {
			t.Fatalf("no MAC in %q", l)
		}
		return strings.Fields(l[i:])[1]
	}
	seen := map[string]bool{mac(sandbox.Run(t, "ip", "-o", "link", "show", "netshim0")): true}
	ports := strings.Split(strings.TrimSpace(sandbox.Run(t, "ip", "-o", "link", "show", "master", "netshim0")), "\n")
	if len(ports) != 2 {
		t.Fatalf("want 2 ports on the bridge, got:\n%s", strings.Join(ports, "\n"))
	}
	for _, p := range ports {
		if m := mac(p); seen[m] {
			t.Errorf("host end shares MAC %s with the bridge or another host end: %s", m, p)
		} else {
			seen[m] = true
		}
	}
	a.mustIn("ping", "-c", "1", "-W", "1", "172.17.0.3")
	b.mustIn("ping", "-c", "1", "-W", "1", "172.17.0.2")
	a.mustIn("ping", "-c", "1", "-W", "1", "172.17.0.1")
	// What an operator reads is what is there: the set of bridges lists
	// their names.
	if out := sandbox.Run(t, "nft", "list", "set", "ip", "netshim", "bridges"); !strings.Contains(out, `elements = { "netshim0" }`) {
		t.Errorf("the bridges set as nft prints it:\n%s", out)
	}
	a.mustTeardown()
	b.mustTeardown()
	assertClean(t, h)
}

// A bridge of that name made before (by an earlier version, or by hand
// with the defaults) is taken as it is, with multicast snooping turned off.
func TestHookExistingBridge(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	sandbox.Run(t, "ip", "link", "add", "netshim0", "type", "bridge", "mcast_snooping", "1")
	h := newHost(t, "")
	a := h.newProc("old", nil)
	a.mustSetup()
	if out := sandbox.Run(t, "ip", "-d", "link", "show", "netshim0"); !strings.Contains(out, "mcast_snooping 0") {
		t.Errorf("multicast snooping left on:\n%s", out)
	}
	a.mustIn("ping", "-c", "1", "-W", "1", "172.17.0.1")
	a.mustTeardown()
	waitReclaimers(t)
	sandbox.Run(t, "ip", "link", "del", "netshim0")
}

// A bridge deleted by hand after the network's first container made it:
// the next setup finds no bridge of that name, makes it again under the
// lock, and attaches its pair there.
func TestHookBridgeDeletedByHand(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	a := h.newProc("gone1", nil)
	a.mustSetup()
	sandbox.Run(t, "ip", "link", "del", "netshim0")
	b := h.newProc("gone2", nil)
	b.mustSetup()
	if out := sandbox.Run(t, "ip", "-o", "link", "show", "master", "netshim0"); !strings.Contains(out, "veth") {
		t.Errorf("no veth on the bridge made again:\n%s", out)
	}
	b.mustIn("ping", "-c", "1", "-W", "1", "172.17.0.1")
	a.mustTeardown()
	b.mustTeardown()
	assertClean(t, h)
}

// Teardowns hand their slow tail to the host's one reclaimer: the links
// they set aside are deleted, the reclaimer retires once idle, taking its
// socket with it, and the next teardown starts another.
func TestHookReclaimers(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	ours := func() int {
		n := 0
		for _, p := range netshimProcs("reclaim") {
			if strings.Contains(p, h.stateDir) {
				n++
			}
		}
		return n
	}
	sock := filepath.Join(h.stateDir, "reclaim.sock")
	for round := 0; round < 2; round++ {
		var ps []*proc
		for i := 0; i < 5; i++ {
			p := h.newProc(fmt.Sprintf("r%d-%d", round, i), map[string]string{"netshim/publish": fmt.Sprintf("%d:80,%d:53/udp", 9000+i, 9100+i)})
			p.mustSetup()
			ps = append(ps, p)
		}
		for _, p := range ps {
			p.mustTeardown() // alive: each host veth is set aside for the reclaimer
			if n := ours(); n != 1 {
				t.Errorf("round %d: %d reclaimers after a teardown, want 1", round, n)
			}
		}
		assertClean(t, h)
		eventually(t, 5*time.Second, "the reclaimer retired", func() bool {
			_, err := os.Lstat(sock)
			return ours() == 0 && errors.Is(err, fs.ErrNotExist)
		})
	}
	// A reclaimer whose state dir is removed (a finished test's) exits
	// once idle instead of waiting for its lock for ever.
	p := h.newProc("gone", nil)
	p.mustSetup()
	p.mustTeardown()
	if n := ours(); n != 1 {
		t.Fatalf("%d reclaimers after the teardown, want 1", n)
	}
	if err := os.RemoveAll(h.stateDir); err != nil {
		t.Fatal(err)
	}
	eventually(t, 8*time.Second, "the reclaimer of a removed state dir exited", func() bool { return ours() == 0 })
}

// A teardown that hands off while the reclaimer waits for the lock to
// retire (the teardown holds it): the reclaimer takes that handoff before
// it goes, and the link set aside is deleted.
func TestHookReclaimerRetiring(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	a, b := h.newProc("retire1", nil), h.newProc("retire2", nil)
	a.mustSetup()
	b.mustSetup()
	a.mustTeardown() // starts the reclaimer, idle from now on
	waitReclaimers(t)
	td, errOut := b.hookCmd("poststop", "stopped", "stop:teardown:detached")
	if !stoppedOrGone(td.Process.Pid) {
		t.Fatalf("the teardown did not stop under the lock: %s", errOut)
	}
	// Past its linger (2 s), the reclaimer blocks on the lock to retire:
	// /proc/locks shows a waiter on the state dir's lock file.
	var lockFile unix.Stat_t
	if err := unix.Stat(filepath.Join(h.stateDir, "lock"), &lockFile); err != nil {
		t.Fatal(err)
	}
	eventually(t, 6*time.Second, "the reclaimer waits for the lock", func() bool {
		locks, _ := os.ReadFile("/proc/locks")
		for _, l := range strings.Split(string(locks), "\n") {
			if f := strings.Fields(l); len(f) > 6 && f[1] == "->" && strings.HasSuffix(f[6], fmt.Sprintf(":%d", lockFile.Ino)) {
				return true
			}
		}
		return false
	})
	td.Process.Signal(syscall.SIGCONT)
	if err, hung := waitBounded(td, 10*time.Second); hung || err != nil {
		t.Fatalf("the teardown: %v %s", err, errOut)
	}
	waitReclaimers(t)
	assertClean(t, h)
}
