package ocihook

import (
	"fmt"

	"github.com/netshim/netshim/engine"
	"net/netip"
	"strconv"
	"strings"
)

// PortRequest is one container port to publish (see engine.PortRequest).
type PortRequest = engine.PortRequest

// ExposedPort is one --expose port.
type ExposedPort struct {
	Port  int
	Proto string
}

func parsePort(s, what string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%s %q is not a port between 1 and 65535", what, s)
	}
	return n, nil
}

// parseRange parses `P` or `LO-HI`.
func parseRange(s, what string) (int, int, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := parsePort(lo, what)
	if err != nil {
		return 0, 0, err
	}
	if !isRange {
		return a, a, nil
	}
	b, err := parsePort(hi, what)
	if err != nil {
		return 0, 0, err
	}
	if b < a {
		return 0, 0, fmt.Errorf("%s range %q ends before it starts", what, s)
	}
	return a, b, nil
}

func parseProto(s string) (string, error) {
	switch strings.ToLower(s) {
	case "", "tcp":
		return "tcp", nil
	case "udp":
		return "udp", nil
	}
	return "", fmt.Errorf("protocol %q: want tcp or udp", s)
}

// ParsePublish parses one Docker -p spec:
// [hostIP:][hostPort[-end]:]containerPort[-end][/tcp|udp].
func ParsePublish(spec string) ([]PortRequest, error) {
	body, protoStr, _ := strings.Cut(spec, "/")
	proto, err := parseProto(protoStr)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", spec, err)
	}
	var hostIPStr, hostStr, ctrStr string
	if v6, rest, ok := strings.Cut(strings.TrimPrefix(body, "["), "]:"); ok && strings.HasPrefix(body, "[") {
		// [IPv6]:hostPort:containerPort, as Docker writes it.
		hostIPStr, body = v6, rest
		if hostStr, ctrStr, ok = strings.Cut(body, ":"); !ok || strings.Contains(ctrStr, ":") {
			return nil, fmt.Errorf("%q: want [IPv6]:[hostPort]:containerPort[/proto]", spec)
		}
	} else {
		parts := strings.Split(body, ":")
		switch len(parts) {
		case 1:
			ctrStr = parts[0]
		case 2:
			hostStr, ctrStr = parts[0], parts[1]
		case 3:
			hostIPStr, hostStr, ctrStr = parts[0], parts[1], parts[2]
		default:
			return nil, fmt.Errorf("%q: want [hostIP:][hostPort:]containerPort[/proto], an IPv6 host address in brackets", spec)
		}
	}
	// No host address: every address of both families the container has;
	// 0.0.0.0 or [::]: every address of that family only.
	var hostIP netip.Addr
	if hostIPStr != "" {
		hostIP, err = netip.ParseAddr(hostIPStr)
		switch {
		case err != nil || hostIP.Zone() != "":
			return nil, fmt.Errorf("%q: host address %q is not an IP address", spec, hostIPStr)
		case hostIP.Is4In6():
			hostIP = hostIP.Unmap()
		case hostIP.Is6() && hostIP.IsLoopback():
			return nil, fmt.Errorf("%q: cannot publish on [::1]: the kernel does not forward what arrives on IPv6 loopback to a container; publish on [::] or another host address", spec)
		}
	}
	clo, chi, err := parseRange(ctrStr, "container port")
	if err != nil {
		return nil, fmt.Errorf("%q: %w", spec, err)
	}
	var out []PortRequest
	if hostStr == "" {
		for p := clo; p <= chi; p++ {
			out = append(out, PortRequest{HostIP: hostIP, ContainerPort: p, Proto: proto})
		}
		return out, nil
	}
	hlo, hhi, err := parseRange(hostStr, "host port")
	if err != nil {
		return nil, fmt.Errorf("%q: %w", spec, err)
	}
	switch {
	case clo == chi:
		// One container port on any free port of the host range (Docker).
		return []PortRequest{{HostIP: hostIP, HostLo: hlo, HostHi: hhi, ContainerPort: clo, Proto: proto}}, nil
	case hhi-hlo != chi-clo:
		return nil, fmt.Errorf("%q: host range %s has %d ports, container range %s has %d", spec, hostStr, hhi-hlo+1, ctrStr, chi-clo+1)
	}
	for i := 0; i <= chi-clo; i++ {
		out = append(out, PortRequest{HostIP: hostIP, HostLo: hlo + i, HostHi: hlo + i, ContainerPort: clo + i, Proto: proto})
	}
	return out, nil
}

// ParseExpose parses one --expose spec: port[-end][/proto].
func ParseExpose(spec string) ([]ExposedPort, error) {
	body, protoStr, _ := strings.Cut(spec, "/")
	proto, err := parseProto(protoStr)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", spec, err)
	}
	lo, hi, err := parseRange(body, "port")
	if err != nil {
		return nil, fmt.Errorf("%q: %w", spec, err)
	}
	var out []ExposedPort
	for p := lo; p <= hi; p++ {
		out = append(out, ExposedPort{Port: p, Proto: proto})
	}
	return out, nil
}

// portRequests merges -p and, with -P, every exposed port not published
// explicitly, on a random host port.
func portRequests(publish []PortRequest, expose []ExposedPort, all bool) []PortRequest {
	out := append([]PortRequest(nil), publish...)
	if !all {
		return out
	}
	have := map[string]bool{}
	for _, p := range publish {
		have[fmt.Sprintf("%d/%s", p.ContainerPort, p.Proto)] = true
	}
	for _, e := range expose {
		k := fmt.Sprintf("%d/%s", e.Port, e.Proto)
		if !have[k] {
			have[k] = true
			out = append(out, PortRequest{ContainerPort: e.Port, Proto: e.Proto})
		}
	}
	return out
}
