package cli

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/netshim/netshim/ocihook"
	"github.com/netshim/netshim/state"
)

func psCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ps",
		Short:   "List containers netshim has set up",
		Example: "  netshim ps",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := g.env()
			if err != nil {
				return err
			}
			recs, errs := env.Store.List()
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "CONTAINER\tNAME\tNETWORK\tIP\tMAC\tPORTS")
			for _, r := range recs {
				network := r.Network
				if network == "" {
					network = r.Mode
				}
				ip := "-"
				if r.IP.IsValid() {
					ip = netip.PrefixFrom(r.IP, r.Subnet.Bits()).String()
				}
				mac := r.MAC
				if mac == "" {
					mac = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ocihook.ShortID(r.ID), r.Name, network, ip, mac, psPorts(r))
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
	ID            string     `json:"Id"`
	Name          string     `json:"Name"`
	Mode          string     `json:"Mode"`
	Network       string     `json:"Network,omitempty"`
	IPAddress     string     `json:"IPAddress,omitempty"`
	IPPrefixLen   int        `json:"IPPrefixLen,omitempty"`
	Gateway       string     `json:"Gateway,omitempty"`
	MacAddress    string     `json:"MacAddress,omitempty"`
	Bridge        string     `json:"Bridge,omitempty"`
	HostVeth      string     `json:"HostVeth,omitempty"`
	ContainerVeth string     `json:"ContainerVeth,omitempty"`
	Links         []string   `json:"Links,omitempty"`
	Ports         []PortJSON `json:"Ports"`
	Pid           int        `json:"Pid,omitempty"`
	State         string     `json:"State"`
	Created       string     `json:"Created"`
}

func endpointOf(r *state.Record) Endpoint {
	e := Endpoint{
		ID: r.ID, Name: r.Name, Mode: r.Mode, Network: r.Network, MacAddress: r.MAC, Bridge: r.Bridge,
		HostVeth: r.HostVeth, ContainerVeth: r.ContainerVeth, Pid: r.PID, State: string(r.Phase),
		Created: r.Created.Format("2006-01-02T15:04:05.000000000Z07:00"), Ports: []PortJSON{},
	}
	for _, p := range r.Ports {
		ip, port := reachedAt(r, p)
		e.Ports = append(e.Ports, PortJSON{ContainerPort: p.ContainerPort, Proto: p.Proto, HostIP: ip, HostPort: port})
	}
	if r.IP.IsValid() {
		e.IPAddress, e.IPPrefixLen = r.IP.String(), r.Subnet.Bits()
	}
	if r.Gateway.IsValid() {
		e.Gateway = r.Gateway.String()
	}
	for _, l := range r.Links {
		e.Links = append(e.Links, fmt.Sprintf("%s:%s", l.Name, l.Alias))
	}
	return e
}

// container finds a container's record by id, id prefix or name.
func (g *globals) container(ref string) (*state.Record, error) {
	env, err := g.env()
	if err != nil {
		return nil, err
	}
	return env.Store.Find(ref)
}

// PortJSON is one published port in `netshim inspect`.
type PortJSON struct {
	ContainerPort int    `json:"ContainerPort"`
	Proto         string `json:"Proto"`
	HostIP        string `json:"HostIp"`
	HostPort      int    `json:"HostPort"`
}

// reachedAt is where published port p of r answers: its host address and
// port, or on a routed network (no host port) the container's own.
func reachedAt(r *state.Record, p state.Port) (string, int) {
	if p.HostPort == 0 {
		return r.IP.String(), p.ContainerPort
	}
	return p.HostIPString(), p.HostPort
}

// psPorts is Docker's PORTS column: 0.0.0.0:8080->80/tcp, ...
func psPorts(r *state.Record) string {
	parts := make([]string, 0, len(r.Ports))
	for _, p := range r.Ports {
		ip, port := reachedAt(r, p)
		parts = append(parts, fmt.Sprintf("%s:%d->%d/%s", ip, port, p.ContainerPort, p.Proto))
	}
	return strings.Join(parts, ", ")
}

func portCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "port ID-or-NAME [PORT[/PROTO]]",
		Short: "List a container's published ports, as docker port does",
		Example: `  netshim port web          # 80/tcp -> 0.0.0.0:32768
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
				for _, p := range r.Ports {
					if fmt.Sprint(p.ContainerPort) == want && p.Proto == proto {
						ip, port := reachedAt(r, p)
						fmt.Fprintf(g.stdout, "%s:%d\n", ip, port)
						found = true
					}
				}
				if !found {
					return fmt.Errorf("no public port %s/%s published for %s", want, proto, r.Name)
				}
				return nil
			}
			for _, p := range r.Ports {
				ip, port := reachedAt(r, p)
				fmt.Fprintf(g.stdout, "%d/%s -> %s:%d\n", p.ContainerPort, p.Proto, ip, port)
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
