package ocihook

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/engine"
	"github.com/netshim/netshim/internal/names"
)

// Annotation keys (SPEC.md: per-container options).
const (
	AnnNetwork    = "netshim/network"
	AnnName       = "netshim/name"
	AnnIP         = "netshim/ip"
	AnnIP6        = "netshim/ip6"
	AnnLinks      = "netshim/links"
	AnnAliases    = "netshim/aliases"
	AnnDNS        = "netshim/dns"
	AnnDNSSearch  = "netshim/dns-search"
	AnnDNSOption  = "netshim/dns-option"
	AnnAddHost    = "netshim/add-host"
	AnnPublish    = "netshim/publish"
	AnnExpose     = "netshim/expose"
	AnnPublishAll = "netshim/publish-all"
)

// Network modes besides named networks.
const (
	ModeBridge = engine.ModeBridge
	ModeNone   = engine.ModeNone
	ModeHost   = engine.ModeHost
)

// Link is one --link: a container name and the alias it is known by.
type Link = engine.LinkRequest

// AddHost is one --add-host; HostGateway stands for the network's gateway.
type AddHost = engine.AddHost

// Options are a container's network options, from its annotations.
type Options struct {
	Network    string
	Name       string
	IP         netip.Addr
	IP6        netip.Addr
	Links      []Link
	Aliases    []string
	DNS        []netip.Addr
	DNSSearch  []string
	DNSOptions []string
	AddHosts   []AddHost
	Publish    []PortRequest
	Expose     []ExposedPort
	PublishAll bool
}

// Ports is what to publish: -p, plus every exposed port with -P.
func (o *Options) Ports() []PortRequest {
	return portRequests(o.Publish, o.Expose, o.PublishAll)
}

// AnnotationError names the annotation and value that was refused.
type AnnotationError struct {
	Key    string
	Value  string
	Reason string
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s = %q: %s", e.Key, e.Value, e.Reason)
}

var known = map[string]bool{
	AnnNetwork: true, AnnName: true, AnnIP: true, AnnIP6: true, AnnLinks: true, AnnAliases: true, AnnDNS: true,
	AnnDNSSearch: true, AnnDNSOption: true, AnnAddHost: true, AnnPublish: true, AnnExpose: true, AnnPublishAll: true,
}

// ParseAnnotations reads the netshim/* annotations. Unknown netshim/* keys
// are refused, so a typo is not silently ignored.
func ParseAnnotations(ann map[string]string) (*Options, error) {
	keys := make([]string, 0, len(ann))
	for k := range ann {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.HasPrefix(k, "netshim/") && !known[k] {
			return nil, &AnnotationError{Key: k, Value: ann[k], Reason: "unknown netshim annotation"}
		}
	}
	o := &Options{Network: ModeBridge}
	var err error
	if v, ok := ann[AnnNetwork]; ok {
		if o.Network, err = ParseNetwork(v); err != nil {
			return nil, &AnnotationError{Key: AnnNetwork, Value: v, Reason: err.Error()}
		}
	}
	if v, ok := ann[AnnName]; ok {
		if err := CheckName(v); err != nil {
			return nil, &AnnotationError{Key: AnnName, Value: v, Reason: err.Error()}
		}
		o.Name = v
	}
	if v := ann[AnnIP]; v != "" {
		if o.IP, err = ParseIP(v); err != nil {
			return nil, &AnnotationError{Key: AnnIP, Value: v, Reason: err.Error()}
		}
	}
	if v := ann[AnnIP6]; v != "" {
		if o.IP6, err = ParseIP6(v); err != nil {
			return nil, &AnnotationError{Key: AnnIP6, Value: v, Reason: err.Error()}
		}
	}
	for _, item := range splitList(ann[AnnLinks]) {
		l, err := ParseLink(item)
		if err != nil {
			return nil, &AnnotationError{Key: AnnLinks, Value: ann[AnnLinks], Reason: err.Error()}
		}
		o.Links = append(o.Links, l)
	}
	for _, item := range splitList(ann[AnnAliases]) {
		if err := CheckName(item); err != nil {
			return nil, &AnnotationError{Key: AnnAliases, Value: ann[AnnAliases], Reason: err.Error()}
		}
		o.Aliases = append(o.Aliases, item)
	}
	for _, item := range splitList(ann[AnnDNS]) {
		a, err := netip.ParseAddr(item)
		if err != nil {
			return nil, &AnnotationError{Key: AnnDNS, Value: ann[AnnDNS], Reason: fmt.Sprintf("%q is not an IP address", item)}
		}
		o.DNS = append(o.DNS, a)
	}
	for _, item := range splitList(ann[AnnDNSSearch]) {
		if strings.ContainsAny(item, " \t") {
			return nil, &AnnotationError{Key: AnnDNSSearch, Value: ann[AnnDNSSearch], Reason: fmt.Sprintf("%q is not a domain", item)}
		}
		o.DNSSearch = append(o.DNSSearch, item)
	}
	for _, item := range splitList(ann[AnnDNSOption]) {
		if strings.ContainsAny(item, " \t") {
			return nil, &AnnotationError{Key: AnnDNSOption, Value: ann[AnnDNSOption], Reason: fmt.Sprintf("%q is not a resolver option", item)}
		}
		o.DNSOptions = append(o.DNSOptions, item)
	}
	for _, item := range splitList(ann[AnnAddHost]) {
		h, err := ParseAddHost(item)
		if err != nil {
			return nil, &AnnotationError{Key: AnnAddHost, Value: ann[AnnAddHost], Reason: err.Error()}
		}
		o.AddHosts = append(o.AddHosts, h)
	}
	for _, item := range splitList(ann[AnnPublish]) {
		reqs, err := ParsePublish(item)
		if err != nil {
			return nil, &AnnotationError{Key: AnnPublish, Value: ann[AnnPublish], Reason: err.Error()}
		}
		o.Publish = append(o.Publish, reqs...)
	}
	for _, item := range splitList(ann[AnnExpose]) {
		ports, err := ParseExpose(item)
		if err != nil {
			return nil, &AnnotationError{Key: AnnExpose, Value: ann[AnnExpose], Reason: err.Error()}
		}
		o.Expose = append(o.Expose, ports...)
	}
	switch v := ann[AnnPublishAll]; v {
	case "", "false":
	case "true":
		o.PublishAll = true
	default:
		return nil, &AnnotationError{Key: AnnPublishAll, Value: v, Reason: "want true or false"}
	}
	if o.Network == ModeHost || o.Network == ModeNone {
		switch {
		case o.IP.IsValid():
			return nil, &AnnotationError{Key: AnnIP, Value: ann[AnnIP], Reason: "needs a bridge network, not " + o.Network}
		case o.IP6.IsValid():
			return nil, &AnnotationError{Key: AnnIP6, Value: ann[AnnIP6], Reason: "needs a bridge network, not " + o.Network}
		case len(o.Links) > 0:
			return nil, &AnnotationError{Key: AnnLinks, Value: ann[AnnLinks], Reason: "needs a bridge network, not " + o.Network}
		case len(o.Publish) > 0:
			return nil, &AnnotationError{Key: AnnPublish, Value: ann[AnnPublish], Reason: "publishing needs a bridge network, not " + o.Network}
		case o.PublishAll:
			return nil, &AnnotationError{Key: AnnPublishAll, Value: ann[AnnPublishAll], Reason: "publishing needs a bridge network, not " + o.Network}
		}
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// CheckName validates a container name or alias as Docker does
// ([a-zA-Z0-9][a-zA-Z0-9_.-]*), at most 128 characters, and refuses what
// DNS can never answer (a label over 63 characters).
func CheckName(s string) error {
	if !names.Valid(s, "_.-", 128) {
		return fmt.Errorf("invalid name %q: use letters, digits, '_', '.', '-', starting with a letter or digit, at most 128", s)
	}
	if err := engine.DNSName(s); err != nil {
		return fmt.Errorf("invalid name %q: %w", s, err)
	}
	return nil
}

// ParseNetwork validates a network mode or user network name.
func ParseNetwork(s string) (string, error) {
	switch s {
	case "", "default":
		return ModeBridge, nil
	case ModeBridge, ModeHost, ModeNone:
		return s, nil
	}
	if err := config.CheckNetworkName(s); err != nil {
		return "", err
	}
	return s, nil
}

// ParseIP parses a static IPv4 address.
func ParseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address", s)
	}
	return a, nil
}

// ParseIP6 parses a static IPv6 address.
func ParseIP6(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv6 address", s)
	}
	return a, nil
}

// ParseLink parses `name[:alias]`.
func ParseLink(s string) (Link, error) {
	name, alias, _ := strings.Cut(s, ":")
	if err := CheckName(name); err != nil {
		return Link{}, fmt.Errorf("link %q: %w", s, err)
	}
	if alias == "" {
		alias = name
	} else if err := CheckName(alias); err != nil {
		return Link{}, fmt.Errorf("link %q: alias: %w", s, err)
	}
	return Link{Name: name, Alias: alias}, nil
}

// ParseAddHost parses `host:ip`; `host-gateway` stands for the bridge address.
func ParseAddHost(s string) (AddHost, error) {
	host, ip, ok := strings.Cut(s, ":")
	if !ok {
		// Docker also takes host=ip.
		host, ip, ok = strings.Cut(s, "=")
	}
	if !ok || host == "" || ip == "" {
		return AddHost{}, fmt.Errorf("%q is not host:ip", s)
	}
	if !names.Host(host) {
		return AddHost{}, fmt.Errorf("%q: %q is not a host name", s, host)
	}
	if ip == "host-gateway" {
		return AddHost{Name: host, HostGateway: true}, nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return AddHost{}, fmt.Errorf("%q: %q is not an IP address", s, ip)
	}
	return AddHost{Name: host, IP: a}, nil
}
