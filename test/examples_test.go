package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/netshim/netshim/internal/sandbox"
)

// runExample runs a script of examples/ in this test's sandbox.
func runExample(t *testing.T, script string) string {
	cmd := exec.Command("bash", "../examples/"+script)
	cmd.Env = append(cmd.Environ(), "NETSHIM_BIN="+netshimBin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

// The seed walkthrough runs green and shows every view of the seed.
func TestSeedWalkthrough(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	out := runExample(t, "seed-walkthrough.sh")
	for what, re := range map[string]string{
		"bridge and its veth ports": `netshim0\s+no\s+veth[0-9a-f]{7} veth[0-9a-f]{7}`,
		"bridge address":            `inet 172\.17\.0\.1/16 brd 172\.17\.255\.255`,
		"container ip a":            `eth0@if\d+:[^\n]*\n\s+link/ether 02:42:ac:11:00:03[^\n]*\n\s+inet 172\.17\.0\.3/16`,
		"MASQUERADE row":            `MASQUERADE\s+(all|0)\s+--\s+\*\s+!netshim0\s+172\.17\.0\.0/16`,
		"DNAT row for -P":           `DNAT\s+(tcp|6)\s+--\s+\*\s+\*\s+0\.0\.0\.0/0\s+0\.0\.0\.0/0\s+tcp dpt:32768 to:172\.17\.0\.4:80`,
		"-P answering":              `GET 127\.0\.0\.1:32768 -> hello from nginx-P`,
		"DNAT row for -p 80:80":     `tcp dpt:80 to:172\.17\.0\.5:80`,
		"-p 80:80 answering":        `GET 127\.0\.0\.1:80 -> hello from nginx-80`,
		"link in /etc/hosts":        `172\.17\.0\.6\tdb_wordpress\n`,
		"DNS on a user network":     `Name:\s+wp-db\nAddress:\s+172\.18\.0\.2`,
		"host mode":                 `(?m)^uplink@|^netshim0:`,
		"net0":                      `"Subnet": "172\.100\.0\.0/16"[\s\S]*inet 172\.100\.0\.1/16[\s\S]*inet 172\.100\.0\.2/16`,
		"networks isolated":         `net0 cannot reach wp-net: isolated`,
		"nothing left":              `veths left: 0; netshim rules left: 0`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("walkthrough output lacks %s (%s)", what, re)
		}
	}
	// none mode: the section shows lo and no other interface.
	_, none, _ := strings.Cut(out, "none mode: only lo")
	none, _, _ = strings.Cut(none, "== ")
	if !strings.Contains(none, "1: lo: <LOOPBACK,UP,LOWER_UP>") || regexp.MustCompile(`(?m)^\d+: [^l]`).MatchString(none) {
		t.Errorf("none mode section:\n%s", none)
	}
	if t.Failed() {
		t.Log(out)
	}
}

// Host programs in containers: Redis reached by name on a user network,
// an HTTP server published with -p.
func TestRealApplication(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	out := runExample(t, "real-app.sh")
	if strings.HasPrefix(out, "SKIP: ") {
		t.Skip(strings.TrimSpace(out))
	}
	for _, want := range []string{"redis-cli -h cache ping -> PONG", "redis-cli -h cache get greeting -> hello from redis", "GET 127.0.0.1:8080 -> hello from python"} {
		if !strings.Contains(out, want) {
			t.Errorf("real-app output lacks %q:\n%s", want, out)
		}
	}
}

// The demo (make demo) runs green.
func TestDemo(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	out := runExample(t, "demo.sh")
	for _, want := range []string{"inet 172.17.0.2/16", "link/ether 02:42:ac:11:00:03", "172.17.0.2\tdatabase db", "0% packet loss", "veths left: 0; netshim rules left: 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// make install puts the binary, the config, the Podman hook and the
// reload unit in place, the unit naming the installed binary.
func TestMakeInstall(t *testing.T) {
	dest := t.TempDir()
	if out, err := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest, "PREFIX=/opt/ns").CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{"/opt/ns/bin/netshim", "/etc/netshim/netshim.toml", "/usr/share/containers/oci/hooks.d/netshim.json",
		"/etc/systemd/system/netshim-reload.service"} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("make install: %v", err)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "/etc/systemd/system/netshim-reload.service"))
	for _, want := range []string{"ExecStart=/opt/ns/bin/netshim reload\n", "ExecReload=/opt/ns/bin/netshim reload\n", "PartOf=nftables.service firewalld.service",
		"ReloadPropagatedFrom=nftables.service firewalld.service"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
	// The overlay units, each running a command the binary has.
	for unit, cmd := range map[string]string{"netshim-overlay-sync.service": "overlay sync", "netshim-overlay-watch.service": "overlay watch",
		"netshim-overlay-sync.timer": ""} {
		text, err := os.ReadFile(filepath.Join(dest, "/etc/systemd/system", unit))
		if err != nil {
			t.Errorf("make install: %v", err)
			continue
		}
		if cmd == "" {
			continue
		}
		if !strings.Contains(string(text), "ExecStart=/opt/ns/bin/netshim "+cmd+"\n") {
			t.Errorf("%s does not run %s:\n%s", unit, cmd, text)
		}
		if out, err := exec.Command(netshimBin, append(strings.Fields(cmd), "--help")...).CombinedOutput(); err != nil {
			t.Errorf("netshim %s --help: %v\n%s", cmd, err, out)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		// Only the binary's absence may be reported (it is under DESTDIR).
		for _, unit := range []string{"netshim-reload.service", "netshim-overlay-sync.service", "netshim-overlay-sync.timer", "netshim-overlay-watch.service"} {
			out, _ := exec.Command("systemd-analyze", "verify", filepath.Join(dest, "/etc/systemd/system", unit)).CombinedOutput()
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if l != "" && !strings.Contains(l, "is not executable") {
					t.Errorf("systemd-analyze verify %s: %s", unit, l)
				}
			}
		}
	}
}
