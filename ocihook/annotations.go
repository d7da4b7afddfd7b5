package ocihook

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"

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
	// Networks are the container's networks, in the order of its
	// interfaces. IP, IP6 and Aliases are for the first, PerNetwork has
	// every network's own options.
	Networks   []string
	PerNetwork map[string]*NetworkOptions
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

// NetworkOptions are a container's options on one of its networks, from
// the netshim/network.NAME.FIELD annotations.
type NetworkOptions struct {
	IP, IP6    netip.Addr
	Aliases    []string
	MAC        net.HardwareAddr
	GwPriority int
}

// Per-network annotation fields: netshim/network.NAME.FIELD.
const (
	FieldIP         = "ip"
	FieldIP6        = "ip6"
	FieldAliases    = "aliases"
	FieldMAC        = "mac"
	FieldGwPriority = "gw-priority"
)

// PerNetworkKey is the annotation of a per-network option.
func PerNetworkKey(network, field string) string { return AnnNetwork + "." + network + "." + field }

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
	var perNetwork []string
	for _, k := range keys {
		if strings.HasPrefix(k, AnnNetwork+".") {
			perNetwork = append(perNetwork, k)
		} else if strings.HasPrefix(k, "netshim/") && !known[k] {
			return nil, &AnnotationError{Key: k, Value: ann[k], Reason: "unknown netshim annotation"}
		}
	}
	o := &Options{Networks: []string{ModeBridge}, PerNetwork: map[string]*NetworkOptions{}}
	var err error
	if v, ok := ann[AnnNetwork]; ok {
		if o.Networks, err = ParseNetworks(v); err != nil {
			return nil, &AnnotationError{Key: AnnNetwork, Value: v, Reason: err.Error()}
		}
	}
	for _, k := range perNetwork {
		if err := o.parsePerNetwork(k, ann[k]); err != nil {
			return nil, err
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
	// Items never hold spaces: splitList splits at them.
	o.DNSSearch = splitList(ann[AnnDNSSearch])
	o.DNSOptions = splitList(ann[AnnDNSOption])
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
	if mode := o.Networks[0]; mode == ModeHost || mode == ModeNone {
		switch {
		case o.IP.IsValid():
			return nil, &AnnotationError{Key: AnnIP, Value: ann[AnnIP], Reason: "needs a bridge network, not " + mode}
		case o.IP6.IsValid():
			return nil, &AnnotationError{Key: AnnIP6, Value: ann[AnnIP6], Reason: "needs a bridge network, not " + mode}
		case len(o.Links) > 0:
			return nil, &AnnotationError{Key: AnnLinks, Value: ann[AnnLinks], Reason: "needs a bridge network, not " + mode}
		case len(o.Publish) > 0:
			return nil, &AnnotationError{Key: AnnPublish, Value: ann[AnnPublish], Reason: "publishing needs a bridge network, not " + mode}
		case o.PublishAll:
			return nil, &AnnotationError{Key: AnnPublishAll, Value: ann[AnnPublishAll], Reason: "publishing needs a bridge network, not " + mode}
		}
	}
	return o, nil
}

// splitList splits a list annotation at commas or spaces: Podman's
// --annotation splits its value at commas itself, so there a list is
// written with spaces. No item of any list holds either.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
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

// ParseNetworks parses netshim/network: a network mode, or networks in the
// order of the container's interfaces, separated by commas or spaces. host
// and none stand alone.
func ParseNetworks(s string) ([]string, error) {
	items := splitList(s)
	if len(items) == 0 {
		items = []string{""} // the default network
	}
	var out []string
	for _, item := range items {
		n, err := ParseNetwork(item)
		if err != nil {
			return nil, err
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("network %s is given twice", n)
		}
		out = append(out, n)
	}
	if len(out) > 1 && (slices.Contains(out, ModeHost) || slices.Contains(out, ModeNone)) {
		return nil, fmt.Errorf("host and none cannot be combined with other networks")
	}
	return out, nil
}

// parsePerNetwork reads one netshim/network.NAME.FIELD annotation.
func (o *Options) parsePerNetwork(key, v string) error {
	rest := strings.TrimPrefix(key, AnnNetwork+".")
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		return &AnnotationError{Key: key, Value: v, Reason: "unknown netshim annotation (want netshim/network.NAME.FIELD)"}
	}
	network, field := rest[:i], rest[i+1:]
	if !slices.Contains(o.Networks, network) {
		return &AnnotationError{Key: key, Value: v, Reason: "network " + network + " is not one of the container's networks (" + AnnNetwork + ")"}
	}
	if network == ModeHost || network == ModeNone {
		return &AnnotationError{Key: key, Value: v, Reason: "needs a bridge network, not " + network}
	}
	n := o.PerNetwork[network]
	if n == nil {
		n = &NetworkOptions{}
		o.PerNetwork[network] = n
	}
	if err := n.Set(field, v); err != nil {
		if errors.Is(err, errUnknownField) {
			return &AnnotationError{Key: key, Value: v, Reason: "unknown netshim annotation (fields: ip, ip6, aliases, mac, gw-priority)"}
		}
		return &AnnotationError{Key: key, Value: v, Reason: err.Error()}
	}
	return nil
}

var errUnknownField = errors.New("unknown per-network field")

// Set parses one per-network option (a Field* name) into n: from an
// annotation, or a flag of `network connect`.
func (n *NetworkOptions) Set(field, v string) error {
	var err error
	switch field {
	case FieldIP:
		n.IP, err = ParseIP(v)
	case FieldIP6:
		n.IP6, err = ParseIP6(v)
	case FieldAliases:
		for _, item := range splitList(v) {
			if err = CheckName(item); err != nil {
				break
			}
			n.Aliases = append(n.Aliases, item)
		}
	case FieldMAC:
		n.MAC, err = ParseMAC(v)
	case FieldGwPriority:
		if n.GwPriority, err = strconv.Atoi(v); err != nil {
			err = fmt.Errorf("%q is not an integer", v)
		}
	default:
		err = errUnknownField
	}
	return err
}

// Endpoint is the engine's request for network with these options.
func (n *NetworkOptions) Endpoint(network string) engine.Endpoint {
	return engine.Endpoint{Network: network, IP: n.IP, IP6: n.IP6, Aliases: n.Aliases, MAC: n.MAC, GwPriority: n.GwPriority}
}

// ParseMAC parses a unicast MAC address for a container's interface.
func ParseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%q is not a MAC address", s)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("%q is a multicast MAC address", s)
	}
	return mac, nil
}

// Endpoints are the container's endpoint requests: its networks in order,
// the first with IP, IP6 and Aliases, each with its own options. An option
// set both ways for the first network is refused.
func (o *Options) Endpoints() ([]engine.Endpoint, error) {
	var out []engine.Endpoint
	for i, name := range o.Networks {
		n := o.PerNetwork[name]
		if n == nil {
			n = &NetworkOptions{}
		}
		ep := n.Endpoint(name)
		if i == 0 {
			for _, c := range []struct {
				global, per       bool
				key, field, value string
			}{{o.IP.IsValid(), n.IP.IsValid(), AnnIP, FieldIP, o.IP.String()}, {o.IP6.IsValid(), n.IP6.IsValid(), AnnIP6, FieldIP6, o.IP6.String()},
				{len(o.Aliases) > 0, len(n.Aliases) > 0, AnnAliases, FieldAliases, strings.Join(o.Aliases, ",")}} {
				if c.global && c.per {
					return nil, &AnnotationError{Key: c.key, Value: c.value, Reason: "set for network " + name + " in " + PerNetworkKey(name, c.field) + " too: set it once"}
				}
			}
			if o.IP.IsValid() {
				ep.IP = o.IP
			}
			if o.IP6.IsValid() {
				ep.IP6 = o.IP6
			}
			if len(o.Aliases) > 0 {
				ep.Aliases = o.Aliases
			}
		}
		out = append(out, ep)
	}
	return out, nil
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
