package ocihook

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// DNSPort is where the responder listens on a user network's gateway.
var DNSPort = 53

// addName makes the container resolvable on its user network and makes
// sure the network's responder runs. The caller holds the lock and writes
// ns afterwards; from then on the responder answers for the name.
func (env *Env) addName(ns *state.Net, def *config.Network, rec *state.Record, opts *Options, hostResolv []byte) error {
	if ns.DNS == nil {
		ns.DNS = &state.NetDNS{Endpoints: map[netip.Addr]state.DNSEntry{}}
	}
	ns.DNS.Internal = def.Internal
	ns.DNS.Upstreams = nil
	upstreams := def.DNS
	if len(upstreams) == 0 {
		// The responder runs in the host's namespace, so a loopback
		// resolver of the host (127.0.0.53) is reachable from it.
		upstreams, _, _ = netsetup.ParseResolv(hostResolv)
	}
	for _, a := range upstreams {
		ns.DNS.Upstreams = append(ns.DNS.Upstreams, net.JoinHostPort(a.String(), "53"))
	}
	names := append([]string{rec.Name}, opts.Aliases...)
	if short := ShortID(rec.ID); short != rec.Name {
		names = append(names, short)
	}
	entry := state.DNSEntry{ID: rec.ID, Names: names}
	for _, a := range opts.DNS {
		entry.Upstreams = append(entry.Upstreams, net.JoinHostPort(a.String(), "53"))
	}
	ns.DNS.Endpoints[rec.IP] = entry
	return env.ensureResponder(ns)
}

// ShortID is the first 12 characters of a container id, as Docker shows it.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// removeName drops the container's names and, with the network's last
// container, stops its responder. The caller holds the lock and writes ns.
func (env *Env) removeName(ns *state.Net, rec *state.Record) {
	if rec.Network == config.DefaultNetwork {
		return // no DNS on the default network
	}
	if ns.DNS != nil {
		if e, ok := ns.DNS.Endpoints[rec.IP]; ok && e.ID == rec.ID {
			delete(ns.DNS.Endpoints, rec.IP)
		}
		if len(ns.DNS.Endpoints) > 0 {
			// The others still need it: one that died is started again.
			if err := env.ensureResponder(ns); err != nil {
				env.logLine(rec.ID, rec.Name, "dns", 0, err)
			}
			return
		}
		stopProcess(ns.DNS.PID, ns.DNS.Start)
		ns.DNS = nil
	}
	// Undoing a setup killed after it started a responder but before it
	// recorded it: that responder is found by its command line.
	if inUse, err := ns.InUse(); rec.Phase != state.PhaseReady && err == nil && !inUse {
		if pid, start, ok := findResponder(env.Store.Dir, ns.Name); ok {
			stopProcess(pid, start)
		}
	}
}

// alive reports whether pid is still the process that started at start.
func alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := netsetup.ProcStartTime(pid)
	return err == nil && st == start
}

// stopProcess ends the responder and waits (briefly) for it to go.
func stopProcess(pid int, start uint64) {
	if !alive(pid, start) {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 200 && alive(pid, start); i++ {
		time.Sleep(5 * time.Millisecond)
	}
	if alive(pid, start) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// ensureResponder starts the network's responder unless it runs. The hook
// binds gateway:53 itself and hands the sockets over, so the responder is
// reachable the moment the hook returns. The responder is detached: a new
// session, stdio on /dev/null, no descriptor but its two sockets.
func (env *Env) ensureResponder(ns *state.Net) error {
	if alive(ns.DNS.PID, ns.DNS.Start) {
		return nil
	}
	// A hook killed between starting a responder and recording it leaves
	// one running, holding the sockets: adopt it.
	if pid, start, ok := findResponder(env.Store.Dir, ns.Name); ok {
		ns.DNS.PID, ns.DNS.Start = pid, start
		return nil
	}
	addr := net.JoinHostPort(ns.Gateway.String(), strconv.Itoa(DNSPort))
	udp, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return fmt.Errorf("dns responder of network %s: %w", ns.Name, err)
	}
	defer udp.Close()
	tcp, err := net.Listen("tcp4", addr)
	if err != nil {
		return fmt.Errorf("dns responder of network %s: %w", ns.Name, err)
	}
	defer tcp.Close()
	uf, err := udp.(*net.UDPConn).File()
	if err != nil {
		return err
	}
	defer uf.Close()
	tf, err := tcp.(*net.TCPListener).File()
	if err != nil {
		return err
	}
	defer tf.Close()
	p, err := startHelper(responderArgs(env.Store.Dir, ns.Name), uf, tf) // fds 3 and 4
	if err != nil {
		return fmt.Errorf("start dns responder of network %s: %w", ns.Name, err)
	}
	start, err := netsetup.ProcStartTime(p.Pid)
	if err != nil {
		p.Kill()
		return err
	}
	ns.DNS.PID, ns.DNS.Start = p.Pid, start
	p.Release()
	return nil
}

// startHelper starts this binary with args, detached: its own session,
// stdio on /dev/null (a runtime that waits for the hook's output to end
// must not wait for a helper), a fixed PATH, and files as fds 3 onwards.
func startHelper(args []string, files ...*os.File) (*os.Process, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary's path: %w", err)
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd.Process, nil
}

// responderArgs is the responder's command line after the binary's path;
// it identifies the responder of a state dir and network.
func responderArgs(stateDir, network string) []string {
	return []string{"--state-dir", stateDir, "dns-serve", network}
}

// findResponder looks for a running responder of the network by its
// command line. It reads /proc, so it is only used when the recorded
// responder is not alive.
func findResponder(stateDir, network string) (int, uint64, bool) {
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
			return pid, start, true
		}
	}
	return 0, 0, false
}

var errNoSockets = errors.New("dns-serve needs its sockets on fds 3 and 4 (it is started by the hook)")

// ResponderSockets returns the sockets a hook handed to the responder.
func ResponderSockets() (net.PacketConn, net.Listener, error) {
	uf, tf := os.NewFile(3, "udp"), os.NewFile(4, "tcp")
	if uf == nil || tf == nil {
		return nil, nil, errNoSockets
	}
	udp, err := net.FilePacketConn(uf)
	if err != nil {
		return nil, nil, errNoSockets
	}
	tcp, err := net.FileListener(tf)
	if err != nil {
		return nil, nil, errNoSockets
	}
	uf.Close()
	tf.Close()
	return udp, tcp, nil
}

// LeaveCgroup moves the responder out of the cgroup of the runtime that
// ran the hook, into a cgroup of its own, so it does not die with that
// runtime's cgroup. Best effort, cgroup v2 only: the unified hierarchy is at
// /sys/fs/cgroup, or at /sys/fs/cgroup/unified on hybrid hosts.
func LeaveCgroup() {
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
			continue
		}
		dir := filepath.Join(root, "netshim-dns")
		if err := os.MkdirAll(dir, 0o755); err == nil {
			// "0" moves the writing process.
			os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("0"), 0o644)
		}
		return
	}
}
