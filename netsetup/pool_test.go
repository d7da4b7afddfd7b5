package netsetup

import (
	"net/netip"
	"testing"

	"github.com/netshim/netshim/config"
)

func TestChoosePool(t *testing.T) {
	pools := config.DockerPools()
	cases := []struct {
		used []string
		want string
	}{
		{nil, "172.17.0.0/16"},
		{[]string{"172.17.0.0/16"}, "172.18.0.0/16"},
		{[]string{"172.16.0.0/12"}, "192.168.0.0/20"},
		{[]string{"172.16.0.0/12", "192.168.0.0/24"}, "192.168.16.0/20"},
		{[]string{"172.17.3.0/24", "10.0.0.0/8"}, "172.18.0.0/16"},
	}
	for _, tc := range cases {
		var used []netip.Prefix
		for _, u := range tc.used {
			used = append(used, netip.MustParsePrefix(u))
		}
		got, err := ChoosePool(pools, used)
		if err != nil || got.String() != tc.want {
			t.Errorf("used %v: got %v %v want %s", tc.used, got, err, tc.want)
		}
	}
	if _, err := ChoosePool(pools, []netip.Prefix{netip.MustParsePrefix("128.0.0.0/1")}); err == nil {
		t.Error("exhausted pools accepted")
	}
}

func TestMACFor(t *testing.T) {
	if got := MACFor(netip.MustParseAddr("172.17.0.3")).String(); got != "02:42:ac:11:00:03" {
		t.Fatal(got)
	}
	if n := RandomVethName(); len(n) != 11 || n[:4] != "veth" {
		t.Fatal(n)
	}
}

func TestChoosePool6(t *testing.T) {
	pools := []config.Pool{{Base: netip.MustParsePrefix("fd12:3456:789a::/48"), Size: 64}}
	used := []netip.Prefix{netip.MustParsePrefix("fd12:3456:789a::/64"), netip.MustParsePrefix("fd12:3456:789a:1::5/128")}
	got, err := ChoosePool(pools, used)
	if err != nil || got.String() != "fd12:3456:789a:2::/64" {
		t.Fatalf("got %v %v", got, err)
	}
	if p := nthSubnet(netip.MustParsePrefix("fd00::/48"), 64, 0x1ff); p.String() != "fd00:0:0:1ff::/64" {
		t.Errorf("nthSubnet: %v", p)
	}
	if p := nthSubnet(netip.MustParsePrefix("10.0.0.0/8"), 20, 17); p.String() != "10.1.16.0/20" {
		t.Errorf("nthSubnet: %v", p)
	}
	if _, err := ChoosePool(pools, []netip.Prefix{netip.MustParsePrefix("fd12::/16")}); err == nil {
		t.Error("chose a used subnet")
	}
}

// An interface's sysctl path keeps a dot in its name (a bridge may be
// named br.0); a global one's dots are its path.
func TestSysctlPaths(t *testing.T) {
	if p := ifSysctlPath("ipv4", "br.0", "route_localnet"); p != "net/ipv4/conf/br.0/route_localnet" {
		t.Errorf("interface sysctl path %s", p)
	}
}
