package resolver

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/netshim/netshim/state"
)

// zone is what the responders know, read from the state dir's network
// files: the containers of every user network, by network.
type zone struct {
	nets map[string]*netZone
}

// netZone is one network's names.
type netZone struct {
	name      string
	subnet    netip.Prefix
	subnet6   netip.Prefix
	endpoints map[netip.Addr]state.DNSEntry
	names     map[string][]netip.Addr // lower-case FQDN -> addresses on this network
	ptr       map[string]string       // reverse name -> FQDN
	ids       map[string]bool         // containers attached
	upstreams []string
	internal  bool
	// overlay: the network spans hosts, whose names Server.Remote knows.
	overlay bool
}

// loadZone reads every network file of dir (the state dir's networks/)
// that has DNS.
func loadZone(dir string) (*zone, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	z := &zone{nets: map[string]*netZone{}}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // removed since listed
		}
		var n state.Net
		if err := json.Unmarshal(data, &n); err != nil {
			return nil, fmt.Errorf("network state %s: %w", e.Name(), err)
		}
		if n.DNS == nil {
			continue
		}
		nz := &netZone{name: name, subnet: n.Subnet, subnet6: n.Subnet6, endpoints: n.DNS.Endpoints, names: map[string][]netip.Addr{},
			ptr: map[string]string{}, ids: map[string]bool{}, upstreams: n.DNS.Upstreams, internal: n.DNS.Internal, overlay: n.Overlay != nil}
		addrs := make([]netip.Addr, 0, len(n.DNS.Endpoints))
		for a := range n.DNS.Endpoints {
			addrs = append(addrs, a)
		}
		// Answers list addresses in order, whatever the map's.
		sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
		for _, a := range addrs {
			e := n.DNS.Endpoints[a]
			nz.ids[e.ID] = true
			for i, nm := range e.Names {
				fq := fqdn(strings.ToLower(nm))
				nz.names[fq] = append(nz.names[fq], a)
				if i == 0 {
					nz.ptr[reverseName(a)] = fq
				}
			}
		}
		z.nets[name] = nz
	}
	return z, nil
}

// view is what one client may ask: the names of every network it is
// attached to, those of the network its query came in on first.
type view struct {
	self      *netZone
	others    []*netZone
	upstreams []string
}

// viewFor is the view of a client of network: a container attached to it
// (by its address there), or the host itself (which sees that network's
// names only). ok is false for anyone else.
func (z *zone) viewFor(network string, client netip.Addr, host bool) (v *view, ok bool) {
	self := z.nets[network]
	if self == nil {
		return nil, false
	}
	if host {
		return &view{self: self, upstreams: self.upstreams}, true
	}
	e, ok := self.endpoints[client]
	if !ok {
		return nil, false
	}
	v = &view{self: self, upstreams: self.upstreams}
	if len(e.Upstreams) > 0 {
		v.upstreams = e.Upstreams
	}
	names := make([]string, 0, len(z.nets))
	for name := range z.nets {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if n := z.nets[name]; n != self && n.ids[e.ID] {
			v.others = append(v.others, n)
		}
	}
	return v, true
}

// nets is the view's networks, the query's own first.
func (v *view) nets() []*netZone { return append([]*netZone{v.self}, v.others...) }

// addrs are the addresses of name: on the query's network if it is there.
func (v *view) addrs(name string) ([]netip.Addr, bool) {
	for _, n := range v.nets() {
		if a, ok := n.names[name]; ok {
			return a, true
		}
	}
	return nil, false
}

// ptrTarget is the name of a reverse name's address, if one of the view's
// networks has it; ours says whether the address is in one of their
// subnets, whose reverse names only we can answer.
func (v *view) ptrTarget(name string) (target string, ours bool) {
	addr, isRev := reverseAddr(name)
	for _, n := range v.nets() {
		if t, ok := n.ptr[name]; ok {
			return t, true
		}
		if isRev && (n.subnet.Contains(addr) || n.subnet6.Contains(addr)) {
			ours = true
		}
	}
	return "", ours
}

// internal says the query's network forwards nothing.
func (v *view) internal() bool { return v.self.internal }

// empty reports whether network has no container left.
func (z *zone) empty(network string) bool {
	n := z.nets[network]
	return n == nil || len(n.endpoints) == 0
}

// reverseName is the in-addr.arpa name of an IPv4 address, or the
// ip6.arpa one (a label per nibble, lowest first) of an IPv6 one.
func reverseName(a netip.Addr) string {
	if a.Is6() {
		var b strings.Builder
		s := a.As16()
		for i := 15; i >= 0; i-- {
			fmt.Fprintf(&b, "%x.%x.", s[i]&0xf, s[i]>>4)
		}
		return b.String() + "ip6.arpa."
	}
	b := a.As4()
	return fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa.", b[3], b[2], b[1], b[0])
}

// reverseAddr is the address of an in-addr.arpa name of four labels, or of
// an ip6.arpa name of 32 nibbles.
func reverseAddr(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa."); ok {
		labels := strings.Split(rest, ".")
		if len(labels) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, l := range labels {
			v, err := strconv.ParseUint(l, 16, 4)
			if err != nil || len(l) != 1 {
				return netip.Addr{}, false
			}
			b[15-i/2] |= byte(v) << (4 * (i % 2))
		}
		return netip.AddrFrom16(b), true
	}
	rest, ok := strings.CutSuffix(name, ".in-addr.arpa.")
	if !ok {
		return netip.Addr{}, false
	}
	labels := strings.Split(rest, ".")
	if len(labels) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, l := range labels {
		v, err := strconv.ParseUint(l, 10, 8)
		if err != nil || (len(l) > 1 && l[0] == '0') {
			return netip.Addr{}, false
		}
		b[3-i] = byte(v)
	}
	return netip.AddrFrom4(b), true
}

// fqdn adds the root's dot to a name that lacks it.
func fqdn(name string) string {
	if strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}
