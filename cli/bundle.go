package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/netshim/netshim/ocihook"
)

type bundleFlags struct {
	name, ip, ip6, mac           string
	networks                     []string
	links, aliases, dns, addHost []string
	dnsSearch, dnsOption, capAdd []string
	publish, expose              []string
	publishAll                   bool
}

func bundleCmd(g *globals) *cobra.Command {
	var f bundleFlags
	cmd := &cobra.Command{
		Use:   "bundle DIR",
		Short: "Set up an OCI bundle's config.json for netshim (annotations, hooks, network namespace)",
		Long: `Edit DIR/config.json: set the netshim annotations from the flags (like docker run's),
add the createRuntime and poststop hooks (this binary's absolute path, with --config and
--state-dir when given), and add a fresh network namespace (or remove it for --network host).
Other fields are kept as they are.`,
		Example: `  runc spec --bundle ./b && netshim bundle ./b --name db
  netshim bundle ./b --name web --link db:database --dns 203.0.113.53
  netshim bundle ./b --name web -p 8080:80 -p 127.0.0.1::443
  netshim bundle ./b --expose 80 -P
  netshim bundle ./b --network host
  netshim bundle ./b --cap-add NET_RAW   # let ping work, as in Docker's defaults`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.editBundle(args[0], &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "", "container name for links and DNS (default: the container id)")
	fl.StringArrayVar(&f.networks, "network", nil, "bridge (default), none, host, or a user-defined network; repeatable, in the order of eth0, eth1, …, "+
		"each NAME or name=NAME[,alias=A][,ip=IP][,ip6=IP6][,mac-address=MAC][,gw-priority=N]")
	fl.StringVar(&f.mac, "mac-address", "", "MAC address of the container's interface on its first network")
	fl.StringVar(&f.ip, "ip", "", "static IPv4 address in the network's subnet")
	fl.StringVar(&f.ip6, "ip6", "", "static IPv6 address in the network's IPv6 subnet")
	fl.StringArrayVar(&f.links, "link", nil, "link to a container: NAME[:ALIAS] (repeatable)")
	fl.StringArrayVar(&f.aliases, "alias", nil, "extra name on a user-defined network (repeatable)")
	fl.StringArrayVar(&f.dns, "dns", nil, "nameserver for resolv.conf (repeatable)")
	fl.StringArrayVar(&f.dnsSearch, "dns-search", nil, "search domain for resolv.conf (repeatable)")
	fl.StringArrayVar(&f.dnsOption, "dns-option", nil, "resolver option for resolv.conf (repeatable)")
	fl.StringArrayVar(&f.addHost, "add-host", nil, "extra /etc/hosts entry HOST:IP; IP may be host-gateway (repeatable)")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a port: [HOSTIP:][HOSTPORT[-END]:]PORT[-END][/tcp|udp] (repeatable)")
	fl.BoolVarP(&f.publishAll, "publish-all", "P", false, "publish every exposed port on a random host port")
	fl.StringArrayVar(&f.expose, "expose", nil, "expose a port: PORT[-END][/tcp|udp] (repeatable)")
	fl.StringArrayVar(&f.capAdd, "cap-add", nil, "add a capability to the process, such as NET_RAW (repeatable)")
	return cmd
}

// annotations validates the flags with the hook's own parsers and returns
// the annotations they stand for.
func (f *bundleFlags) annotations() (map[string]string, error) {
	ann := map[string]string{}
	set := func(key string, vals []string) {
		if len(vals) > 0 {
			ann[key] = strings.Join(vals, ",")
		}
	}
	networks, err := networkAnnotations(f.networks, ann)
	if err != nil {
		return nil, err
	}
	if f.mac != "" {
		ann[ocihook.PerNetworkKey(networks[0], ocihook.FieldMAC)] = f.mac
	}
	if f.name != "" {
		ann[ocihook.AnnName] = f.name
	}
	if f.ip != "" {
		ann[ocihook.AnnIP] = f.ip
	}
	if f.ip6 != "" {
		ann[ocihook.AnnIP6] = f.ip6
	}
	set(ocihook.AnnLinks, f.links)
	set(ocihook.AnnAliases, f.aliases)
	set(ocihook.AnnDNS, f.dns)
	set(ocihook.AnnDNSSearch, f.dnsSearch)
	set(ocihook.AnnDNSOption, f.dnsOption)
	set(ocihook.AnnAddHost, f.addHost)
	set(ocihook.AnnPublish, f.publish)
	set(ocihook.AnnExpose, f.expose)
	if f.publishAll {
		ann[ocihook.AnnPublishAll] = "true"
	}
	if _, err := ocihook.ParseAnnotations(ann); err != nil {
		return nil, flagError(err)
	}
	return ann, nil
}

// flagError words an annotation error in terms of the flag that set it.
func flagError(err error) error {
	flags := map[string]string{
		ocihook.AnnName: "--name", ocihook.AnnIP: "--ip", ocihook.AnnIP6: "--ip6", ocihook.AnnLinks: "--link", ocihook.AnnAliases: "--alias",
		ocihook.AnnDNS: "--dns", ocihook.AnnDNSSearch: "--dns-search", ocihook.AnnDNSOption: "--dns-option",
		ocihook.AnnAddHost: "--add-host", ocihook.AnnNetwork: "--network", ocihook.AnnPublish: "--publish",
		ocihook.AnnExpose: "--expose", ocihook.AnnPublishAll: "--publish-all",
	}
	if ae, ok := err.(*ocihook.AnnotationError); ok {
		if fl, ok := flags[ae.Key]; ok {
			return fmt.Errorf("%s %q: %s", fl, ae.Value, ae.Reason)
		}
		if rest, ok := strings.CutPrefix(ae.Key, ocihook.AnnNetwork+"."); ok {
			// A per-network option, from --network's name=NET,… or
			// --mac-address.
			i := strings.LastIndexByte(rest, '.')
			network, field := rest[:i], rest[i+1:]
			option := map[string]string{ocihook.FieldAliases: "alias", ocihook.FieldMAC: "mac-address"}[field]
			if option == "" {
				option = field
			}
			return fmt.Errorf("--network name=%s,%s=%s: %s", network, option, ae.Value, ae.Reason)
		}
	}
	return err
}

func (g *globals) editBundle(dir string, f *bundleFlags) error {
	ann, err := f.annotations()
	if err != nil {
		return err
	}
	caps := make([]string, 0, len(f.capAdd))
	for _, c := range f.capAdd {
		c = strings.ToUpper(c)
		if !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		if strings.ContainsAny(c, " ,") || len(c) < 5 {
			return fmt.Errorf("--cap-add %q: not a capability name", c)
		}
		caps = append(caps, c)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary's path: %w", err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return fmt.Errorf("find this binary's path: %w", err)
	}
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read bundle config: %w", err)
	}
	// Edit as generic JSON so fields this binary does not know survive.
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("bundle config %s: %w", path, err)
	}
	hookArgs := []string{"netshim"}
	if g.configPath != "" {
		abs, err := filepath.Abs(g.configPath)
		if err != nil {
			return err
		}
		hookArgs = append(hookArgs, "--config", abs)
	}
	if g.stateDir != "" {
		abs, err := filepath.Abs(g.stateDir)
		if err != nil {
			return err
		}
		hookArgs = append(hookArgs, "--state-dir", abs)
	}
	if err := editSpec(spec, self, hookArgs, ann, caps); err != nil {
		return fmt.Errorf("bundle config %s: %w", path, err)
	}
	out, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".netshim-tmp"
	if err := os.WriteFile(tmp, append(out, '\n'), st.Mode().Perm()); err != nil {
		return fmt.Errorf("write bundle config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write bundle config: %w", err)
	}
	return nil
}

func obj(m map[string]any, key string) (map[string]any, error) {
	switch v := m[key].(type) {
	case nil:
		o := map[string]any{}
		m[key] = o
		return o, nil
	case map[string]any:
		return v, nil
	default:
		return nil, fmt.Errorf("field %s is not an object", key)
	}
}

func list(m map[string]any, key string) ([]any, error) {
	switch v := m[key].(type) {
	case nil:
		return nil, nil
	case []any:
		return v, nil
	default:
		return nil, fmt.Errorf("field %s is not a list", key)
	}
}

// editSpec applies netshim's changes to a decoded config.json.
func editSpec(spec map[string]any, self string, hookArgs []string, ann map[string]string, caps []string) error {
	annotations, err := obj(spec, "annotations")
	if err != nil {
		return err
	}
	for k := range annotations {
		if strings.HasPrefix(k, "netshim/") {
			delete(annotations, k)
		}
	}
	for k, v := range ann {
		annotations[k] = v
	}
	hooks, err := obj(spec, "hooks")
	if err != nil {
		return err
	}
	for _, stage := range []string{"createRuntime", "poststop"} {
		cur, err := list(hooks, stage)
		if err != nil {
			return fmt.Errorf("hooks: %w", err)
		}
		kept := []any{}
		for _, h := range cur {
			if hm, ok := h.(map[string]any); ok && isOurHook(hm) {
				continue
			}
			kept = append(kept, h)
		}
		args := make([]any, 0, len(hookArgs)+2)
		for _, a := range hookArgs {
			args = append(args, a)
		}
		args = append(args, "hook", stage)
		hooks[stage] = append(kept, map[string]any{"path": self, "args": args})
	}
	linux, err := obj(spec, "linux")
	if err != nil {
		return err
	}
	nss, err := list(linux, "namespaces")
	if err != nil {
		return fmt.Errorf("linux: %w", err)
	}
	kept := []any{}
	for _, n := range nss {
		if nm, ok := n.(map[string]any); ok && nm["type"] == "network" {
			continue
		}
		kept = append(kept, n)
	}
	if ann[ocihook.AnnNetwork] != ocihook.ModeHost {
		kept = append(kept, map[string]any{"type": "network"})
	}
	linux["namespaces"] = kept
	if len(caps) > 0 {
		proc, err := obj(spec, "process")
		if err != nil {
			return err
		}
		pc, err := obj(proc, "capabilities")
		if err != nil {
			return fmt.Errorf("process: %w", err)
		}
		for _, set := range []string{"bounding", "effective", "permitted"} {
			cur, err := list(pc, set)
			if err != nil {
				return fmt.Errorf("process.capabilities: %w", err)
			}
			for _, c := range caps {
				found := false
				for _, x := range cur {
					found = found || x == c
				}
				if !found {
					cur = append(cur, c)
				}
			}
			pc[set] = cur
		}
	}
	return nil
}

// isOurHook recognises a netshim hook entry: its args run `netshim ... hook`.
func isOurHook(h map[string]any) bool {
	path, _ := h["path"].(string)
	if filepath.Base(path) == "netshim" {
		return true
	}
	args, _ := h["args"].([]any)
	return len(args) > 0 && args[0] == "netshim"
}

// networkAnnotations turns the --network flags into netshim/network and the
// per-network annotations, as Docker's `--network name=NET,alias=A,ip=…`
// advanced syntax. It returns the networks in order.
func networkAnnotations(flags []string, ann map[string]string) ([]string, error) {
	if len(flags) == 0 {
		flags = []string{ocihook.ModeBridge}
	}
	fields := map[string]string{"alias": ocihook.FieldAliases, "ip": ocihook.FieldIP, "ip6": ocihook.FieldIP6,
		"mac-address": ocihook.FieldMAC, "gw-priority": ocihook.FieldGwPriority}
	var names []string
	for _, flag := range flags {
		if !strings.Contains(flag, "=") {
			n, err := ocihook.ParseNetwork(flag)
			if err != nil {
				return nil, fmt.Errorf("--network %q: %w", flag, err)
			}
			names = append(names, n)
			continue
		}
		opts := map[string][]string{}
		name := ""
		for _, kv := range strings.Split(flag, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch {
			case k == "name":
				name = v
			case fields[k] != "":
				opts[fields[k]] = append(opts[fields[k]], v)
			default:
				return nil, fmt.Errorf("--network %q: unknown option %q (name, alias, ip, ip6, mac-address, gw-priority)", flag, k)
			}
		}
		if name == "" {
			return nil, fmt.Errorf("--network %q: no name=NETWORK", flag)
		}
		n, err := ocihook.ParseNetwork(name)
		if err != nil {
			return nil, fmt.Errorf("--network %q: %w", flag, err)
		}
		names = append(names, n)
		for field, vals := range opts {
			if len(vals) > 1 && field != ocihook.FieldAliases {
				return nil, fmt.Errorf("--network %q: %s given twice", flag, field)
			}
			ann[ocihook.PerNetworkKey(n, field)] = strings.Join(vals, ",")
		}
	}
	networks, err := ocihook.ParseNetworks(strings.Join(names, ","))
	if err != nil {
		return nil, fmt.Errorf("--network %q: %w", strings.Join(flags, " --network "), err)
	}
	ann[ocihook.AnnNetwork] = strings.Join(networks, ",")
	return networks, nil
}
