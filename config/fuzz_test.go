package config

import (
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "firewall = \"iptables\"\n[bridge]\nbip = \"172.17.0.1/16\"\nfixed_cidr = \"172.17.1.0/24\"\n",
		"[networks.a]\nsubnet = \"10.9.0.0/16\"\ngateway = \"10.9.0.1\"\n",
		"[[bridge.default_address_pools]]\nbase = \"10.0.0.0/8\"\nsize = 24\n", "[bridge\n", "bogus = 1", "[bridge]\nmtu = -1",
		"ip_local_port_range = \"1-65535\"", "[networks.\"a b\"]\nsubnet = \"x\"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse("f.toml", []byte(s))
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if c.Bridge.MTU < 68 || c.StateDir == "" || (c.Bridge.Subnet.IsValid() && !c.Bridge.Subnet.Contains(c.Bridge.Gateway)) {
			t.Fatalf("accepted %+v", c)
		}
		for _, n := range c.Networks {
			if !n.Subnet.Contains(n.Gateway) || len(n.Bridge) > 15 {
				t.Fatalf("accepted network %+v", n)
			}
		}
	})
}
