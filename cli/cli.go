// Package cli is netshim's Docker-like command line.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/netshim/netshim/cluster"
	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/engine"
	"github.com/netshim/netshim/ocihook"
	"github.com/netshim/netshim/resolver"
	"github.com/netshim/netshim/state"
)

// Env variables for the global flags.
const (
	EnvConfig   = engine.EnvConfig
	EnvStateDir = "NETSHIM_STATE_DIR"
)

type globals struct {
	configPath string
	stateDir   string
	stdin      io.Reader
	stdout     io.Writer
	stderr     io.Writer
}

// configFile returns the config path and whether the user named it.
func (g *globals) configFile() (string, bool) {
	if g.configPath != "" {
		return g.configPath, true
	}
	if v := os.Getenv(EnvConfig); v != "" {
		return v, true
	}
	return config.DefaultPath, false
}

func (g *globals) engine() (*engine.Engine, error) {
	path, explicit := g.configFile()
	cfg, err := config.Load(path, explicit)
	if err != nil {
		return nil, err
	}
	store, err := state.New(g.stateDirOf(cfg))
	if err != nil {
		return nil, err
	}
	return &engine.Engine{Config: cfg, Store: store, Defs: state.NewDefs(cfg.DataDir), Reread: ocihook.Reread}, nil
}

// stateDirOf is the state dir: the flag, the environment, the config's.
func (g *globals) stateDirOf(cfg *config.Config) string {
	if g.stateDir != "" {
		return g.stateDir
	}
	if dir := os.Getenv(EnvStateDir); dir != "" {
		return dir
	}
	return cfg.StateDir
}

// Main runs the command line and returns the exit code. Errors are printed
// as one line `netshim: ...` on stderr.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "netshim",
		Short: "Docker-style networking for OCI containers, as a runtime hook",
		Long: `netshim gives runc, crun and Podman containers the network a Docker user knows
(a bridge with NAT, published ports, links, user networks) without a daemon:
it runs as a createRuntime and poststop hook.`,
		Example: `  netshim bundle ./mybundle --name web
  runc run -d --bundle ./mybundle web
  netshim ps`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetContext(ctx)
	pf := root.PersistentFlags()
	pf.StringVar(&g.configPath, "config", "", "config file (env "+EnvConfig+", default "+config.DefaultPath+")")
	pf.StringVar(&g.stateDir, "state-dir", "", "state directory (env "+EnvStateDir+", default: the config's state_dir, else "+config.DefaultStateDir+")")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%s: %w (see '%s --help')", c.CommandPath(), err, c.CommandPath())
	})
	root.AddCommand(hookCmd(g), bundleCmd(g), psCmd(g), inspectCmd(g), portCmd(g), networkCmd(g), overlayCmd(g), gcCmd(g), reloadCmd(g), doctorCmd(g), dnsServeCmd(g), reclaimCmd(g))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(stderr, "netshim: "+oneLine(err))
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

func hookCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "hook [createRuntime|prestart|poststop]",
		Short: "Run as an OCI hook: read the container state on stdin, set up or tear down",
		Long: `Run as an OCI runtime hook. The state JSON comes on stdin. Without a stage, it is
taken from the state's status: creating/created → setup, stopped → teardown.
Success prints nothing; failure prints one line and exits non-zero.`,
		Example: `  # in config.json "hooks":
  "createRuntime": [{"path": "/usr/local/bin/netshim", "args": ["netshim", "hook", "createRuntime"]}],
  "poststop":      [{"path": "/usr/local/bin/netshim", "args": ["netshim", "hook", "poststop"]}]`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// A hook's work is one sequence. With a second P, every
			// goroutine the runtime readies (a netns visit, a lock wait)
			// wakes another thread, which the kernel puts on the hook's
			// own CPU, preempting it; one P runs them in the hook's gaps
			// (bench/HISTORY.md).
			runtime.GOMAXPROCS(1)
			stage := ""
			if len(args) == 1 {
				stage = args[0]
			}
			eng, err := g.engine()
			if err != nil {
				return err
			}
			return ocihook.Run(eng, g.stdin, stage)
		},
	}
}

// dnsServeCmd is the DNS responder a hook starts for a user network; it is
// not for people to run.
func dnsServeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "dns-serve NETWORK",
		Short:  "Serve DNS for a user network (started by the hook)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.stateDir == "" {
				return fmt.Errorf("dns-serve needs --state-dir")
			}
			udps, tcps, err := engine.ResponderSockets()
			if err != nil {
				return err
			}
			engine.LeaveCgroup("netshim-dns")
			var remote func(string) map[string][]netip.Addr
			if path, explicit := g.configFile(); explicit {
				// An overlay network's responder: the other hosts' names
				// come from etcd.
				if cfg, err := config.Load(path, true); err == nil && cfg.Cluster.Enabled() {
					if cl, err := cluster.New(cfg.Cluster); err == nil {
						remote = cl.NameCache(time.Second)
					}
				}
			}
			return resolver.Serve(cmd.Context(), g.stateDir, args[0], udps, tcps, remote)
		},
	}
}

// reclaimCmd is the host's reclaimer (see engine.Reclaim), started by a
// teardown hook with its listener on fd 3; it is not for people to run.
func reclaimCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "reclaim",
		Short:  "Finish what teardowns left (started by the hook)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.stateDir == "" {
				return fmt.Errorf("reclaim needs --state-dir")
			}
			l, err := engine.ReclaimerListener()
			if err != nil {
				return err
			}
			store, err := state.New(g.stateDir)
			if err != nil {
				return err
			}
			engine.LeaveCgroup("netshim-reclaim")
			return (&engine.Engine{Store: store}).RunReclaimer(l)
		},
	}
}

func gcCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Remove what belongs to containers that no longer exist",
		Long: `Remove the records, veths, addresses, published ports, firewall rules and DNS
responders of containers whose process is gone (or whose setup was killed), and
anything of ours that no record accounts for. Prints one line per thing removed.
Safe to run at any time, and after a crash or reboot.`,
		Example: "  netshim gc",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			lines, err := eng.GC()
			for _, l := range lines {
				fmt.Fprintln(g.stdout, l)
			}
			return err
		},
	}
}

func reloadCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "reload",
		Short: "Re-create every firewall rule of netshim from its state",
		Long: `Re-create the firewall rules of every network in use and every published port,
exactly as the state records them, in one batch per backend: after a firewall
reload (nft flush ruleset, iptables -F, a firewalld reload) wiped them. Running
it again changes nothing. Hooks also re-create them when they find them gone;
examples/netshim-reload.service runs it after nftables.service or firewalld
reloads.`,
		Example: "  nft flush ruleset; netshim reload",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			line, err := eng.Reload()
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, line)
			return nil
		},
	}
}

func doctorCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check the host: forwarding, bridge netfilter, firewall backends, subnet collisions",
		Example: `  netshim doctor
  netshim --config /etc/netshim/netshim.toml doctor`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := g.engine()
			if err != nil {
				return err
			}
			failed := 0
			for _, c := range eng.Doctor() {
				mark := "ok  "
				if !c.OK {
					mark = "FAIL"
					failed++
				}
				fmt.Fprintf(g.stdout, "%s %-18s %s\n", mark, c.Name, c.Detail)
			}
			if failed > 0 {
				return &exitError{code: 1, err: fmt.Errorf("doctor: %d checks failed", failed)}
			}
			return nil
		},
	}
}
