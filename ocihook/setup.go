package ocihook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/internal/fastio"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// HostResolvConf is the host's resolver configuration.
var HostResolvConf = "/etc/resolv.conf"

// resolvedResolvConf is systemd-resolved's list of real upstreams, used when
// the host's resolv.conf names only its loopback stub (as Docker does).
const resolvedResolvConf = "/run/systemd/resolve/resolv.conf"

// vethAlias marks a host veth as ours: teardown and gc delete a link only
// when it carries the alias of the container they work for.
func vethAlias(id string) string { return "netshim:" + id }

// Setup wires the container's network. Anything it created is undone
// before it returns an error.
func (env *Env) Setup(ctx context.Context, st *specs.State) (string, error) {
	spec, err := readSpec(st.Bundle)
	if err != nil {
		return "", err
	}
	opts, err := ParseAnnotations(spec.Annotations)
	if err != nil {
		return "", err
	}
	name := opts.Name
	if name == "" {
		name = st.ID
	}
	if st.Pid <= 0 {
		return name, &InputError{What: "state field pid", Value: fmt.Sprint(st.Pid), Reason: "setup needs the container's pid"}
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return name, &InputError{What: "bundle config root.path", Reason: "missing"}
	}
	rootfs := spec.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(st.Bundle, rootfs)
	}
	env.mark("spec")
	nsh, nsID, err := netsetup.NetnsOf(st.Pid)
	if err != nil {
		return name, err
	}
	defer nsh.Close()
	self, err := netsetup.SelfNetns()
	if err != nil {
		return name, err
	}
	shared := nsID == self
	switch {
	case opts.Network == ModeHost && !shared:
		return name, fmt.Errorf("network host: container %s has its own network namespace; remove the network namespace from config.json (netshim bundle --network host does)", st.ID)
	case opts.Network != ModeHost && shared:
		return name, fmt.Errorf("network %s: container %s shares the host's network namespace; add a network namespace to config.json (netshim bundle does)", opts.Network, st.ID)
	}
	var early *earlyVeth
	if opts.Network != ModeHost && opts.Network != ModeNone {
		early = env.planVeth(st.ID, nsh)
	}
	if early == nil {
		return env.setupLocked(st, spec, opts, name, rootfs, nsh, nsID, nil)
	}
	// The container's netns first, on this thread (switched in and back):
	// turning IPv6 off there needs RTNL, which making the pair holds. A
	// failure here is before anything is done; should the thread not come
	// back, this hook goes no further.
	socks, err := netsetup.PrepareContainer(nsh, 2)
	if err != nil {
		return name, err
	}
	early.ctr, early.lo = socks[0], socks[1]
	env.mark("prepared")
	// The pair is the longest kernel work of a setup: it is made on this
	// goroutine, already running, while the hook's worker, running too
	// (see Worker), settles the shared state under the lock. Neither waits
	// for a thread to be woken.
	res := make(chan setupOutcome, 1)
	env.Worker.Go(func() {
		n, err := env.setupLocked(st, spec, opts, name, rootfs, nsh, nsID, early)
		res <- setupOutcome{n, err}
	})
	early.make(env, opts.Network)
	out := early.serve(res)
	if out.err != nil {
		early.discard()
	}
	early.close()
	return out.name, out.err
}

// setupOutcome is what setup's state path returns: the container's name,
// and its error.
type setupOutcome struct {
	name string
	err  error
}

// setupLocked is Setup from the host lock on.
func (env *Env) setupLocked(st *specs.State, spec *bundleConfig, opts *Options, name, rootfs string,
	nsh netns.NsHandle, nsID netsetup.NSIdentity, early *earlyVeth) (string, error) {
	startTime, err := netsetup.ProcStartTime(st.Pid)
	if err != nil {
		return name, err
	}
	env.mark("netns")
	// The lock covers what other hooks read: records, indexes, address
	// and port reservations, a network's bridge and rules. The
	// container's own links and files are made after it is released.
	lock, err := env.Store.Lock(env.lockTimeout())
	if err != nil {
		return name, err
	}
	held := true
	unlock := func() {
		if held {
			lock.Unlock()
			held = false
		}
	}
	defer func() { unlock() }()
	env.mark("lock")

	if old, ok, err := env.Store.Get(st.ID); err != nil {
		return name, err
	} else if ok {
		if old.Phase == state.PhaseReady && old.NetnsDev == nsID.Dev && old.NetnsIno == nsID.Ino {
			return name, nil // createRuntime run twice: already done
		}
		// A record of an earlier, dead or half-done incarnation of this id.
		if err := env.teardownLocked(old); err != nil {
			return name, fmt.Errorf("clean up earlier setup of %s: %w", st.ID, err)
		}
	}
	// A setup still marked as creating whose hook is gone was killed:
	// undo it now (the directory normally holds only setups in flight).
	crashed, err := env.Store.Creating()
	if err != nil {
		return name, err
	}
	undone := map[string]bool{}
	for _, id := range crashed {
		if id == st.ID || env.inFlight(id) {
			continue
		}
		undone[id] = true
		o, ok, err := env.Store.Get(id)
		switch {
		case err != nil:
			return name, err
		case ok && o.Phase != state.PhaseReady:
			if err := env.teardownLocked(o); err != nil {
				return name, fmt.Errorf("clean up crashed setup of %s: %w", o.ID, err)
			}
		default: // killed after the record was ready, or before it existed
			if err := env.Store.UnmarkCreating(id); err != nil {
				return name, err
			}
		}
	}
	// A hook killed in the middle of a state write leaves its temporary
	// file.
	if len(undone) > 0 {
		if err := env.Store.RemoveTemps(func(id string) bool { return undone[id] }); err != nil {
			return name, err
		}
	}
	if o, taken, err := env.Store.NameOwner(name); err != nil {
		return name, err
	} else if taken && o.ID != st.ID {
		return name, fmt.Errorf("container name %q is already in use by container %s", name, o.ID)
	}

	rec := &state.Record{
		ID: st.ID, Name: name, Mode: opts.Network, Phase: state.PhaseCreating, Created: time.Now().UTC(),
		Bundle: st.Bundle, PID: st.Pid, NetnsDev: nsID.Dev, NetnsIno: nsID.Ino, StartTime: startTime,
	}
	if opts.Network != ModeHost && opts.Network != ModeNone {
		rec.Mode, rec.Network = ModeBridge, opts.Network
	}
	env.mark("records")
	me, meStart, err := selfProcess()
	if err != nil {
		return name, err
	}
	if err := env.Store.MarkCreating(rec.ID, me, meStart); err != nil {
		return name, err
	}
	c := &setupCtx{env: env, st: st, spec: spec, opts: opts, rec: rec, rootfs: rootfs, ns: nsh, unlock: unlock, early: early}
	if runErr := c.run(); runErr != nil {
		// The pair made meanwhile must exist, or not, before the undo.
		// Its configuration may be waiting for the lock (to ensure the
		// bridge again): wait for it without holding the lock. The files
		// are let finish too.
		if early != nil {
			unlock()
			early.settle()
		}
		c.waitFiles()
		if !held { // failed after the lock was released: undo under it
			l, lerr := env.Store.Lock(env.lockTimeout())
			if lerr != nil {
				return name, fmt.Errorf("%w (and undoing it: %v)", runErr, lerr)
			}
			lock, held = l, true
		}
		// A failed setup leaves nothing behind when it returns: undo it
		// without leaving anything to a reclaimer.
		deferred := env.reclaim
		env.reclaim = nil
		rerr := env.teardownLocked(rec)
		env.reclaim = deferred
		if rerr != nil {
			return name, fmt.Errorf("%w (and undoing it: %v)", runErr, rerr)
		}
		return name, runErr
	}
	return name, nil
}

// selfProcess identifies this hook process, for its creating marker.
func selfProcess() (int, uint64, error) {
	pid := os.Getpid()
	start, err := netsetup.ProcStartTime(pid)
	return pid, start, err
}

// inFlight reports whether the setup of id marked as creating is still
// running in another hook.
func (env *Env) inFlight(id string) bool {
	pid, start, ok := env.Store.CreatingOwner(id)
	return ok && pid != os.Getpid() && alive(pid, start)
}

func (env *Env) lockTimeout() time.Duration {
	if env.LockTimeout > 0 {
		return env.LockTimeout
	}
	return DefaultLockTimeout
}

type setupCtx struct {
	env    *Env
	st     *specs.State
	spec   *bundleConfig
	opts   *Options
	rec    *state.Record
	rootfs string
	ns     netns.NsHandle
	// def is the bridge network's definition, looked up once.
	def *config.Network
	// hostResolv caches the host's resolv.conf.
	hostResolv []byte
	// unlock releases the host lock once the shared state is settled.
	unlock func()
	// early is the veth pair being made while the lock is held, if any.
	early *earlyVeth
	// filesDone is closed once the files goroutine, if started, is done.
	filesDone chan struct{}
	filePaths []string
	filesErr  error
	// resolvOnce guards hostResolv, read by the files goroutine and by
	// the main one.
	resolvOnce sync.Once
}

// hostHandle opens the host's route netlink handle on first use: a setup
// on a network whose bridge is known needs none.
type hostHandle struct {
	once sync.Once
	h    *netlink.Handle
	err  error
}

func (l *hostHandle) get() (*netlink.Handle, error) {
	l.once.Do(func() {
		if l.h, l.err = netlink.NewHandle(unix.NETLINK_ROUTE); l.err != nil {
			l.err = fmt.Errorf("netlink: %w", l.err)
		}
	})
	return l.h, l.err
}

func (l *hostHandle) close() {
	if l.h != nil {
		l.h.Close()
	}
}

// earlyVeth is a container's veth pair made while setup reserves the
// address and settles the network: making it needs neither, and it is the
// longest piece of kernel work of a setup.
type earlyVeth struct {
	id   string            // the container's
	spec netsetup.VethSpec // host name, MTU, netns, alias
	done chan struct{}
	host *netsetup.Conn
	veth *netsetup.Veth
	err  error
	// ctr and lo are sockets in the container's netns, prepared (see
	// netsetup.PrepareContainer) before the pair is made: one for eth0's
	// configuration, one for lo, brought up by setup's state path
	// meanwhile.
	ctr, lo *netsetup.Conn
	// recorded is set once a record names the pair: undoing the setup
	// then removes it like any other.
	recorded bool
	// work carries the pair's configuration (see finish) to the goroutine
	// that made it.
	work chan func(*netsetup.Veth) error
	// wired, when set, is closed once the pair is configured (see
	// finish): wireErr is the outcome, unless unmade says the pair could
	// not be made early (wire then makes one).
	wired   chan struct{}
	wireErr error
	unmade  bool
}

// planVeth returns the container's pair to make early, or nil if a record
// of this id exists: a repeated or earlier setup, handled under the lock.
// It checks before setup's state path starts, which writes this setup's
// record.
func (env *Env) planVeth(id string, ns netns.NsHandle) *earlyVeth {
	if _, ok, err := env.Store.Get(id); ok || err != nil {
		return nil
	}
	return &earlyVeth{id: id, done: make(chan struct{}), work: make(chan func(*netsetup.Veth) error, 1), spec: netsetup.VethSpec{
		HostName: netsetup.RandomVethName(), Netns: ns, Alias: vethAlias(id),
	}}
}

// make makes the pair, unless the network is unknown (reported under the
// lock) or its bridge does not exist yet. Without a pair, wire makes one,
// under the name chosen in planVeth.
//
// The last case is not only about order. The bridge enables a port when
// the kernel's link watcher reports its carrier, at once for a veth whose
// ifindex differs from its peer's, but up to a second later otherwise. A
// pair made before the bridge, on a host or sandbox with few links, would
// often get the same ifindex on both ends (2, next to lo): the first
// container would then wait for its network.
func (e *earlyVeth) make(env *Env, network string) {
	defer close(e.done)
	def, err := env.network(network)
	if err != nil {
		return
	}
	if e.host, e.err = netsetup.NewConn(netns.None()); e.err != nil {
		return
	}
	// The bridge as it is now, asked of the kernel (the network's state
	// would have to be decoded): the state path ensures it under the
	// lock, and wire attaches the pair again if that one differs.
	idx, mac, err := e.host.BridgeIndex(def.Bridge)
	if err != nil || idx == 0 {
		return
	}
	e.spec = pairSpec(e.spec.HostName, e.id, e.spec.Netns, def, idx, mac)
	e.veth, e.err = netsetup.CreateVeth(e.host, e.spec)
	env.mark("pair")
}

// serve runs the pair's configuration, if setup's state path hands it
// over, and returns the state path's outcome.
func (e *earlyVeth) serve(res <-chan setupOutcome) setupOutcome {
	select {
	case configure := <-e.work:
		if e.veth == nil || e.err != nil {
			e.unmade = true
		} else {
			e.wireErr = configure(e.veth)
		}
		close(e.wired)
		return <-res
	case out := <-res:
		return out
	}
}

// wait returns the pair once made.
func (e *earlyVeth) wait() (*netsetup.Veth, error) {
	<-e.done
	return e.veth, e.err
}

// finish has the pair configured with configure once it is made, by the
// goroutine that makes it: setup asks as soon as the container's address
// is recorded, while it finishes its shared state under the lock. The
// caller waits for wired before it returns.
func (e *earlyVeth) finish(configure func(v *netsetup.Veth) error) {
	e.wired = make(chan struct{})
	e.work <- configure
}

// settle waits for whatever the pair's goroutines are doing.
func (e *earlyVeth) settle() {
	e.wait()
	if e.wired != nil {
		<-e.wired
	}
}

// discard removes the pair of a failed setup if no record names it (the
// undo of the record removed it otherwise).
func (e *earlyVeth) discard() {
	e.settle()
	if e.host == nil {
		return
	}
	if e.veth != nil && !e.recorded {
		netsetup.DeleteLinkIndex(e.host, e.veth.Host.Attrs().Index, e.spec.HostName)
	}
}

// close releases the sockets.
func (e *earlyVeth) close() {
	if e.settle(); e.host != nil {
		e.host.Close()
	}
	for _, c := range []*netsetup.Conn{e.ctr, e.lo} {
		if c != nil {
			c.Close()
		}
	}
}

func (c *setupCtx) run() error {
	switch c.rec.Mode {
	case ModeHost:
		if err := c.env.Store.SetName(c.rec.Name, c.rec.ID); err != nil {
			return err
		}
	case ModeNone:
		if err := c.env.Store.Put(c.rec); err != nil {
			return err
		}
		if err := c.env.Store.SetName(c.rec.Name, c.rec.ID); err != nil {
			return err
		}
		if err := netsetup.SetUpContainer(c.ns, nil, 0); err != nil {
			return err
		}
	default:
		return c.bridge() // writes the files meanwhile, and marks ready
	}
	paths, err := c.files()
	if err != nil {
		return err
	}
	c.rec.Files = paths
	return c.ready()
}

// ready marks the record complete.
func (c *setupCtx) ready() error {
	c.rec.Phase = state.PhaseReady
	if err := c.env.Store.Put(c.rec); err != nil {
		return err
	}
	err := c.env.Store.UnmarkCreating(c.rec.ID)
	c.env.mark("ready")
	return err
}

// files writes the container's /etc/hosts and /etc/resolv.conf and
// returns the host paths written. It reads the record, never writes it:
// in bridge mode it runs while the links are made.
func (c *setupCtx) files() ([]string, error) {
	var hosts netsetup.HostsSpec
	var resolv netsetup.ResolvSpec
	switch c.rec.Mode {
	case ModeHost:
		base, err := fastio.ReadFile("/etc/hosts")
		if err != nil {
			return nil, fmt.Errorf("read host /etc/hosts: %w", err)
		}
		hosts = netsetup.HostsSpec{Base: base}
		resolv = netsetup.ResolvSpec{KeepLoopback: true}
	case ModeBridge:
		hosts = netsetup.HostsSpec{IP: c.rec.IP, Links: c.rec.Links}
	}
	hosts.Hostname, hosts.Name = c.spec.Hostname, c.rec.Name
	for _, h := range c.opts.AddHosts {
		ip := h.IP
		if h.HostGateway {
			if !c.rec.Gateway.IsValid() {
				return nil, &AnnotationError{Key: AnnAddHost, Value: h.Name + ":host-gateway", Reason: "host-gateway needs a bridge network"}
			}
			ip = c.rec.Gateway
		}
		hosts.Extra = append(hosts.Extra, netsetup.HostEntry{Name: h.Name, IP: ip})
	}
	resolv.Host = containerResolvBase(c.hostResolvConf(), resolv.KeepLoopback)
	resolv.Nameservers, resolv.Search, resolv.Options = c.opts.DNS, c.opts.DNSSearch, c.opts.DNSOptions
	if n := c.def; n != nil {
		if !n.Default {
			// The network's responder answers (and forwards --dns).
			resolv.Nameservers = []netip.Addr{c.rec.Gateway}
		}
		if len(resolv.Nameservers) == 0 {
			resolv.Nameservers = n.DNS
		}
		if len(resolv.Search) == 0 {
			resolv.Search = n.DNSSearch
		}
		if len(resolv.Options) == 0 {
			resolv.Options = n.DNSOptions
		}
	}
	var paths []string
	for _, f := range []struct {
		dest    string
		content []byte
	}{{"/etc/hosts", netsetup.BuildHosts(hosts)}, {"/etc/resolv.conf", netsetup.BuildResolv(resolv)}} {
		p, err := netsetup.WriteContainerFile(c.st.Bundle, c.rootfs, c.spec.Mounts, f.dest, f.content)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	fault("setup:files")
	c.env.mark("files")
	return paths, nil
}

// hostResolvConf is the host's resolv.conf, read once per setup.
func (c *setupCtx) hostResolvConf() []byte {
	c.resolvOnce.Do(func() {
		data, err := fastio.ReadFile(HostResolvConf)
		if err != nil {
			data = []byte{}
		}
		c.hostResolv = data
	})
	return c.hostResolv
}

// containerResolvBase is what a container's resolv.conf is built from: the
// host's, or systemd-resolved's upstream list when the host's names only
// loopback servers, which a container cannot reach.
func containerResolvBase(host []byte, keepLoopback bool) []byte {
	if keepLoopback {
		return host
	}
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

// bridge sets up bridge mode: address, record, bridge, rules, veth.
func (c *setupCtx) bridge() error {
	env, rec := c.env, c.rec
	def, err := env.network(rec.Network)
	if err != nil {
		return err
	}
	c.def = def
	host := &hostHandle{}
	defer host.close()

	ns, err := env.Store.GetNet(def.Name)
	if err != nil {
		return err
	}
	if ns == nil {
		ns = env.Store.NewNet(def.Name)
	}
	if err := env.chooseSubnet(host.get, def, ns); err != nil {
		return err
	}
	env.mark("netstate")
	ns.Bridge = def.Bridge
	var reserved []netip.Addr
	if def.DefaultGateway.IsValid() {
		reserved = append(reserved, def.DefaultGateway)
	}
	ip, err := ns.Allocate(rec.ID, c.opts.IP, def.IPRange, reserved...)
	if err != nil {
		return err
	}
	rec.Bridge, rec.Subnet, rec.Gateway, rec.IP = def.Bridge, ns.Subnet, ns.Gateway, ip
	rec.MAC = netsetup.MACFor(ip).String()
	rec.HostVeth, rec.ContainerVeth = netsetup.RandomVethName(), netsetup.ContainerIfName
	if c.early != nil {
		rec.HostVeth = c.early.spec.HostName
	}
	for _, l := range c.opts.Links {
		target, ok, err := env.Store.NameOwner(l.Name)
		if err != nil {
			return err
		}
		if !ok || target.Phase != state.PhaseReady || target.Mode != ModeBridge || target.Network != rec.Network {
			return fmt.Errorf("link %s:%s: no running container named %q on network %s", l.Name, l.Alias, l.Name, rec.Network)
		}
		rec.Links = append(rec.Links, state.Link{Name: target.Name, Alias: l.Alias, IP: target.IP})
	}
	fw, err := netsetup.NewFirewall(env.Config.Firewall)
	if err != nil {
		return err
	}
	rec.Firewall = fw.Name()
	var ports *state.Ports
	if reqs := c.opts.Ports(); len(reqs) > 0 {
		switch {
		case def.Internal:
			kind := "internal"
			if def.GatewayMode == config.GatewayIsolated {
				kind = "isolated"
			}
			return &AnnotationError{Key: AnnPublish, Value: c.spec.Annotations[AnnPublish], Reason: "network " + def.Name + " is " + kind + ": ports cannot be published"}
		case def.GatewayMode == config.GatewayRouted:
			// Opened on the container's own address: no host port.
			rec.Ports = routedPorts(reqs)
		default:
			if ports, err = env.Store.GetPorts(); err != nil {
				return err
			}
			if rec.Ports, err = env.allocatePorts(rec.ID, rec.Name, reqs, ports); err != nil {
				return err
			}
		}
	}
	installRules := !ns.RulesInstalled()
	if installRules {
		// Record the intent first: a crash after the rules are in leaves a
		// state that names them.
		rules := netsetup.RulesFor(def, ns.Subnet, ns.Gateway, env.Config.TrustedHostInterfaces)
		ns.Firewall = fw.Name()
		ns.Installed = fw.NetworkObjects(rules)
		ns.Rules = &rules
	}
	// Record what is about to be created before creating it: the record
	// first, so that a crash after it leaves something that names the
	// address, the ports and the veth.
	if err := env.Store.Put(rec); err != nil {
		return err
	}
	if e := c.early; e != nil {
		e.recorded = true
		// The container's end can be configured from now on, and the
		// host's brought up, while the shared state is finished: the
		// record names the address, and no other setup can take it. The
		// bridge must be known (not the case only if the network's last
		// container went since the pair was started: wire does it then).
		if ns.BridgeIndex != 0 {
			vs, bridgeSpec := c.vethSpec(def, ns, ip)
			e.finish(func(v *netsetup.Veth) error { return c.finishVeth(host, e.host, e.ctr, v, vs, def, bridgeSpec) })
			c.startFiles()
		}
	}
	if err := env.Store.SetName(rec.Name, rec.ID); err != nil {
		return err
	}
	fault("setup:record")
	if err := env.Store.PutNet(ns); err != nil {
		return err
	}
	env.mark("intent")
	if ports != nil {
		if err := env.Store.PutPorts(ports); err != nil {
			return err
		}
	}
	fault("setup:ports-reserved")

	bridgeSpec := netsetup.BridgeSpec{Name: def.Bridge, Subnet: ns.Subnet, Gateway: ns.Gateway, MTU: def.MTU}
	if ns.BridgeIndex == 0 {
		h, err := host.get()
		if err != nil {
			return err
		}
		if err := env.ensureBridge(h, bridgeSpec, ns); err != nil {
			return err
		}
	}
	fault("setup:bridge")
	env.mark("bridge")
	if installRules {
		installed, err := fw.EnsureNetwork(*ns.Rules, ns.Installed)
		if err != nil {
			return err
		}
		fault("setup:rules")
		ns.Installed = installed
		if err := env.Store.PutNet(ns); err != nil {
			return err
		}
	} else if err := env.ensureRules(ns.Rules, ns.Firewall); err != nil {
		return err
	}
	if needsRouteLocalnet(rec.Ports) {
		// DNATed loopback traffic (the host to 127.0.0.1:PORT) must be
		// routable out of the bridge (Docker's userland-proxy=false); only
		// on bridges that publish on loopback, and the firewall's loopback
		// guard keeps what comes in on them from reaching 127.0.0.0/8.
		if err := netsetup.EnsureSysctl("net.ipv4.conf."+def.Bridge+".route_localnet", "1"); err != nil {
			return err
		}
	}
	env.mark("rules")
	if !def.Default {
		// User networks resolve their containers' names: from the moment
		// this write is done, the responder answers for this one.
		if err := env.addName(ns, def, rec, c.opts, c.hostResolvConf()); err != nil {
			return err
		}
		fault("setup:responder")
		if err := env.Store.PutNet(ns); err != nil {
			return err
		}
	}
	// Everything other hooks read is settled: the rest is this
	// container's own (its veth, its netns, its map elements, its files),
	// done without holding up other hooks.
	c.unlock()
	c.startFiles() // if not started with the early pair's configuration
	werr := c.wire(host, def, ns, ip, fw, bridgeSpec)
	paths, ferr := c.waitFiles()
	switch {
	case werr != nil:
		return werr
	case ferr != nil:
		return ferr
	}
	rec.Files = paths
	return c.ready()
}

// startFiles writes the container's files in the background: they need
// nothing from the links or from other hooks, only the record (address,
// links, gateway), so they are written once it is settled.
func (c *setupCtx) startFiles() {
	if c.filesDone != nil {
		return
	}
	c.filesDone = make(chan struct{})
	go func() {
		defer close(c.filesDone)
		c.filePaths, c.filesErr = c.files()
	}()
}

// waitFiles waits for the files, if they were started.
func (c *setupCtx) waitFiles() ([]string, error) {
	if c.filesDone == nil {
		return nil, nil
	}
	<-c.filesDone
	return c.filePaths, c.filesErr
}

// wire makes the container's own links and published ports: its veth
// (host end on the bridge, eth0 in its netns), its netns configuration, and
// its map elements. The lock is not held.
func (c *setupCtx) wire(host *hostHandle, def *config.Network, ns *state.Net, ip netip.Addr, fw netsetup.Firewall, bridgeSpec netsetup.BridgeSpec) (err error) {
	env, rec := c.env, c.rec
	// The map elements need nothing from the links either. Every return
	// waits for them: an undo must not race an element still being added.
	addPorts := func() error {
		err := fw.AddPorts(netsetup.PortRules{Bridge: def.Bridge, IP: ip.As4(), Ports: rec.Ports})
		if err == nil {
			fault("setup:published")
			env.mark("ports")
		}
		return err
	}
	e := c.early
	if e != nil && e.wired != nil {
		// The pair is being configured by the goroutine that made it:
		// this one publishes the ports and brings lo up meanwhile (a
		// goroutine started for them would wait for a CPU).
		perr := addPorts()
		if perr == nil {
			perr = netsetup.UpLoopback(e.lo)
		}
		if <-e.wired; perr != nil || !e.unmade {
			return errors.Join(e.wireErr, perr)
		}
		// The pair could not be made early: it is made here.
	} else {
		portsDone := make(chan error, 1)
		go func() { portsDone <- addPorts() }()
		defer func() {
			if perr := <-portsDone; err == nil {
				err = perr
			}
		}()
		if e != nil {
			if err := netsetup.UpLoopback(e.lo); err != nil {
				return err
			}
		}
	}
	vs, _ := c.vethSpec(def, ns, ip)
	conn, v, err := c.veth(&vs)
	if err != nil {
		return err
	}
	if e == nil {
		defer conn.Close()
	}
	var ctr *netsetup.Conn
	if e != nil {
		ctr = e.ctr
	}
	return c.finishVeth(host, conn, ctr, v, vs, def, bridgeSpec)
}

// vethSpec is the container's veth on network def (state ns) with address
// ip, and the network's bridge.
func (c *setupCtx) vethSpec(def *config.Network, ns *state.Net, ip netip.Addr) (netsetup.VethSpec, netsetup.BridgeSpec) {
	route := ns.Gateway
	if def.DefaultGateway.IsValid() {
		route = def.DefaultGateway
	}
	if def.Internal {
		route = netip.Addr{} // no route out
	}
	vs := pairSpec(c.rec.HostVeth, c.rec.ID, c.ns, def, ns.BridgeIndex, netsetup.BridgeMAC(ns.Gateway))
	vs.MAC, vs.Subnet, vs.IP, vs.Gateway = netsetup.MACFor(ip), ns.Subnet, ip, route
	return vs, netsetup.BridgeSpec{Name: def.Bridge, Subnet: ns.Subnet, Gateway: ns.Gateway, MTU: def.MTU}
}

// pairSpec is what a container's pair needs before its address is known:
// the host end's name, mark and MAC (the bridge's, bridgeMAC: see
// netsetup.VethSpec.HostMAC), the container's netns, and its port on
// network def's bridge.
func pairSpec(hostName, id string, ns netns.NsHandle, def *config.Network, bridgeIndex int, bridgeMAC net.HardwareAddr) netsetup.VethSpec {
	return netsetup.VethSpec{
		HostName: hostName, Alias: vethAlias(id), Netns: ns, MTU: def.MTU, BridgeIndex: bridgeIndex,
		HostMAC: bridgeMAC, Isolated: !def.ICC, Hairpin: true,
	}
}

// finishVeth configures pair v: the host end up on its bridge (on the
// host socket conn), unless made so, and the container's end with its
// MAC, address and route (on ctr, prepared, or a new socket), each from its
// own side at the same time.
func (c *setupCtx) finishVeth(host *hostHandle, conn, ctr *netsetup.Conn, v *netsetup.Veth, vs netsetup.VethSpec,
	def *config.Network, bridgeSpec netsetup.BridgeSpec) error {
	env, rec := c.env, c.rec
	fault("setup:veth")
	env.mark("veth")
	hostSide := func() error {
		err := netsetup.AttachHostVeth(conn, v, vs)
		if err != nil {
			// The remembered bridge may be gone (deleted by hand, a
			// reboot): ensure it again, once, under the lock and on the
			// network's current state.
			h, berr := host.get()
			idx := 0
			if berr == nil {
				idx, berr = env.reensureBridge(h, def.Name, bridgeSpec)
			}
			switch {
			case berr != nil:
				err = berr
			case idx != vs.BridgeIndex:
				vs.BridgeIndex = idx
				err = netsetup.AttachHostVeth(conn, v, vs)
			}
		}
		if v.PeerNSID >= 0 {
			id := v.PeerNSID
			rec.PeerNSID = &id // saved with the ready record
		} else if h, herr := host.get(); err == nil && herr == nil {
			if id, ierr := h.GetNetNsIdByFd(int(c.ns)); ierr == nil && id >= 0 {
				rec.PeerNSID = &id
			}
		}
		return err
	}
	containerSide := func() error {
		if ctr != nil {
			return netsetup.ConfigureContainer(ctr, &vs, v.PeerIndex)
		}
		return netsetup.SetUpContainer(c.ns, &vs, v.PeerIndex)
	}
	var herr, cerr error
	if v.AttachedTo == vs.BridgeIndex && v.PeerNSID >= 0 {
		// The usual case: the host end was finished as it was made,
		// and there is nothing to wait for on its side.
		herr, cerr = hostSide(), containerSide()
	} else {
		hostDone := make(chan error, 1)
		go func() { hostDone <- hostSide() }()
		cerr = containerSide()
		herr = <-hostDone
	}
	if herr != nil {
		return herr
	}
	if cerr != nil {
		return cerr
	}
	fault("setup:container")
	env.mark("container")
	return nil
}

// veth returns the container's pair, the one made early or a new one, and
// the host socket to finish it on. A host name found taken is replaced,
// and recorded, before the next try.
func (c *setupCtx) veth(vs *netsetup.VethSpec) (*netsetup.Conn, *netsetup.Veth, error) {
	var conn *netsetup.Conn
	var v *netsetup.Veth
	var err error
	if c.early != nil {
		v, err = c.early.wait()
		if c.early.host == nil && err == nil {
			// The early pair was not attempted: its socket serves
			// here, and is closed with it.
			if c.early.host, err = netsetup.NewConn(netns.None()); err != nil {
				return nil, nil, err
			}
		}
		conn = c.early.host
	} else if conn, err = netsetup.NewConn(netns.None()); err != nil {
		return nil, nil, err
	}
	for attempt := 0; v == nil; attempt++ {
		if err != nil {
			if !errors.Is(err, unix.EEXIST) || attempt == 5 || conn == nil {
				return nil, nil, err
			}
			c.rec.HostVeth = netsetup.RandomVethName()
			vs.HostName = c.rec.HostVeth
			if err := c.env.Store.Put(c.rec); err != nil {
				return nil, nil, err
			}
		}
		v, err = netsetup.CreateVeth(conn, *vs)
	}
	return conn, v, nil
}

// reensureBridge ensures a network's bridge again, under the lock, and
// records its index in the network's current state.
func (env *Env) reensureBridge(host *netlink.Handle, network string, spec netsetup.BridgeSpec) (int, error) {
	lock, err := env.Store.Lock(env.lockTimeout())
	if err != nil {
		return 0, err
	}
	defer lock.Unlock()
	ns, err := env.Store.GetNet(network)
	if err != nil || ns == nil {
		return 0, fmt.Errorf("state of network %s: gone while attaching (%v)", network, err)
	}
	err = env.ensureBridge(host, spec, ns)
	return ns.BridgeIndex, err
}

// ensureBridge ensures the network's bridge, with forwarding on, and
// records its index in the network's state. The caller holds the lock.
// Later setups trust the index (see state.Net.BridgeIndex), and the
// sysctls with it, as Docker sets them once: `netshim doctor` tells if
// forwarding was turned off since.
func (env *Env) ensureBridge(host *netlink.Handle, spec netsetup.BridgeSpec, ns *state.Net) error {
	if err := netsetup.EnsureSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	br, _, err := netsetup.EnsureBridge(host, spec)
	if err != nil {
		return err
	}
	ns.BridgeIndex = br.Attrs().Index
	return env.Store.PutNet(ns)
}

// chooseSubnet settles the network's subnet: the configured one, else the
// one chosen before (kept stable), else the address already on the bridge,
// else the first free pool.
func (env *Env) chooseSubnet(hostHandle func() (*netlink.Handle, error), def *config.Network, ns *state.Net) error {
	if def.Subnet.IsValid() {
		if ns.Subnet.IsValid() && (ns.Subnet != def.Subnet || ns.Gateway != def.Gateway) {
			if inUse, err := ns.InUse(); err != nil {
				return err
			} else if inUse {
				return fmt.Errorf("network %s: subnet changed from %s to %s while containers are attached; stop them first",
					def.Name, ns.Subnet, def.Subnet)
			}
		}
		ns.Subnet, ns.Gateway = def.Subnet, def.Gateway
		return nil
	}
	if ns.Subnet.IsValid() {
		return nil
	}
	host, err := hostHandle()
	if err != nil {
		return err
	}
	if l, err := host.LinkByName(def.Bridge); err == nil {
		addrs, err := host.AddrList(l, unix.AF_INET)
		if err == nil && len(addrs) > 0 {
			a, _ := netip.AddrFromSlice(addrs[0].IP.To4())
			ones, _ := addrs[0].Mask.Size()
			ns.Subnet, ns.Gateway = netip.PrefixFrom(a, ones).Masked(), a
			return nil
		}
	}
	used, err := netsetup.HostPrefixes(host, def.Bridge)
	if err != nil {
		return err
	}
	nets, err := env.UserNetworks()
	if err != nil {
		return err
	}
	for _, n := range nets {
		used = append(used, n.Subnet)
	}
	p, err := netsetup.ChoosePool(env.Config.Pools, used)
	if err != nil {
		return fmt.Errorf("network %s: %w", def.Name, err)
	}
	ns.Subnet, ns.Gateway = p, p.Addr().Next()
	return nil
}
