package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/engine"
	"github.com/netshim/netshim/ocihook"
)

func networkCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Manage user-defined bridge networks",
		Long: `User-defined networks have their own bridge and subnet, are isolated from each other,
and resolve their containers' names through a DNS responder on the gateway. Networks
made here are kept in the config's data_dir (default /var/lib/netshim) across reboots;
networks can also be defined in the config file under [networks.NAME].`,
		Example: `  netshim network create wp-net
  netshim network create --subnet 172.100.0.0/16 net0
  netshim network ls
  netshim network inspect wp-net
  netshim network rm wp-net`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cmd.AddCommand(networkCreateCmd(g), networkLsCmd(g), networkInspectCmd(g), networkRmCmd(g), networkConnectCmd(g), networkDisconnectCmd(g))
	return cmd
}

func networkCreateCmd(g *globals) *cobra.Command {
	var req engine.NetworkRequest
	var subnets, gateways, ranges []string
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] NAME",
		Short: "Create a bridge network",
		Example: `  netshim network create wp-net
  netshim network create -d bridge --subnet 172.100.0.0/16 --gateway 172.100.0.1 net0
  netshim network create --internal backend
  netshim network create -o gateway_mode=routed --subnet 198.18.0.0/24 direct`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			req.Name = args[0]
			for _, v := range []struct {
				flag      string
				in        []string
				out, out6 *string
			}{{"--subnet", subnets, &req.Subnet, &req.Subnet6}, {"--gateway", gateways, &req.Gateway, &req.Gateway6}, {"--ip-range", ranges, &req.IPRange, &req.IPRange6}} {
				if err := byFamily(v.flag, v.in, v.out, v.out6); err != nil {
					return err
				}
			}
			def, err := eng.CreateNetwork(req)
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, def.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&req.Driver, "driver", "d", "bridge", "network driver: bridge, or overlay (across the hosts of [cluster])")
	f.IntVar(&req.HostPrefix, "host-prefix", 0, "overlay: the prefix length of each host's share of --subnet (default 24)")
	f.StringArrayVar(&subnets, "subnet", nil, "subnet in CIDR form, one per family (default: the next free pool)")
	f.StringArrayVar(&gateways, "gateway", nil, "gateway address, one per family (default: the subnet's first address)")
	f.StringArrayVar(&ranges, "ip-range", nil, "hand out container addresses from this range only, one per family")
	f.BoolVar(&req.IPv6, "ipv6", false, "dual stack: an IPv6 subnet too (default: the next free IPv6 pool)")
	f.BoolVar(&req.Internal, "internal", false, "no outbound access: no masquerade, no route out")
	f.IntVar(&req.MTU, "mtu", 0, "MTU of the bridge and the containers' interfaces (default 1500)")
	f.StringVar(&req.Bridge, "bridge", "", "bridge device name (default br-<first 12 hex of the id>)")
	f.StringArrayVarP(&req.Options, "opt", "o", nil, "driver option KEY=VALUE: gateway_mode=nat|nat-unprotected|routed|isolated")
	return cmd
}

func networkLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List networks",
		Example: "  netshim network ls",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			nets, err := eng.UserNetworks()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tDRIVER\tSUBNET")
			if info, err := eng.InspectNetwork(config.DefaultNetwork); err == nil {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", engine.ShortID(info.ID), info.Name, "bridge", orDash(info.Subnet))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", engine.ShortID(config.NetworkID("host")), "host", "host", "-")
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", engine.ShortID(config.NetworkID("none")), "none", "null", "-")
			for _, n := range nets {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", engine.ShortID(n.ID), n.Name, "bridge", n.Subnet)
			}
			overlays, err := eng.OverlayNetworks()
			if err != nil {
				tw.Flush()
				return err
			}
			for _, n := range overlays {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", engine.ShortID(n.ID), n.Name, "overlay", n.Subnet)
			}
			return tw.Flush()
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func networkInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "inspect NAME",
		Short:   "Show a network and its containers as JSON",
		Example: "  netshim network inspect wp-net",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			info, err := eng.InspectNetwork(args[0])
			if err != nil {
				return err
			}
			out, _ := json.MarshalIndent(info, "", "    ")
			fmt.Fprintln(g.stdout, string(out))
			return nil
		},
	}
}

func networkRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove networks (refused while containers are attached)",
		Example: "  netshim network rm wp-net",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			for _, name := range args {
				if err := eng.RemoveNetwork(name); err != nil {
					return err
				}
				fmt.Fprintln(g.stdout, name)
			}
			return nil
		},
	}
}

// byFamily sorts a flag's values (Docker takes --subnet and its kin once
// per family) into the IPv4 and the IPv6 one. A value that is neither is
// left to the network's validation, as IPv4, which names it.
func byFamily(flag string, in []string, v4, v6 *string) error {
	for _, s := range in {
		out := v4
		if strings.Contains(s, ":") {
			out = v6
		}
		if *out != "" {
			return fmt.Errorf("%s %q: one per family, and %q is already given", flag, s, *out)
		}
		*out = s
	}
	return nil
}

func networkConnectCmd(g *globals) *cobra.Command {
	var ip, ip6, mac string
	var aliases []string
	cmd := &cobra.Command{
		Use:   "connect [OPTIONS] NETWORK CONTAINER",
		Short: "Connect a running container to a network",
		Long: `Attach a running container (id, id prefix or name) to a bridge network, as docker network
connect: a new interface (the first free ethN) with its address, its names in the network's DNS.
The container's default route stays where it is, unless it had none.`,
		Example: `  netshim network connect backend web
  netshim network connect --alias api --ip 10.82.0.50 backend web`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The flags are the per-network annotations' fields, parsed as
			// the hook parses those.
			var opts ocihook.NetworkOptions
			for _, f := range []struct{ flag, field, value string }{
				{"--ip", ocihook.FieldIP, ip}, {"--ip6", ocihook.FieldIP6, ip6}, {"--mac-address", ocihook.FieldMAC, mac},
				{"--alias", ocihook.FieldAliases, strings.Join(aliases, ",")},
			} {
				if f.value == "" {
					continue
				}
				if err := opts.Set(f.field, f.value); err != nil {
					return fmt.Errorf("%s: %w", f.flag, err)
				}
			}
			eng, err := g.engine()
			if err != nil {
				return err
			}
			err = eng.Connect(args[1], opts.Endpoint(args[0]))
			var fe *engine.FieldError
			if errors.As(err, &fe) {
				return fmt.Errorf("--%s: %s", fe.Field, fe.Reason)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&ip, "ip", "", "static IPv4 address on the network")
	f.StringVar(&ip6, "ip6", "", "static IPv6 address on a dual-stack network")
	f.StringArrayVar(&aliases, "alias", nil, "extra name in the network's DNS (repeatable)")
	f.StringVar(&mac, "mac-address", "", "MAC address of the new interface")
	return cmd
}

func networkDisconnectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "disconnect NETWORK CONTAINER",
		Short:   "Disconnect a running container from a network",
		Example: "  netshim network disconnect backend web",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			return eng.Disconnect(args[1], args[0])
		},
	}
}
