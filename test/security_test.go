package test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netshim/netshim/internal/sandbox"
)

func TestSecurityNftables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testSecurity(t, "nftables")
}

func TestSecurityIptables(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	testSecurity(t, "iptables")
}

// secWeb is a container serving "hello from NAME" on ports 80 and 81.
func (h *host) secWeb(name string, flags ...string) *container {
	h.t.Helper()
	c := h.webBundle(name, flags...)
	spec := filepath.Join(c.bundle, "config.json")
	var cfg map[string]any
	data := sandbox.Run(h.t, "cat", spec)
	if err := json.Unmarshal([]byte(data), &cfg); err != nil {
		h.t.Fatal(err)
	}
	cfg["process"].(map[string]any)["args"] = []string{"sh", "-c", "httpd -p 80 -h /www && httpd -p 81 -h /www && exec /udpecho :5353"}
	out, _ := json.Marshal(cfg)
	writeFile(h.t, spec, string(out))
	return c
}

// testSecurity is the attacker matrix of one backend: what a LAN neighbour,
// a trusted interface's neighbour, a container with CAP_NET_RAW and the
// host itself can and cannot reach, in each gateway mode; then the same
// after the host's firewall is flushed, once restored by `netshim reload`
// and once by the next hook.
func testSecurity(t *testing.T, backend string) {
	up := sandbox.Uplink(t)
	aimAtLoopback(t, up, "198.51.100.1")
	for _, r := range []string{"172.17.0.0/16", "198.18.0.0/16"} {
		sandbox.Run(t, "ip", "-n", "up", "route", "add", r, "via", "198.51.100.1")
	}
	trusted := lan(t, "trusted", "trusted0", "192.0.2.1", "192.0.2.2", "172.17.0.0/16")
	h := newHost(t, fmt.Sprintf(`firewall = %q
data_dir = %q
trusted_host_interfaces = ["trusted0"]
[networks.unprot]
subnet = "198.18.1.0/24"
gateway_mode = "nat-unprotected"
[networks.routed]
subnet = "198.18.2.0/24"
gateway_mode = "routed"
[networks.iso]
subnet = "198.18.3.0/24"
gateway_mode = "isolated"
`, backend, filepath.Join(t.TempDir(), "data")))
	nat := h.secWeb("natweb", "-p", "8080:80", "-p", "127.0.0.1:9090:80").mustStart().waitHTTP()
	unprot := h.secWeb("unprotweb", "--network", "unprot", "-p", "8081:80").mustStart().waitHTTP()
	routed := h.secWeb("routedweb", "--network", "routed", "-p", "80").mustStart().waitHTTP()
	iso := h.secWeb("isoweb", "--network", "iso").mustStart().waitHTTP()
	if out := h.mustNetshim("port", "routedweb"); out != "80/tcp -> 198.18.2.2:80\n" {
		t.Errorf("routed port: %q", out)
	}
	// Publishing on an isolated network is refused, with a line.
	refused := h.secWeb("isopub", "--network", "iso", "-p", "8082:80")
	if err := refused.start(); err == nil || !strings.Contains(err.Error(), "network iso is isolated: ports cannot be published") {
		t.Errorf("publish on an isolated network: %v", err)
	}
	refused.stop()

	var isoNet struct{ Bridge string }
	if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "iso")), &isoNet); err != nil {
		t.Fatal(err)
	}
	isoBr := isoNet.Bridge
	// The isolated container gets a way out added by hand, so its packets
	// do reach the host (the firewall, not its routes, must stop them).
	sandbox.Run(t, "nsenter", "-t", fmt.Sprint(iso.pid()), "-n", "ip", "route", "add", "default", "via", "198.18.3.1")
	serveHostService(t, "tcp4", "0.0.0.0:7777")
	loop, err := net.ListenPacket("udp4", "127.0.0.1:5555")
	if err != nil {
		t.Fatal(err)
	}
	defer loop.Close()
	// route_localnet: on the bridge that publishes on loopback, nowhere
	// else.
	for ifc, want := range map[string]string{"netshim0": "1", "all": "0", "default": "0", isoBr: "0"} {
		if got := strings.TrimSpace(sandbox.Run(t, "sysctl", "-n", "net.ipv4.conf."+ifc+".route_localnet")); got != want {
			t.Errorf("route_localnet on %s = %s, want %s", ifc, got, want)
		}
	}

	p := &probes{t: t}
	p.add("lan-loopback", "pre", `iifname "uplink" ip daddr 127.0.0.1 tcp dport 9090`)
	p.add("lan-nat", "pre", `iifname "uplink" ip daddr 172.17.0.2 tcp dport 80`)
	p.add("lan-routed-81", "pre", `iifname "uplink" ip daddr 198.18.2.2 tcp dport 81`)
	p.add("lan-iso", "pre", `iifname "uplink" ip daddr 198.18.3.2 tcp dport 80`)
	p.add("trusted-81", "pre", `iifname "trusted0" ip daddr 172.17.0.2 tcp dport 81`)
	p.add("raw-loopback", "pre", `iifname "netshim0" ip daddr 127.0.0.1 udp dport 5555`)
	var unprotNet struct{ Bridge string }
	if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "unprot")), &unprotNet); err != nil {
		t.Fatal(err)
	}
	p.add("other-net", "pre", fmt.Sprintf(`iifname %q ip daddr 172.17.0.2 tcp dport 80`, unprotNet.Bridge))
	p.add("host-iso", "out", fmt.Sprintf(`oifname %q ip daddr 198.18.3.2 tcp dport 80`, isoBr))
	p.add("iso-out", "pre", fmt.Sprintf(`iifname %q ip daddr 203.0.113.1`, isoBr))
	p.add("iso-host", "pre", fmt.Sprintf(`iifname %q ip daddr 198.18.3.1 tcp dport 7777`, isoBr))

	const blockWait = 1500 * time.Millisecond
	blocked := p.blocked
	check := func(title string) {
		p.install()
		m := &matrix{t: t}
		m.run("LAN -> 127.0.0.1:9090 (nat, published on loopback)", func() (string, bool) {
			return blocked("lan-loopback", fetch(up, "127.0.0.1:9090", blockWait))
		})
		m.run("LAN -> container:80 direct (nat)", func() (string, bool) {
			return blocked("lan-nat", fetch(up, "172.17.0.2:80", blockWait))
		})
		m.run("LAN -> container:80 direct (nat-unprotected)", func() (string, bool) {
			return allowed("hello from unprotweb\n", fetch(up, "198.18.1.2:80", 3*time.Second))
		})
		m.run("LAN -> container:80 direct, published (routed)", func() (string, bool) {
			return allowed("hello from routedweb\n", fetch(up, "198.18.2.2:80", 3*time.Second))
		})
		m.run("LAN -> container:81 direct, unpublished (routed)", func() (string, bool) {
			return blocked("lan-routed-81", fetch(up, "198.18.2.2:81", blockWait))
		})
		m.run("LAN -> container:80 direct (isolated)", func() (string, bool) {
			return blocked("lan-iso", fetch(up, "198.18.3.2:80", blockWait))
		})
		m.run("LAN -> host:8080 published (nat)", func() (string, bool) {
			return allowed("hello from natweb\n", fetch(up, "198.51.100.1:8080", 3*time.Second))
		})
		m.run("LAN -> host:8081 published (nat-unprotected)", func() (string, bool) {
			return allowed("hello from unprotweb\n", fetch(up, "198.51.100.1:8081", 3*time.Second))
		})
		m.run("trusted -> container:80 direct, published (nat)", func() (string, bool) {
			return allowed("hello from natweb\n", fetch(trusted, "172.17.0.2:80", 3*time.Second))
		})
		m.run("trusted -> container:81 direct, unpublished (nat)", func() (string, bool) {
			return blocked("trusted-81", fetch(trusted, "172.17.0.2:81", blockWait))
		})
		m.run("host -> 127.0.0.1:9090 (nat)", func() (string, bool) {
			return allowed("hello from natweb\n", fetch("", "127.0.0.1:9090", 3*time.Second))
		})
		m.run("host -> 127.0.0.1:8080 (nat)", func() (string, bool) {
			return allowed("hello from natweb\n", fetch("", "127.0.0.1:8080", 3*time.Second))
		})
		m.run("container -> host:8080, its own port (hairpin)", func() (string, bool) {
			out, err := nat.exec("timeout", "5", "wget", "-q", "-O", "-", "http://198.51.100.1:8080/")
			if err != nil || out != "hello from natweb\n" {
				return fmt.Sprintf("did not get through: %q %v", out, err), false
			}
			return "allowed", true
		})
		m.run("container of another network -> container:80 direct", func() (string, bool) {
			out, err := unprot.exec("timeout", "2", "wget", "-q", "-O", "-", "http://172.17.0.2:80/")
			if err == nil {
				return "got through: " + out, false
			}
			if n := p.count("other-net"); n == 0 {
				return "the probe never reached the host", false
			}
			return "blocked", true
		})
		m.run("container of another network -> host:8080 published", func() (string, bool) {
			out, err := unprot.exec("timeout", "5", "wget", "-q", "-O", "-", "http://198.51.100.1:8080/")
			if err != nil || out != "hello from natweb\n" {
				return fmt.Sprintf("did not get through: %q %v", out, err), false
			}
			return "allowed", true
		})
		m.run("host -> container:80 (isolated)", func() (string, bool) {
			return blocked("host-iso", fetch("", "198.18.3.2:80", blockWait))
		})
		m.run("isolated container -> outside", func() (string, bool) {
			if out, err := iso.exec("ping", "-c", "1", "-W", "1", "203.0.113.1"); err == nil {
				return "got through: " + out, false
			}
			if n := p.count("iso-out"); n == 0 {
				return "the probe never reached the host", false
			}
			return "blocked", true
		})
		m.run("isolated container -> host service", func() (string, bool) {
			out, err := iso.exec("timeout", "2", "wget", "-q", "-O", "-", "http://198.18.3.1:7777/")
			if err == nil {
				return "got through: " + out, false
			}
			if n := p.count("iso-host"); n == 0 {
				return "the probe never reached the host", false
			}
			return "blocked", true
		})
		m.run("isolated container -> its network's DNS", func() (string, bool) {
			if out, err := iso.exec("nslookup", "isoweb"); err != nil || !strings.Contains(out, "198.18.3.2") {
				return fmt.Sprintf("no answer: %v %s", err, out), false
			}
			return "allowed", true
		})
		m.run("container with NET_RAW -> host's 127.0.0.1:5555/udp", func() (string, bool) {
			rawUDP(t, nat.pid(), linkMAC(t, "netshim0"), netip.MustParseAddr("172.17.0.2"), netip.MustParseAddr("127.0.0.1"), 5555, []byte("let me in"))
			loop.SetReadDeadline(time.Now().Add(blockWait))
			buf := make([]byte, 64)
			if n, _, err := loop.ReadFrom(buf); err == nil {
				return fmt.Sprintf("a host socket on 127.0.0.1 received %q", buf[:n]), false
			}
			if n := p.count("raw-loopback"); n == 0 {
				return "the frame never reached the host", false
			}
			return "blocked", true
		})
		m.done(backend + ": " + title)
	}
	check("as set up")

	flush := func() {
		if backend == "iptables" {
			sandbox.Run(t, "iptables", "-F")
			sandbox.Run(t, "iptables", "-t", "nat", "-F")
		} else {
			sandbox.Run(t, "nft", "flush", "ruleset")
		}
		out, _, err := h.netshim("", "doctor")
		if err == nil || !strings.Contains(out, "FAIL firewall rules") || !strings.Contains(out, "run `netshim reload`") {
			t.Errorf("doctor after a flush: %v\n%s", err, out)
		}
	}
	flush()
	if out := h.mustNetshim("reload"); out != "reloaded the firewall rules of 4 networks and 4 published ports\n" {
		t.Errorf("reload: %q", out)
	}
	check("after a flush and `netshim reload`")
	once := rulesetDump(t, backend)
	h.mustNetshim("reload")
	if twice := rulesetDump(t, backend); twice != once {
		t.Errorf("a second reload changed the ruleset:\n--- once\n%s\n--- twice\n%s", once, twice)
	}
	if out := h.mustNetshim("doctor"); !strings.Contains(out, "ok   firewall rules") {
		t.Errorf("doctor after reload:\n%s", out)
	}

	flush()
	// The next hook finds the rules gone and puts them back.
	next := h.newBundle(uniqueID(t, "next"), sleeper, "--name", "next").mustStart()
	check("after a flush and the next container's start")
	if out := h.mustNetshim("doctor"); !strings.Contains(out, "ok   firewall rules") {
		t.Errorf("doctor after the next hook:\n%s", out)
	}
	if data := sandbox.Run(t, "cat", filepath.Join(h.stateDir, "hook.log")); !strings.Contains(data, "stage=reload") {
		t.Errorf("the hook's reload is not logged:\n%s", data)
	}
	for _, c := range []*container{nat, unprot, routed, iso, next} {
		c.stop()
	}
	sandbox.Run(t, "nft", "delete", "table", "ip", "probe")
	assertClean(t, h)
}
