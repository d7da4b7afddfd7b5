package cli

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/netshim/netshim/engine"
	"github.com/netshim/netshim/state"
)

func psCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ps",
		Short:   "List containers netshim has set up",
		Example: "  netshim ps",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			recs, errs := eng.Store.List()
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "CONTAINER\tNAME\tNETWORK\tIP\tMAC\tPORTS")
			for _, r := range recs {
				network, ip, mac := r.Mode, "-", "-"
				var networks, addrs, macs []string
				for _, a := range r.Attachments {
					networks = append(networks, a.Network)
					for _, p := range a.Addrs {
						addrs = append(addrs, p.String())
					}
					if a.MAC != "" {
						macs = append(macs, a.MAC)
					}
				}
				if len(networks) > 0 {
					network = strings.Join(networks, ",")
				}
				if len(addrs) > 0 {
					ip, mac = strings.Join(addrs, ","), strings.Join(macs, ",")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", engine.ShortID(r.ID), r.Name, network, ip, mac, psPorts(r))
			}
			tw.Flush()
			if len(errs) > 0 {
				return errs[0]
			}
			return nil
		},
	}
}

// Endpoint is `netshim inspect`'s view of a container.
type Endpoint struct {
	ID      string `json:"Id"`
	Name    string `json:"Name"`
	Mode    string `json:"Mode"`
	Network string `json:"Network,omitempty"`
	// The addresses of its first network.
	Addrs
	Bridge        string     `json:"Bridge,omitempty"`
	HostVeth      string     `json:"HostVeth,omitempty"`
	ContainerVeth string     `json:"ContainerVeth,omitempty"`
	Links         []string   `json:"Links,omitempty"`
	Ports         []PortJSON `json:"Ports"`
	// Networks is every network of the container, as Docker's
	// NetworkSettings.Networks.
	Networks map[string]NetworkJSON `json:"Networks,omitempty"`
	Pid      int                    `json:"Pid,omitempty"`
	State    string                 `json:"State"`
	Created  string                 `json:"Created"`
}

// Addrs are a container's addresses on one network and its MAC there,
// with Docker's names (the IPv6 ones on a dual-stack network).
type Addrs struct {
	IPAddress           string `json:"IPAddress,omitempty"`
	IPPrefixLen         int    `json:"IPPrefixLen,omitempty"`
	Gateway             string `json:"Gateway,omitempty"`
	GlobalIPv6Address   string `json:"GlobalIPv6Address,omitempty"`
	GlobalIPv6PrefixLen int    `json:"GlobalIPv6PrefixLen,omitempty"`
	IPv6Gateway         string `json:"IPv6Gateway,omitempty"`
	MacAddress          string `json:"MacAddress,omitempty"`
}

func addrsOf(a *state.Attachment) Addrs {
	out := Addrs{MacAddress: a.MAC}
	for _, p := range a.Addrs {
		if p.Addr().Is4() {
			out.IPAddress, out.IPPrefixLen = p.Addr().String(), p.Bits()
			if a.Gateway.IsValid() {
				out.Gateway = a.Gateway.String()
			}
		} else {
			out.GlobalIPv6Address, out.GlobalIPv6PrefixLen = p.Addr().String(), p.Bits()
			if a.Gateway6.IsValid() {
				out.IPv6Gateway = a.Gateway6.String()
			}
		}
	}
	return out
}

// NetworkJSON is a container's place on one network, with Docker's names.
type NetworkJSON struct {
	Interface string `json:"Interface"`
	Addrs
	DNSNames []string `json:"DNSNames,omitempty"`
	// DefaultRoute says the container's IPv4 default route goes
	// through this network.
	DefaultRoute bool `json:"DefaultRoute"`
}

func endpointOf(r *state.Record) Endpoint {
	e := Endpoint{
		ID: r.ID, Name: r.Name, Mode: r.Mode, Pid: r.Container.PID, State: string(r.Phase),
		Created: r.Created.Format("2006-01-02T15:04:05.000000000Z07:00"), Ports: []PortJSON{},
	}
	if len(r.Attachments) > 0 {
		e.Network = r.Attachments[0].Network
	}
	if a := r.Bridged(); a != nil {
		e.Network, e.Addrs, e.Bridge, e.HostVeth, e.ContainerVeth = a.Network, addrsOf(a), a.Bridge, a.HostVeth, a.Interface
	}
	for _, ap := range ports(r) {
		for _, at := range reachedAt(ap.a, ap.p) {
			e.Ports = append(e.Ports, PortJSON{ContainerPort: ap.p.ContainerPort, Proto: ap.p.Proto, HostIP: at.Addr().String(), HostPort: int(at.Port())})
		}
	}
	for _, l := range r.Links {
		e.Links = append(e.Links, fmt.Sprintf("%s:%s", l.Name, l.Alias))
	}
	for i, a := range r.Attachments {
		if a.Interface == "" {
			continue
		}
		if e.Networks == nil {
			e.Networks = map[string]NetworkJSON{}
		}
		e.Networks[a.Network] = NetworkJSON{Interface: a.Interface, Addrs: addrsOf(&r.Attachments[i]), DNSNames: a.Names, DefaultRoute: a.Route.IsValid()}
	}
	return e
}

// container finds a container's record by id, id prefix or name.
func (g *globals) container(ref string) (*state.Record, error) {
	eng, err := g.engine()
	if err != nil {
		return nil, err
	}
	return eng.Store.Find(ref)
}

// PortJSON is one published port in `netshim inspect`.
type PortJSON struct {
	ContainerPort int    `json:"ContainerPort"`
	Proto         string `json:"Proto"`
	HostIP        string `json:"HostIp"`
	HostPort      int    `json:"HostPort"`
}

// reachedAt is where published port p of attachment a answers, one line
// per family as Docker lists them: its host address and port (0.0.0.0 and
// [::] for every address of a family), or on a routed network (no host
// port) the container's own addresses.
func reachedAt(a *state.Attachment, p state.Port) []netip.AddrPort {
	var out []netip.AddrPort
	switch {
	case p.HostPort == 0:
		for _, ip := range a.Addrs {
			out = append(out, netip.AddrPortFrom(ip.Addr(), uint16(p.ContainerPort)))
		}
	case p.HostIP.IsValid():
		out = append(out, netip.AddrPortFrom(p.HostIP, uint16(p.HostPort)))
	default:
		out = append(out, netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p.HostPort)))
		if a.Addr6().IsValid() {
			out = append(out, netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(p.HostPort)))
		}
	}
	return out
}

// ports are r's published ports, each with its attachment.
func ports(r *state.Record) (out []struct {
	a *state.Attachment
	p state.Port
}) {
	for i := range r.Attachments {
		for _, p := range r.Attachments[i].Ports {
			out = append(out, struct {
				a *state.Attachment
				p state.Port
			}{&r.Attachments[i], p})
		}
	}
	return out
}

// psPorts is Docker's PORTS column: 0.0.0.0:8080->80/tcp, ...
func psPorts(r *state.Record) string {
	var parts []string
	for _, ap := range ports(r) {
		for _, at := range reachedAt(ap.a, ap.p) {
			parts = append(parts, fmt.Sprintf("%s->%d/%s", at, ap.p.ContainerPort, ap.p.Proto))
		}
	}
	return strings.Join(parts, ", ")
}

func portCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "port ID-or-NAME [PORT[/PROTO]]",
		Short: "List a container's published ports, as docker port does",
		Example: `  netshim port web          # 80/tcp -> 0.0.0.0:32768 (and 80/tcp -> [::]:32768 on a dual-stack network)
  netshim port web 80/tcp   # 0.0.0.0:32768`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.container(args[0])
			if err != nil {
				return err
			}
			if len(args) == 2 {
				want, proto, _ := strings.Cut(args[1], "/")
				if proto == "" {
					proto = "tcp"
				}
				found := false
				for _, ap := range ports(r) {
					if fmt.Sprint(ap.p.ContainerPort) == want && ap.p.Proto == proto {
						for _, at := range reachedAt(ap.a, ap.p) {
							fmt.Fprintln(g.stdout, at)
						}
						found = true
					}
				}
				if !found {
					return fmt.Errorf("no public port %s/%s published for %s", want, proto, r.Name)
				}
				return nil
			}
			for _, ap := range ports(r) {
				for _, at := range reachedAt(ap.a, ap.p) {
					fmt.Fprintf(g.stdout, "%d/%s -> %s\n", ap.p.ContainerPort, ap.p.Proto, at)
				}
			}
			return nil
		},
	}
}

func inspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "inspect ID-or-NAME",
		Short:   "Show a container's endpoint as JSON",
		Example: "  netshim inspect web\n  netshim inspect 3f2a",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.container(args[0])
			if err != nil {
				return err
			}
			out, _ := json.MarshalIndent(endpointOf(r), "", "    ")
			fmt.Fprintln(g.stdout, string(out))
			return nil
		},
	}
}
