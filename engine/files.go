package engine

import (
	"fmt"
	"net/netip"

	"github.com/netshim/netshim/internal/fastio"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// HostResolvConf is the host's resolver configuration.
var HostResolvConf = "/etc/resolv.conf"

// resolvedResolvConf is systemd-resolved's list of real upstreams, used when
// the host's resolv.conf names only its loopback stub (as Docker does).
const resolvedResolvConf = "/run/systemd/resolve/resolv.conf"

// writeFiles writes the container's /etc/hosts and /etc/resolv.conf, as
// Docker would, and returns the host paths written. loopback6 says the
// container's lo has ::1.
func (e *Engine) writeFiles(req *Request, rec *state.Record, loopback6 bool) ([]string, error) {
	var hosts netsetup.HostsSpec
	var resolv netsetup.ResolvSpec
	hostResolv, _ := fastio.ReadFile(HostResolvConf)
	a := rec.Bridged()
	switch {
	case rec.Mode == ModeHost:
		base, err := fastio.ReadFile("/etc/hosts")
		if err != nil {
			return nil, fmt.Errorf("read host /etc/hosts: %w", err)
		}
		hosts = netsetup.HostsSpec{Base: base}
		resolv = netsetup.ResolvSpec{Host: hostResolv, KeepLoopback: true}
	case a != nil:
		hosts = netsetup.HostsSpec{Links: rec.Links}
		for _, at := range rec.Attachments {
			for _, p := range at.Addrs {
				hosts.Addrs = append(hosts.Addrs, p.Addr())
			}
		}
		resolv.Host = containerResolvBase(hostResolv)
	default:
		resolv.Host = containerResolvBase(hostResolv)
	}
	hosts.Hostname, hosts.Name = req.Hostname, rec.Name
	// The runtime applies the container's sysctls after this hook.
	hosts.Loopback6 = loopback6 && !req.LoopbackIPv6Off
	for _, h := range req.AddHosts {
		ip := h.IP
		if h.HostGateway {
			if a == nil {
				return nil, &FieldError{Field: FieldAddHosts, Reason: "host-gateway needs a bridge network"}
			}
			ip = a.Gateway
		}
		hosts.Extra = append(hosts.Extra, netsetup.HostEntry{Name: h.Name, IP: ip})
	}
	resolv.Nameservers, resolv.Search, resolv.Options = req.DNS, req.DNSSearch, req.DNSOptions
	if a != nil {
		def, err := e.network(a.Network)
		if err != nil {
			return nil, err
		}
		for _, at := range rec.Attachments {
			if len(at.Names) > 0 {
				// The first user network's responder answers, for
				// every network of the container (and forwards --dns).
				resolv.Nameservers = []netip.Addr{at.Gateway}
				break
			}
		}
		if len(resolv.Nameservers) == 0 {
			resolv.Nameservers = def.DNS
		}
		if len(resolv.Search) == 0 {
			resolv.Search = def.DNSSearch
		}
		if len(resolv.Options) == 0 {
			resolv.Options = def.DNSOptions
		}
	}
	var paths []string
	for _, f := range []struct {
		dest    string
		content []byte
	}{{"/etc/hosts", netsetup.BuildHosts(hosts)}, {"/etc/resolv.conf", netsetup.BuildResolv(resolv)}} {
		p, err := netsetup.WriteContainerFile(req.Bundle, req.Rootfs, req.Mounts, f.dest, f.content)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// containerResolvBase is what a container's resolv.conf is built from: the
// host's, or systemd-resolved's upstream list when the host's names only
// loopback servers, which a container cannot reach.
func containerResolvBase(host []byte) []byte {
	ns, _, _ := netsetup.ParseResolv(host)
	for _, a := range ns {
		if !a.IsLoopback() {
			return host
		}
	}
	if alt, err := fastio.ReadFile(resolvedResolvConf); err == nil {
		return alt
	}
	return host
}
