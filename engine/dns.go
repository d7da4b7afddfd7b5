package engine

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// DNSPort is where a responder listens on a user network's gateway.
var DNSPort = 53

// addNames makes the container resolvable on its user network (attachment
// a) and makes sure the network's responder runs. clientDNS are the
// container's own upstreams (--dns), which the responder asks for it. The
// caller holds the lock and writes ns afterwards; from then on the
// responder answers for the names.
func (e *Engine) addNames(ns *state.Net, def *config.Network, rec *state.Record, a *state.Attachment, clientDNS []netip.Addr) error {
	if ns.DNS == nil {
		ns.DNS = &state.NetDNS{Endpoints: map[netip.Addr]state.DNSEntry{}}
	}
	ns.DNS.Internal = def.Internal
	ns.DNS.Upstreams = nil
	upstreams := def.DNS
	if len(upstreams) == 0 {
		// The responder runs in the host's namespace, so a loopback
		// resolver of the host (127.0.0.53) is reachable from it.
		upstreams = hostResolvers()
	}
	for _, u := range upstreams {
		ns.DNS.Upstreams = append(ns.DNS.Upstreams, net.JoinHostPort(u.String(), "53"))
	}
	entry := state.DNSEntry{ID: rec.ID, Names: a.Names}
	for _, u := range clientDNS {
		entry.Upstreams = append(entry.Upstreams, net.JoinHostPort(u.String(), "53"))
	}
	ns.DNS.Endpoints[a.Addr()] = entry
	if a6 := a.Addr6(); a6.IsValid() {
		ns.DNS.Endpoints[a6] = entry
	}
	return e.ensureResponder(ns)
}

// hostResolvers are the nameservers of the host's resolv.conf.
func hostResolvers() []netip.Addr {
	data, _ := os.ReadFile(HostResolvConf)
	ns, _, _ := netsetup.ParseResolv(data)
	return ns
}

// removeNames drops the container's names (attachment a) and, with the
// network's last container, stops its responder; one that died while
// others need it is started again. The caller holds the lock and writes
// ns.
func (e *Engine) removeNames(ns *state.Net, rec *state.Record, a state.Attachment) {
	if ns.DNS != nil {
		for _, addr := range []netip.Addr{a.Addr(), a.Addr6()} {
			if entry, ok := ns.DNS.Endpoints[addr]; ok && entry.ID == rec.ID {
				delete(ns.DNS.Endpoints, addr)
			}
		}
		if len(ns.DNS.Endpoints) > 0 {
			if err := e.ensureResponder(ns); err != nil {
				e.Log(rec.ID, rec.Name, "dns", 0, err)
			}
			return
		}
		stopProcess(ns.DNS.Process())
		ns.DNS = nil
	}
	// Undoing a setup killed after it started a responder but before it
	// recorded it: that responder is found by its command line.
	if inUse, err := ns.InUse(); rec.Phase != state.PhaseReady && err == nil && !inUse {
		if p, ok := findResponder(e.Store.Dir, ns.Name); ok {
			stopProcess(p)
		}
	}
}

// stopProcess ends a responder and waits (briefly) for it to go.
func stopProcess(p state.Process) {
	if !alive(p) {
		return
	}
	syscall.Kill(p.PID, syscall.SIGTERM)
	for i := 0; i < 200 && alive(p); i++ {
		time.Sleep(5 * time.Millisecond)
	}
	if alive(p) {
		syscall.Kill(p.PID, syscall.SIGKILL)
	}
}

// ensureResponder starts the network's responder unless it runs. The
// caller binds the gateway's port 53, of each family the network has, and
// hands the sockets over, so the responder is reachable the moment the hook
// returns. The responder is detached: a new session, stdio on /dev/null,
// no descriptor but its sockets.
func (e *Engine) ensureResponder(ns *state.Net) error {
	if alive(ns.DNS.Process()) {
		return nil
	}
	// A hook killed between starting a responder and recording it leaves
	// one running, holding the sockets: adopt it.
	if p, ok := findResponder(e.Store.Dir, ns.Name); ok {
		ns.DNS.PID, ns.DNS.Start = p.PID, p.Start
		return nil
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, gw := range []netip.Addr{ns.Gateway, ns.Gateway6} {
		if !gw.IsValid() {
			continue
		}
		uf, tf, err := listenDNS(netip.AddrPortFrom(gw, uint16(DNSPort)))
		if err != nil {
			return fmt.Errorf("dns responder of network %s: %w", ns.Name, err)
		}
		files = append(files, uf, tf)
	}
	var env []string
	if ns.Overlay != nil && e.Config.Path != "" {
		// It answers for the overlay's other hosts from etcd, which the
		// config says how to reach.
		env = append(env, EnvConfig+"="+e.Config.Path)
	}
	p, err := startHelperProcess(responderArgs(e.Store.Dir, ns.Name), env, files...) // fds 3 and 4, then 5 and 6
	if err != nil {
		return fmt.Errorf("start the dns responder of network %s: %w", ns.Name, err)
	}
	start, err := netsetup.ProcStartTime(p.Pid)
	if err != nil {
		p.Kill()
		return err
	}
	ns.DNS.PID, ns.DNS.Start = p.Pid, start
	return p.Release()
}

// EnvConfig names the config file for netshim's commands.
const EnvConfig = "NETSHIM_CONFIG"

// listenDNS binds a UDP and a TCP socket to addr and returns them as files,
// for a responder to inherit.
func listenDNS(addr netip.AddrPort) (udpFile, tcpFile *os.File, err error) {
	network := map[bool]string{true: "4", false: "6"}[addr.Addr().Is4()]
	udp, err := net.ListenUDP("udp"+network, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, nil, err
	}
	defer udp.Close()
	tcp, err := net.ListenTCP("tcp"+network, net.TCPAddrFromAddrPort(addr))
	if err != nil {
		return nil, nil, err
	}
	defer tcp.Close()
	if udpFile, err = udp.File(); err != nil {
		return nil, nil, err
	}
	if tcpFile, err = tcp.File(); err != nil {
		udpFile.Close()
		return nil, nil, err
	}
	return udpFile, tcpFile, nil
}

// responderArgs is the responder's command line after the binary's path;
// it identifies the responder of a state dir and network.
func responderArgs(stateDir, network string) []string {
	return []string{"--state-dir", stateDir, "dns-serve", network}
}

// findResponder looks for a running responder of the network by its
// command line. It reads /proc, so it is only used when the recorded
// responder is not alive.
func findResponder(stateDir, network string) (state.Process, bool) {
	want := strings.Join(responderArgs(stateDir, network), "\x00") + "\x00"
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil || !strings.HasSuffix(string(data), want) {
			continue
		}
		// The first argument is the binary; the rest must match exactly.
		if _, rest, ok := strings.Cut(string(data), "\x00"); !ok || rest != want {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(p, "/proc/"), "/cmdline"))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if start, err := netsetup.ProcStartTime(pid); err == nil {
			return state.Process{PID: pid, Start: start}, true
		}
	}
	return state.Process{}, false
}

var errNoSockets = errors.New("dns-serve needs its sockets from fd 3 on, a UDP and a TCP one per family, counted in LISTEN_FDS (it is started by a hook)")

// ResponderSockets returns the sockets a hook handed to the responder: a
// UDP and a TCP one from fd 3, and another pair from fd 5 on a dual-stack
// network; LISTEN_FDS counts them.
func ResponderSockets() ([]net.PacketConn, []net.Listener, error) {
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 2 || n%2 != 0 {
		return nil, nil, errNoSockets
	}
	var udps []net.PacketConn
	var tcps []net.Listener
	for fd := uintptr(3); fd < uintptr(3+n); fd += 2 {
		uf, tf := os.NewFile(fd, "udp"), os.NewFile(fd+1, "tcp")
		udp, uerr := net.FilePacketConn(uf)
		tcp, terr := net.FileListener(tf)
		uf.Close()
		tf.Close()
		if uerr != nil || terr != nil {
			return nil, nil, errNoSockets
		}
		udps, tcps = append(udps, udp), append(tcps, tcp)
	}
	return udps, tcps, nil
}

// LeaveCgroup moves the calling process (a responder, a reclaimer) out of
// the cgroup of the runtime that ran the hook, into cgroup name of its
// own, so it neither dies with that runtime's cgroup nor keeps it
// populated. Best effort, cgroup v2 only: the unified hierarchy is at
// /sys/fs/cgroup, or at /sys/fs/cgroup/unified on hybrid hosts.
func LeaveCgroup(name string) {
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
			continue
		}
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err == nil {
			// "0" moves the writing process.
			os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("0"), 0o644)
		}
		return
	}
}
