package ocihook

import (
	"fmt"
	"strings"
	"testing"
)

func TestParsePublish(t *testing.T) {
	cases := map[string]string{
		"80":                        "[:0-0->80/tcp]",
		"8080:80":                   "[:8080-8080->80/tcp]",
		"8080:80/udp":               "[:8080-8080->80/udp]",
		"127.0.0.1:8080:80":         "[127.0.0.1:8080-8080->80/tcp]",
		"127.0.0.1::80":             "[127.0.0.1:0-0->80/tcp]",
		"0.0.0.0:8080:80":           "[0.0.0.0:8080-8080->80/tcp]",
		"[::]:8080:80":              "[:::8080-8080->80/tcp]",
		"[2001:db8::2]::80":         "[2001:db8::2:0-0->80/tcp]",
		"[2001:db8::2]:8080:80/udp": "[2001:db8::2:8080-8080->80/udp]",
		"8000-8002:80-82":           "[:8000-8000->80/tcp :8001-8001->81/tcp :8002-8002->82/tcp]",
		"8000-8002:80":              "[:8000-8002->80/tcp]",
		"80-81/udp":                 "[:0-0->80/udp :0-0->81/udp]",
	}
	for in, want := range cases {
		reqs, err := ParsePublish(in)
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		var parts []string
		for _, r := range reqs {
			ip := ""
			if r.HostIP.IsValid() {
				ip = r.HostIP.String()
			}
			parts = append(parts, fmt.Sprintf("%s:%d-%d->%d/%s", ip, r.HostLo, r.HostHi, r.ContainerPort, r.Proto))
		}
		if got := "[" + strings.Join(parts, " ") + "]"; got != want {
			t.Errorf("%s: got %s want %s", in, got, want)
		}
	}
	bad := map[string]string{
		"":                     `container port ""`,
		"0":                    `container port "0" is not a port`,
		"65536":                `container port "65536"`,
		"8080:80/sctp":         `protocol "sctp"`,
		"8000-8002:80-81":      "host range 8000-8002 has 3 ports, container range 80-81 has 2",
		"x:80:80":              `host address "x"`,
		"[::1]:80:80":          "cannot publish on [::1]: the kernel does not forward",
		"[::2]:80":             "want [IPv6]:[hostPort]:containerPort",
		"[fe80::1%eth0]:80:80": "is not an IP address",
		"1:2:3:4":              "want [hostIP:]",
		"90-80:80":             "ends before it starts",
		"abc":                  `container port "abc"`,
	}
	for in, want := range bad {
		if _, err := ParsePublish(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v want %q", in, err, want)
		}
	}
}

func TestPublishAll(t *testing.T) {
	o, err := ParseAnnotations(map[string]string{AnnPublish: "8080:80", AnnExpose: "80,443,53/udp", AnnPublishAll: "true"})
	if err != nil {
		t.Fatal(err)
	}
	ports := o.Ports()
	if len(ports) != 3 || ports[0].HostLo != 8080 || ports[1].ContainerPort != 443 || ports[2].Proto != "udp" || ports[1].HostLo != 0 {
		t.Errorf("%+v", ports)
	}
	if _, err := ParseAnnotations(map[string]string{AnnPublishAll: "yes"}); err == nil {
		t.Error("publish-all yes accepted")
	}
	if _, err := ParseAnnotations(map[string]string{AnnNetwork: "host", AnnPublish: "80"}); err == nil {
		t.Error("publish on host network accepted")
	}
	if _, err := ParseExpose("70000"); err == nil {
		t.Error("expose 70000 accepted")
	}
}
