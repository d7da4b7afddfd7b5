package ocihook

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestParseAnnotations(t *testing.T) {
	o, err := ParseAnnotations(map[string]string{
		AnnNetwork: "bridge", AnnName: "web", AnnIP: "172.17.0.9", AnnLinks: "db:database, cache",
		AnnDNS: "203.0.113.53", AnnDNSSearch: "a.test", AnnDNSOption: "ndots:2",
		AnnAddHost: "gw:host-gateway,h.test:198.51.100.1", "io.other/x": "ignored",
	})
	if err != nil {
		t.Fatal(err)
	}
	if o.Name != "web" || o.IP.String() != "172.17.0.9" || len(o.Links) != 2 || o.Links[0] != (Link{Name: "db", Alias: "database"}) ||
		o.Links[1] != (Link{Name: "cache", Alias: "cache"}) || len(o.DNS) != 1 || !o.AddHosts[0].HostGateway || o.AddHosts[1].IP.String() != "198.51.100.1" {
		t.Errorf("%+v", o)
	}
	if o, _ := ParseAnnotations(nil); len(o.Networks) != 1 || o.Networks[0] != "bridge" {
		t.Errorf("default network %q", o.Networks)
	}
}

func TestParseAnnotationErrors(t *testing.T) {
	cases := map[string]map[string]string{
		`annotation netshim/ip = "::1": "::1" is not an IPv4 address`:            {AnnIP: "::1"},
		`annotation netshim/network = "-x"`:                                      {AnnNetwork: "-x"},
		`annotation netshim/name = "a b"`:                                        {AnnName: "a b"},
		`annotation netshim/links = "db:a:b"`:                                    {AnnLinks: "db:a:b"},
		`annotation netshim/add-host = "h:nope"`:                                 {AnnAddHost: "h:nope"},
		`annotation netshim/aliases = "x,-y"`:                                    {AnnAliases: "x,-y"},
		`annotation netshim/ip = "172.17.0.2": needs a bridge network, not none`: {AnnNetwork: "none", AnnIP: "172.17.0.2"},
		`annotation netshim/links = "db": needs a bridge network, not host`:      {AnnNetwork: "host", AnnLinks: "db"},
		`annotation netshim/netwrok = "bridge": unknown netshim annotation`:      {"netshim/netwrok": "bridge"},
	}
	for want, ann := range cases {
		_, err := ParseAnnotations(ann)
		var ae *AnnotationError
		if !errors.As(err, &ae) || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: got %v, want %q", ann, err, want)
		}
	}
}

func TestResolveStage(t *testing.T) {
	for _, c := range []struct{ arg, status, want string }{
		{"createRuntime", "", StageSetup}, {"prestart", "", StageSetup}, {"poststop", "", StageTeardown},
		{"", "creating", StageSetup}, {"", "created", StageSetup}, {"", "stopped", StageTeardown},
	} {
		if got, err := ResolveStage(c.arg, specsState(c.status)); err != nil || got != c.want {
			t.Errorf("%q %q: %v %v", c.arg, c.status, got, err)
		}
	}
	if _, err := ResolveStage("", "running"); err == nil {
		t.Error("running accepted")
	}
}

func TestReadState(t *testing.T) {
	for in, want := range map[string]string{
		``:                              "empty",
		`[]`:                            "state field",
		`{"id":"a b"}`:                  `state field id "a b"`,
		`{"id":"x","pid":-3}`:           `state field pid "-3"`,
		`{"id":"x","pid":"1"}`:          "state field pid",
		`{"id":"x","status":"stopped"}`: "",
	} {
		_, err := ReadState(strings.NewReader(in))
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

func specsState(s string) specs.ContainerState { return specs.ContainerState(s) }

// The bundle's sysctls that turn IPv6 off on lo, in either spelling, reach
// the request: /etc/hosts must not list ::1 then.
func TestRequestLoopbackIPv6Off(t *testing.T) {
	for sysctl, want := range map[string]bool{
		``: false,
		`"sysctl":{"net.ipv6.conf.all.disable_ipv6":"1"}`:  true,
		`"sysctl":{"net/ipv6/conf/lo/disable_ipv6":"1"}`:   true,
		`"sysctl":{"net.ipv6.conf.all.disable_ipv6":"0"}`:  false,
		`"sysctl":{"net.ipv6.conf.eth0.disable_ipv6":"1"}`: false,
	} {
		bundle := t.TempDir()
		config := `{"root":{"path":"rootfs"},"linux":{` + sysctl + `}}`
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
		req, _, err := Request(&specs.State{ID: "c", Pid: 1, Bundle: bundle})
		if err != nil {
			t.Fatal(err)
		}
		if req.LoopbackIPv6Off != want {
			t.Errorf("%s: LoopbackIPv6Off %v, want %v", config, req.LoopbackIPv6Off, want)
		}
	}
}

// netshim/network takes several networks, in the order of the container's
// interfaces; per-network options go in netshim/network.NAME.FIELD; the
// first network also takes netshim/ip, ip6 and aliases.
func TestSeveralNetworks(t *testing.T) {
	o, err := ParseAnnotations(map[string]string{
		AnnNetwork: "front,back.end", AnnIP: "10.1.0.5", AnnAliases: "www",
		"netshim/network.back.end.ip":          "10.2.0.5",
		"netshim/network.back.end.aliases":     "api,db",
		"netshim/network.back.end.mac":         "02:00:00:00:00:09",
		"netshim/network.back.end.gw-priority": "10",
	})
	if err != nil {
		t.Fatal(err)
	}
	eps, err := o.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || eps[0].Network != "front" || eps[0].IP.String() != "10.1.0.5" || eps[0].Aliases[0] != "www" ||
		eps[1].Network != "back.end" || eps[1].IP.String() != "10.2.0.5" || len(eps[1].Aliases) != 2 || eps[1].MAC.String() != "02:00:00:00:00:09" ||
		eps[1].GwPriority != 10 {
		t.Errorf("endpoints %+v", eps)
	}
	// Podman's --annotation splits at commas: spaces separate too.
	if n, err := ParseNetworks(" front  back "); err != nil || len(n) != 2 || n[1] != "back" {
		t.Errorf("space-separated networks: %v %v", n, err)
	}
	for ann, want := range map[string]map[string]string{
		"network front is given twice":              {AnnNetwork: "front,front"},
		"host and none cannot be combined":          {AnnNetwork: "host,front"},
		"is not one of the container's networks":    {AnnNetwork: "front", "netshim/network.back.ip": "10.2.0.5"},
		"unknown netshim annotation (fields":        {AnnNetwork: "front", "netshim/network.front.colour": "blue"},
		`"x" is not an integer`:                     {AnnNetwork: "front", "netshim/network.front.gw-priority": "x"},
		"is a multicast MAC address":                {AnnNetwork: "front", "netshim/network.front.mac": "01:00:00:00:00:01"},
		"netshim/network.front.ip too: set it once": {AnnNetwork: "front", AnnIP: "10.1.0.5", "netshim/network.front.ip": "10.1.0.6"},
	} {
		o, err := ParseAnnotations(want)
		if err == nil {
			_, err = o.Endpoints()
		}
		if err == nil || !strings.Contains(err.Error(), ann) {
			t.Errorf("%v: %v, want %q", want, err, ann)
		}
	}
}
