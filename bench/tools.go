package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// netshimTool runs the netshim hook binary, as a runtime would.
type netshimTool struct {
	bin, backend  string
	config, state string
	// label names a build other than the one under test (-baseline), or
	// a configuration other than the default one.
	label string
	// ipv6 makes the default network dual stack.
	ipv6 bool
}

func (t *netshimTool) name() string {
	if t.label != "" {
		return t.label
	}
	return "netshim-" + t.backend
}

func (t *netshimTool) available() string {
	if _, err := os.Stat(t.bin); err != nil {
		return "binary not built"
	}
	if t.backend == "iptables" {
		if _, err := exec.LookPath("iptables"); err != nil {
			return "iptables not installed"
		}
	}
	return ""
}

func (t *netshimTool) prepare(work string) error {
	t.config = filepath.Join(work, "netshim.toml")
	// The state dir is on tmpfs, as the default /run/netshim is.
	t.state = filepath.Join("/run", "netshim-bench-"+filepath.Base(work))
	config := fmt.Sprintf("firewall = %q\n", t.backend)
	if t.ipv6 {
		config += "[bridge]\nipv6 = true\nfixed_cidr_v6 = \"fd00:b0::/64\"\n"
	}
	return os.WriteFile(t.config, []byte(config), 0o644)
}

func (t *netshimTool) hook(c *container, stage, status string) error {
	return runHook([]string{t.bin, "--config", t.config, "--state-dir", t.state, "hook", stage},
		fmt.Sprintf(`{"ociVersion":"1.0.2","id":%q,"status":%q,"pid":%d,"bundle":%q}`, c.id, status, c.pid, c.dir))
}

// runHook runs argv as a runtime runs a hook: the state on its stdin, its
// output collected (and returned in the error when it fails). The floors
// (see floor) are started by it too.
func runHook(argv []string, state string) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(state)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// bundle writes the container's config.json, with its published port.
func (t *netshimTool) bundle(c *container) error {
	spec := fmt.Sprintf(`{"ociVersion":"1.0.2","hostname":%q,"root":{"path":"rootfs"},"annotations":{"netshim/publish":"%d:80"}}`, c.id, c.port)
	return os.WriteFile(filepath.Join(c.dir, "config.json"), []byte(spec), 0o644)
}

func (t *netshimTool) setup(c *container) error { return t.hook(c, "createRuntime", "creating") }

func (t *netshimTool) teardown(c *container) error { return t.hook(c, "poststop", "stopped") }

func (t *netshimTool) cleanup() {
	exec.Command("ip", "link", "del", "netshim0").Run()
	os.RemoveAll(t.state)
}

// cniTool runs the CNI reference plugins through cnitool.
type cniTool struct {
	dir           string
	conf, ipamDir string
}

func (t *cniTool) name() string { return "cni" }

func (t *cniTool) available() string {
	for _, b := range []string{"bridge", "host-local", "portmap", "cnitool"} {
		if _, err := os.Stat(filepath.Join(t.dir, b)); err != nil {
			return "not built (" + b + " missing in " + t.dir + ")"
		}
	}
	return ""
}

func (t *cniTool) prepare(work string) error {
	t.conf = filepath.Join(work, "net.d")
	t.ipamDir = filepath.Join(work, "ipam")
	os.MkdirAll(t.conf, 0o755)
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench","plugins":[
{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"hairpinMode":true,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"172.29.0.0/16"}]],"dataDir":%q}},
{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}`, t.ipamDir)
	return os.WriteFile(filepath.Join(t.conf, "bench.conflist"), []byte(conf), 0o644)
}

func (t *cniTool) cnitool(c *container, op string) error {
	cmd := exec.Command(filepath.Join(t.dir, "cnitool"), op, "bench", c.netns())
	cmd.Env = append(os.Environ(), "NETCONFPATH="+t.conf, "CNI_PATH="+t.dir,
		fmt.Sprintf(`CAP_ARGS={"portMappings":[{"hostPort":%d,"containerPort":80,"protocol":"tcp"}]}`, c.port))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("cnitool %s: %v: %s", op, err, out)
	}
	return nil
}

func (t *cniTool) setup(c *container) error    { return t.cnitool(c, "add") }
func (t *cniTool) teardown(c *container) error { return t.cnitool(c, "del") }
func (t *cniTool) cleanup()                    { exec.Command("ip", "link", "del", "cni0").Run() }

// netavarkTool runs Debian's netavark, as Podman would.
type netavarkTool struct {
	bin, config string
}

const netavarkBin = "/usr/lib/podman/netavark"

func (t *netavarkTool) name() string { return "netavark" }

func (t *netavarkTool) available() string {
	if _, err := os.Stat(netavarkBin); err != nil {
		return "not installed (Debian package netavark)"
	}
	return ""
}

func (t *netavarkTool) prepare(work string) error {
	t.bin = netavarkBin
	t.config = filepath.Join(work, "netavark")
	return os.MkdirAll(t.config, 0o755)
}

func hexID(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// options is netavark's network options JSON; it needs static addresses.
func (t *netavarkTool) options(c *container) []byte {
	ip := fmt.Sprintf("172.28.%d.%d", (c.i+2)/256, (c.i+2)%256)
	opts := map[string]any{
		"container_id":   hexID(c.id),
		"container_name": c.id,
		"port_mappings":  []any{map[string]any{"host_ip": "", "container_port": 80, "host_port": c.port, "range": 1, "protocol": "tcp"}},
		"networks": map[string]any{"bench": map[string]any{
			"static_ips": []string{ip}, "interface_name": "eth0", "aliases": []string{},
		}},
		"network_info": map[string]any{"bench": map[string]any{
			"name": "bench", "id": hexID("bench"), "driver": "bridge", "network_interface": "nvbench0",
			"subnets":      []any{map[string]any{"subnet": "172.28.0.0/16", "gateway": "172.28.0.1"}},
			"ipv6_enabled": false, "internal": false, "dns_enabled": false,
			"ipam_options": map[string]any{"driver": "host-local"},
		}},
	}
	data, _ := json.Marshal(opts)
	return data
}

func (t *netavarkTool) call(c *container, op string) error {
	cmd := exec.Command(t.bin, "--config", t.config, op, c.netns())
	cmd.Stdin = strings.NewReader(string(t.options(c)))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("netavark %s: %v: %s", op, err, out)
	}
	return nil
}

func (t *netavarkTool) setup(c *container) error    { return t.call(c, "setup") }
func (t *netavarkTool) teardown(c *container) error { return t.call(c, "teardown") }
func (t *netavarkTool) cleanup()                    { exec.Command("ip", "link", "del", "nvbench0").Run() }
