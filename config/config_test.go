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
		{"[bridge]\nfixed_cidr_v6 = \"fd00::/64\"", `bridge.fixed_cidr_v6 = "fd00::/64": needs bridge.ipv6 = true`},
		{"[bridge]\nipv6 = true\nfixed_cidr_v6 = \"10.0.0.0/24\"", `bridge.fixed_cidr_v6 = "10.0.0.0/24": not an IPv6 CIDR`},
		{"[bridge]\nipv6 = true\nbip6 = \"fd00:1::1/64\"\nfixed_cidr_v6 = \"fd00:2::/80\"", `bridge.fixed_cidr_v6 = "fd00:2::/80": outside bip6 fd00:1::/64`},
		{"[bridge]\nipv6 = true\nbip6 = \"fd00:1::/64\"", `bridge.bip6 = "fd00:1::/64": the bridge address cannot be`},
		{"[bridge]\nipv6 = true\nbip6 = \"fd00:1::1/126\"", `bridge.bip6 = "fd00:1::1/126": prefix too long`},
		{"[networks.a]\nsubnet = \"10.9.0.0/16\"\nsubnet6 = \"fd00:9::/64\"", `networks.a.subnet6 = "fd00:9::/64": needs networks.a.ipv6 = true`},
		{"[networks.a]\nsubnet = \"10.9.0.0/16\"\nipv6 = true\ngateway6 = \"fd00:9::1\"", `networks.a.gateway6 = "fd00:9::1": needs networks.a.subnet6`},
		{"[networks.a]\nsubnet = \"10.9.0.0/16\"\nipv6 = true\nsubnet6 = \"fd00:9::/64\"\ngateway6 = \"fd00:8::1\"", `networks.a.gateway6 = "fd00:8::1": outside subnet6 fd00:9::/64`},
		{"[networks.a]\nsubnet = \"10.9.0.0/16\"\nipv6 = true\nsubnet6 = \"fd00:9::/64\"\nip_range6 = \"fd00:8::/80\"", `networks.a.ip_range6 = "fd00:8::/80": outside subnet6`},
		{"[networks.a]\nsubnet = \"10.9.0.0/16\"\nipv6 = true\nsubnet6 = \"fd00:9::/64\"\n[networks.b]\nsubnet = \"10.8.0.0/16\"\nipv6 = true\nsubnet6 = \"fd00:9::/48\"", `networks.b.subnet6 = "fd00:9::/48": overlaps network a`},
		{"[[bridge.default_address_pools]]\nbase = \"fd00::/48\"\nsize = 128", `bridge.default_address_pools[0].size = "128": must be between 48 and 124`},
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

func TestIPv6(t *testing.T) {
	c, err := Parse("", []byte(`
[bridge]
ipv6 = true
fixed_cidr_v6 = "fd00:dead:beef::/64"
[[bridge.default_address_pools]]
base = "fd01::/56"
size = 64
[networks.a]
subnet = "10.9.0.0/16"
ipv6 = true
subnet6 = "fd00:9::/64"
ip_range6 = "fd00:9::100/120"
[networks.b]
subnet = "10.8.0.0/16"
ipv6 = true
`))
	if err != nil {
		t.Fatal(err)
	}
	br := c.Bridge
	if !br.IPv6 || br.Subnet6.String() != "fd00:dead:beef::/64" || br.Gateway6.String() != "fd00:dead:beef::1" || br.IPRange6.IsValid() {
		t.Errorf("bridge: %v %v %v %v", br.IPv6, br.Subnet6, br.Gateway6, br.IPRange6)
	}
	a := c.Networks["a"]
	if !a.IPv6 || a.Subnet6.String() != "fd00:9::/64" || a.Gateway6.String() != "fd00:9::1" || a.IPRange6.String() != "fd00:9::100/120" {
		t.Errorf("a: %v %v %v %v", a.IPv6, a.Subnet6, a.Gateway6, a.IPRange6)
	}
	if b := c.Networks["b"]; !b.IPv6 || b.Subnet6.IsValid() {
		t.Errorf("b: IPv6 %v, subnet6 %v; want one chosen at first use", b.IPv6, b.Subnet6)
	}
	if len(c.Pools6) != 1 || c.Pools6[0].Base.String() != "fd01::/56" || c.Pools6[0].Size != 64 || len(c.Pools) != len(DockerPools()) {
		t.Errorf("pools: %v / %v", c.Pools, c.Pools6)
	}
	c, err = Parse("", []byte("[bridge]\nipv6 = true\nbip6 = \"fd00:1::1/64\"\nfixed_cidr_v6 = \"fd00:1::8000/113\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if br := c.Bridge; br.Subnet6.String() != "fd00:1::/64" || br.Gateway6.String() != "fd00:1::1" || br.IPRange6.String() != "fd00:1::8000/113" {
		t.Errorf("bip6: %v %v %v", br.Subnet6, br.Gateway6, br.IPRange6)
	}
}

func TestULAPool(t *testing.T) {
	p := ULAPool([]byte("0123456789abcdef0123456789abcdef\n"))
	q := ULAPool([]byte("another host"))
	if p.Base.Bits() != 48 || p.Size != 64 || p.Base.Addr().As16()[0] != 0xfd || p == q || p != ULAPool([]byte("0123456789abcdef0123456789abcdef\n")) {
		t.Errorf("ULA pools %v, %v", p, q)
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
