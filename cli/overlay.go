package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func overlayCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "overlay",
		Short: "Keep this host's overlay networks in line with the cluster",
		Long: `Overlay networks span the hosts of the etcd cluster named in the config's [cluster].
Every container start renews this host's lease and installs the peers it sees; between
starts, 'overlay sync' (a systemd timer) or 'overlay watch' (a service) keeps up with
hosts that join and leave.`,
		Example: `  netshim overlay sync
  netshim overlay watch`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	sync := &cobra.Command{
		Use:   "sync",
		Short: "Renew this host's lease, install the peers, publish the names, once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			report, err := eng.SyncOverlays()
			for _, l := range report {
				fmt.Fprintln(g.stdout, l)
			}
			return err
		},
	}
	watch := &cobra.Command{
		Use:   "watch",
		Short: "Sync now and whenever the cluster changes, until stopped",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			return eng.WatchOverlays(cmd.Context(), func(l string) { fmt.Fprintln(g.stdout, l) })
		},
	}
	cmd.AddCommand(sync, watch)
	return cmd
}
