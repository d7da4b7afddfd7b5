package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaults(t *testing.T) {
	c, err := Load(filepath.Join(t.TempDir(), "absent.toml"), false)
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != DefaultStateDir || c.Firewall != FirewallNftables {
		t.Errorf("state dir %q firewall %q", c.StateDir, c.Firewall)
	}
	b := c.Bridge
	if b.Name != "bridge" || b.Bridge != DefaultBridgeDevice || b.MTU != 1500 || !b.ICC || !b.Masquerade || !b.Default {
		t.Errorf("default network %+v", b)
	}
	if b.Subnet.IsValid() {
		t.Errorf("subnet chosen at load time: %v", b.Subnet)
	}
	if len(c.Pools) != 16 || c.Pools[0].Base != netip.MustParsePrefix("172.17.0.0/16") || c.Pools[15].Size != 20 {
		t.Errorf("pools %v", c.Pools)
	}
}

func TestMissingNamedFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.toml"), true)
	if err == nil || !strings.Contains(err.Error(), "absent.toml") {
		t.Fatalf("got %v", err)
	}
}

func TestFull(t *testing.T) {
	doc := `
state_dir = "/var/run/ns"
firewall = "iptables"
ip_local_port_range = "40000-40100"
[bridge]
bip = "10.20.0.1/16"
fixed_cidr = "10.20.1.0/24"
mtu = 1400
default_gateway = "10.20.0.254"
dns = ["203.0.113.53"]
icc = false
ip_masquerade = false
[[bridge.default_address_pools]]
base = "10.100.0.0/16"
size = 24
[networks.wp-net]
subnet = "172.100.0.0/16"
[networks.db]
subnet = "192.0.2.0/24"
gateway = "192.0.2.254"
ip_range = "192.0.2.128/25"
internal = true
bridge = "dbbr"
`
	c, err := Parse("x.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Bridge
	if b.Subnet.String() != "10.20.0.0/16" || b.Gateway.String() != "10.20.0.1" || b.IPRange.String() != "10.20.1.0/24" ||
		b.MTU != 1400 || b.DefaultGateway.String() != "10.20.0.254" || b.ICC || b.Masquerade || len(b.DNS) != 1 {
		t.Errorf("bridge %+v", b)
	}
	if c.PortRange != [2]int{40000, 40100} || c.Firewall != "iptables" || c.StateDir != "/var/run/ns" {
		t.Errorf("globals %+v", c)
	}
	if len(c.Pools) != 1 || c.Pools[0].Size != 24 {
		t.Errorf("pools %v", c.Pools)
	}
	wp := c.Networks["wp-net"]
	if wp.Gateway.String() != "172.100.0.1" || wp.Bridge != BridgeNameFor(NetworkID("wp-net")) || !wp.Masquerade || len(wp.Bridge) != 15 {
		t.Errorf("wp-net %+v", wp)
	}
	db := c.Networks["db"]
	if db.Gateway.String() != "192.0.2.254" || db.IPRange.String() != "192.0.2.128/25" || !db.Internal || db.Masquerade || db.Bridge != "dbbr" {
		t.Errorf("db %+v", db)
	}
}

func TestErrors(t *testing.T) {
	cases := []struct{ doc, want string }{
		{`bogus = 1`, `bogus: unknown key`},
		{"[bridge]\nbipp = \"1.2.3.4/24\"", `bridge.bipp: unknown key`},
		{"[networks.a]\nsubnet = \"10.9.0.0/16\"\ncolour = 1", `networks.a.colour: unknown key`},
		{`firewall = "pf"`, `firewall = "pf": must be "nftables" or "iptables"`},
		{`state_dir = "rel"`, `state_dir = "rel": must be an absolute path`},
		{"[bridge]\nbip = \"172.17.0.1\"", `bridge.bip = "172.17.0.1": not an IPv4 address with prefix length`},
		{"[bridge]\nbip = \"172.17.0.0/16\"", `bridge.bip = "172.17.0.0/16": the bridge address cannot be the network`},
		{"[bridge]\nbip = \"172.17.0.1/16\"\nfixed_cidr = \"10.0.0.0/24\"", `bridge.fixed_cidr = "10.0.0.0/24": outside bip 172.17.0.0/16`},
		{"[bridge]\nfixed_cidr = \"10.0.0.0/24\"", `bridge.fixed_cidr = "10.0.0.0/24": needs bridge.bip`},
		{"[bridge]\nbip = \"172.17.0.1/16\"\ndefault_gateway = \"10.0.0.1\"", `bridge.default_gateway = "10.0.0.1": outside bip`},
		{"[bridge]\nmtu = 20", `bridge.mtu = "20": must be between 68 and 65535`},
		{"[bridge]\ndns = [\"x\"]", `bridge.dns = "x": not an IP address`},
		{"[bridge]\nbridge = \"waytoolongbridgename\"", `bridge.bridge = "waytoolongbridgename": not a valid interface name`},
		{"[bridge]\nmtu = \"big\"", `incompatible types`},
		{"[networks.a]\nsubnet = \"10.9.0.0/16\"\ngateway = \"10.8.0.1\"", `networks.a.gateway = "10.8.0.1": outside subnet 10.9.0.0/16`},
		{"[networks.a]\ngateway = \"10.8.0.1\"", `networks.a.subnet: required`},
		{"[networks.a]\nsubnet = \"10.9.0.0/16\"\n[networks.b]\nsubnet = \"10.9.1.0/24\"", `networks.b.subnet = "10.9.1.0/24": overlaps network a`},
		{"[networks.host]\nsubnet = \"10.9.0.0/16\"", `networks.host: network name "host" is reserved`},
		{`ip_local_port_range = "9-3"`, `ip_local_port_range = "9-3": must be`},
		{"[[bridge.default_address_pools]]\nbase = \"10.0.0.0/8\"\nsize = 4", `bridge.default_address_pools[0].size = "4": must be between 8 and 30`},
		{"[bridge\n", `config x.toml: `},
	}
	for _, tc := range cases {
		_, err := Parse("x.toml", []byte(tc.doc))
		if err == nil {
			t.Errorf("%q: accepted", tc.doc)
			continue
		}
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%q: not a *config.Error: %T", tc.doc, err)
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q:\n got  %s\n want %s", tc.doc, err, tc.want)
		}
		if !strings.HasPrefix(err.Error(), "config x.toml: ") {
			t.Errorf("%q: error does not name the file: %s", tc.doc, err)
		}
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "n.toml")
	if err := os.WriteFile(p, []byte("[bridge]\nbip = \"172.30.0.1/24\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p, true)
	if err != nil || c.Bridge.Subnet.String() != "172.30.0.0/24" || c.Path != p {
		t.Fatalf("%v %+v", err, c)
	}
}

// Every example config in examples/ loads.
func TestExamples(t *testing.T) {
	files, _ := filepath.Glob("../examples/*.toml")
	if len(files) < 3 {
		t.Fatalf("examples: %v", files)
	}
	for _, f := range files {
		if _, err := Load(f, true); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestGatewayModes(t *testing.T) {
	c, err := Parse("", []byte(`
trusted_host_interfaces = ["eth3", "vxlan.1"]
[bridge]
gateway_mode = "routed"
[networks.a]
subnet = "192.0.2.0/24"
[networks.b]
subnet = "198.51.100.0/24"
gateway_mode = "isolated"
[networks.c]
subnet = "203.0.113.0/24"
gateway_mode = "nat-unprotected"
`))
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Bridge; b.GatewayMode != GatewayRouted || b.Masquerade {
		t.Errorf("routed default network masquerades or lost its mode: %+v", b)
	}
	if a := c.Networks["a"]; a.GatewayMode != GatewayNAT || !a.Masquerade {
		t.Errorf("the default mode is nat: %+v", a)
	}
	if b := c.Networks["b"]; b.GatewayMode != GatewayIsolated || !b.Internal || b.Masquerade {
		t.Errorf("isolated is internal: %+v", b)
	}
	if n := c.Networks["c"]; n.GatewayMode != GatewayNATUnprotected || !n.Masquerade {
		t.Errorf("nat-unprotected masquerades: %+v", n)
	}
	if len(c.TrustedHostInterfaces) != 2 || c.TrustedHostInterfaces[1] != "vxlan.1" {
		t.Errorf("trusted interfaces %v", c.TrustedHostInterfaces)
	}
	for doc, want := range map[string]string{
		"[bridge]\ngateway_mode = \"open\"\n":                                `bridge.gateway_mode = "open": must be nat, nat-unprotected, routed or isolated`,
		"[networks.x]\nsubnet = \"192.0.2.0/24\"\ngateway_mode = \"nat \"\n": `networks.x.gateway_mode = "nat ": must be`,
		"trusted_host_interfaces = [\"a/b\"]\n":                              `trusted_host_interfaces = "a/b": not a valid interface name`,
	} {
		if _, err := Parse("f.toml", []byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", doc, err, want)
		}
	}
}

// The example config is valid, with every key uncommented.
func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile("../examples/netshim.toml")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "# "); ok && (strings.Contains(rest, " = ") || strings.HasPrefix(rest, "[")) {
			l = rest
		}
		lines = append(lines, l)
	}
	if _, err := Parse("netshim.toml", []byte(strings.Join(lines, "\n"))); err != nil {
		t.Errorf("examples/netshim.toml with every key: %v", err)
	}
}
