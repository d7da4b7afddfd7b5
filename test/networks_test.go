package test

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/internal/sandbox"
	"github.com/netshim/netshim/netsetup"
)

// upstreamDNS serves outside.test. A 203.0.113.80 on 203.0.113.1:53 in the
// upstream netns, standing in for the host's resolver.
func upstreamDNS(t *testing.T, nsPath string) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var pc net.PacketConn
	if err := netsetup.Do(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", "203.0.113.1:53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		switch q := r.Question[0]; {
		case q.Name != "outside.test.":
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(203, 0, 113, 80)})
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
}

// fakeResolvConf puts a resolv.conf naming the upstream over the sandbox's
// /etc/resolv.conf (the mount namespace is the test's own).
func fakeResolvConf(t *testing.T, content string) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte(content), 0o644)
	if err := unix.Mount(p, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind resolv.conf: %v", err)
	}
}

// responders lists running DNS responder processes.
func responders() []string { return netshimProcs("dns-serve") }

// netshimProcs lists the command lines of netshim helpers doing what.
func netshimProcs(what string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, _ := os.ReadFile(p)
		if args := strings.Split(string(data), "\x00"); slices.Contains(args, what) {
			out = append(out, strings.Join(args, " "))
		}
	}
	return out
}

// waitReclaimers waits until the reclaimer has deleted the links hooks
// set aside: a hook returns once traffic has stopped, and leaves the slow
// deletions (links, the release of netfilter objects) to the reclaimer.
func waitReclaimers(t *testing.T) {
	t.Helper()
	group := strconv.Itoa(netsetup.DoomedGroup)
	eventually(t, 5*time.Second, "the links set aside are deleted", func() bool {
		return strings.TrimSpace(sandbox.Run(t, "ip", "-o", "link", "show", "group", group)) == ""
	})
}

// The seed's second half: a user network where containers find each other
// by name, live; networks isolated from each other; no responder left.
func TestUserNetworks(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	up := sandbox.Uplink(t)
	upstreamDNS(t, up)
	fakeResolvConf(t, "nameserver 127.0.0.53\nnameserver 203.0.113.1\n")
	h := newHost(t, "data_dir = \""+filepath.Join(t.TempDir(), "data")+"\"\n")

	wpID := strings.TrimSpace(h.mustNetshim("network", "create", "wp-net"))
	if len(wpID) != 64 {
		t.Fatalf("network create printed %q", wpID)
	}
	net0ID := strings.TrimSpace(h.mustNetshim("network", "create", "-d", "bridge", "--subnet", "172.100.0.0/16", "net0"))
	if out := sandbox.Run(t, "ip", "-o", "-4", "addr", "show", "br-"+net0ID[:12]); !strings.Contains(out, "172.100.0.1/16") {
		t.Errorf("net0 bridge: %s", out)
	}
	ls := h.mustNetshim("network", "ls")
	for _, want := range []string{"wp-net", "172.18.0.0/16", "net0", "172.100.0.0/16", wpID[:12], "bridge", "host", "none"} {
		if !strings.Contains(ls, want) {
			t.Errorf("network ls lacks %q:\n%s", want, ls)
		}
	}
	if _, errOut, err := h.netshim("", "network", "create", "--subnet", "172.100.5.0/24", "clash"); err == nil || !strings.Contains(errOut, "overlaps network net0") {
		t.Errorf("overlapping subnet: %v %s", err, errOut)
	}
	if _, errOut, err := h.netshim("", "network", "create", "-d", "overlay", "--subnet", "10.200.0.0/16", "x"); err == nil || !strings.Contains(errOut, "overlay networks need [cluster] etcd_endpoints in the config") {
		t.Errorf("overlay driver without a cluster: %v %s", err, errOut)
	}
	if _, errOut, err := h.netshim("", "network", "create", "-d", "macvlan", "x"); err == nil || !strings.Contains(errOut, `--driver "macvlan": must be bridge or overlay`) {
		t.Errorf("unknown driver: %v %s", err, errOut)
	}

	db := h.newBundle(uniqueID(t, "db"), sleeper, "--name", "db_wordpress", "--network", "wp-net", "--alias", "mysql").mustStart()
	wp := h.newBundle(uniqueID(t, "wp"), sleeper, "--name", "wordpress", "--network", "wp-net").mustStart()
	hostsBefore := map[*container]string{db: db.mustExec("cat", "/etc/hosts"), wp: wp.mustExec("cat", "/etc/hosts")}

	if out := db.mustExec("ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, "172.18.0.2/16") {
		t.Errorf("db on wp-net: %s", out)
	}
	if out := wp.mustExec("cat", "/etc/resolv.conf"); !strings.Contains(out, "nameserver 172.18.0.1\n") {
		t.Errorf("wordpress resolv.conf:\n%s", out)
	}
	// Each resolves and pings the other by name; an alias resolves.
	wp.mustExec("ping", "-c1", "-W2", "db_wordpress")
	db.mustExec("ping", "-c1", "-W2", "wordpress")
	if out := wp.mustExec("nslookup", "mysql"); !strings.Contains(out, "172.18.0.2") {
		t.Errorf("alias mysql:\n%s", out)
	}
	if out := wp.mustExec("nslookup", "172.18.0.2"); !strings.Contains(out, "db_wordpress") {
		t.Errorf("PTR of db:\n%s", out)
	}
	// A name that is not ours goes to the host's resolver.
	if out := wp.mustExec("nslookup", "outside.test"); !strings.Contains(out, "203.0.113.80") {
		t.Errorf("forwarded name:\n%s", out)
	}

	// A later container resolves within a second of its hook returning...
	late := h.newBundle(uniqueID(t, "late"), sleeper, "--name", "late", "--network", "wp-net")
	late.mustStart()
	started := time.Now()
	var out string
	var err error
	for time.Since(started) < time.Second {
		if out, err = wp.exec("nslookup", "late"); err == nil && strings.Contains(out, "172.18.0.4") {
			break
		}
	}
	if err != nil || !strings.Contains(out, "172.18.0.4") {
		t.Errorf("late not resolvable within 1s: %v\n%s", err, out)
	}
	// ...and stops resolving once it is gone.
	late.stop()
	if out, err := wp.exec("nslookup", "late"); err == nil {
		t.Errorf("late still resolves after its teardown:\n%s", out)
	}

	// Isolation: net0 cannot reach wp-net.
	c0 := h.newBundle(uniqueID(t, "c0"), sleeper, "--name", "c0", "--network", "net0").mustStart()
	if out := c0.mustExec("ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, "172.100.0.2/16") {
		t.Errorf("c0: %s", out)
	}
	if out, err := c0.exec("ping", "-c1", "-W1", "172.18.0.3"); err == nil {
		t.Errorf("net0 reached wp-net:\n%s", out)
	}
	if out, err := wp.exec("ping", "-c1", "-W1", "172.100.0.2"); err == nil {
		t.Errorf("wp-net reached net0:\n%s", out)
	}
	if out, err := c0.exec("nslookup", "wordpress"); err == nil && strings.Contains(out, "172.18.0.3") {
		t.Errorf("net0 resolves wp-net's names:\n%s", out)
	}
	c0.mustExec("ping", "-c1", "-W2", "203.0.113.1") // still out to the world

	var info struct {
		Name, ID, Subnet, Gateway, Bridge string
		Containers                        map[string]struct{ Name, IPv4Address, MacAddress string }
	}
	if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "wp-net")), &info); err != nil {
		t.Fatal(err)
	}
	if info.Subnet != "172.18.0.0/16" || info.Gateway != "172.18.0.1" || info.Bridge != "br-"+wpID[:12] || len(info.Containers) != 2 ||
		info.Containers[db.id].IPv4Address != "172.18.0.2/16" || info.Containers[db.id].MacAddress != "02:42:ac:12:00:02" ||
		info.Name != "wp-net" || info.ID != wpID || info.Containers[db.id].Name != "db_wordpress" || info.Containers[wp.id].Name != "wordpress" {
		t.Errorf("network inspect: %+v", info)
	}
	if _, errOut, err := h.netshim("", "network", "rm", "wp-net"); err == nil || !strings.Contains(errOut, "network wp-net has active endpoints") {
		t.Errorf("rm while attached: %v %s", err, errOut)
	}

	for c, before := range hostsBefore {
		if now := c.mustExec("cat", "/etc/hosts"); now != before {
			t.Errorf("%s's /etc/hosts changed after it started", c.id)
		}
	}
	if r := responders(); len(r) != 2 {
		t.Errorf("want one responder per network in use, got %v", r)
	}
	for _, c := range []*container{db, wp, c0} {
		c.stop()
	}
	if r := responders(); len(r) != 0 {
		t.Errorf("responders left after the last containers stopped: %v", r)
	}
	assertClean(t, h)
	h.mustNetshim("network", "rm", "wp-net", "net0")
	if out := sandbox.Run(t, "ip", "-o", "link"); strings.Contains(out, "br-") {
		t.Errorf("bridges left after network rm:\n%s", out)
	}
	if out := h.mustNetshim("network", "ls"); strings.Contains(out, "wp-net") {
		t.Errorf("wp-net still listed:\n%s", out)
	}
}
