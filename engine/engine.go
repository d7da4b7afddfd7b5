// Package engine sets up and tears down containers' networks from requests
// that know nothing of OCI, and keeps the host's shared state: the
// networks, their bridges, firewall rules and DNS responders, under one
// host lock. It reaches each kind of network through a Driver (bridge.go;
// host and none in driver.go); firewall rules go through package firewall, kernel
// work through package netsetup, state through package state.
package engine

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/cluster"
	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/internal/fastio"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// Engine is netshim's work on one host: its config, its state dir, and
// the networks made with `netshim network create`.
type Engine struct {
	Config *config.Config
	Store  *state.Store
	Defs   *state.Defs
	// LockTimeout bounds the wait for the host lock.
	LockTimeout time.Duration
	// Reread, when set, reads a running container's request again from
	// its bundle (the OCI boundary's job), so that `network connect` and
	// `disconnect` write its /etc/hosts and /etc/resolv.conf as setup
	// did, for its networks of now.
	Reread func(id string, pid int, bundle string) (*Request, error)

	// cluster is the etcd client, made on first use; overlays are the
	// overlay networks a setup joined before it took the lock.
	cluster  *cluster.Client
	overlays map[string]*overlayJoin
}

// DefaultLockTimeout is how long a hook waits for the host lock.
const DefaultLockTimeout = 30 * time.Second

func (e *Engine) lock() (*state.Lock, error) {
	d := e.LockTimeout
	if d <= 0 {
		d = DefaultLockTimeout
	}
	return e.Store.Lock(d)
}

// Network modes of a request besides networks of the bridge driver.
const (
	ModeBridge = "bridge"
	ModeNone   = "none"
	ModeHost   = "host"
)

// Request is a container whose network to set up, as the OCI boundary
// read it from the runtime's state and the bundle.
type Request struct {
	ID string
	// Name is the container's name for links and DNS.
	Name     string
	Hostname string
	// PID is the container's process, in the network namespace to wire.
	PID    int
	Bundle string
	// Rootfs is the container's root, absolute; Mounts are its mounts,
	// for the bind mounts of /etc/hosts and /etc/resolv.conf.
	Rootfs string
	Mounts []netsetup.Mount
	// Endpoints are the container's networks, in the order of its
	// interfaces (eth0, eth1, …): bridge (the default network) or user
	// networks, or none or host alone.
	Endpoints  []Endpoint
	Links      []LinkRequest
	DNS        []netip.Addr
	DNSSearch  []string
	DNSOptions []string
	AddHosts   []AddHost
	Ports      []PortRequest
	// LoopbackIPv6Off says the container's own sysctls turn IPv6 off on
	// lo, once the runtime applies them (after the hooks).
	LoopbackIPv6Off bool
}

// Endpoint is the container's place on one of its networks, as asked:
// the network and the container's options there.
type Endpoint struct {
	Network string
	IP, IP6 netip.Addr
	Aliases []string
	// MAC is the container interface's (default: Docker's, from the IPv4
	// address).
	MAC net.HardwareAddr
	// GwPriority chooses the network of the default route (Docker 28's
	// gw-priority): the highest wins, the first of equals.
	GwPriority int

	// What setup makes of it: the container's interface on the network,
	// whether its default routes of each family go through it, and
	// whether the published ports are mapped to its addresses (the
	// IPv4 gateway's, as in Docker).
	iface          string
	route4, route6 bool
	ports          bool
}

// Mode is the request's kind of network: host, none or bridge.
func (r *Request) Mode() string { return driverKind(r.Endpoints[0].Network) }

// LinkRequest is one --link: a container name and the alias it is known by.
type LinkRequest struct {
	Name  string
	Alias string
}

// AddHost is one --add-host; HostGateway stands for the network's gateway.
type AddHost struct {
	Name        string
	IP          netip.Addr
	HostGateway bool
}

// PortRequest is one container port to publish: on HostIP (unspecified:
// every local address), at a host port from HostLo..HostHi (both 0: a
// random port from the ephemeral range).
type PortRequest struct {
	HostIP        netip.Addr
	HostLo        int
	HostHi        int
	ContainerPort int
	Proto         string
}

// Fields of a request, as FieldError names them.
const (
	FieldIP       = "ip"
	FieldIP6      = "ip6"
	FieldLinks    = "links"
	FieldAddHosts = "add-hosts"
	FieldPorts    = "ports"
)

// FieldError refuses a request for one of its fields (of its endpoint on
// Network, for per-network fields): the boundary says which annotation or
// flag set it.
type FieldError struct {
	Field   string
	Network string
	Reason  string
}

func (e *FieldError) Error() string { return e.Reason }

// ShortID is the first 12 characters of an id, as Docker shows them.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Log appends one line to <state>/hook.log: the hooks' outcomes, and what
// the engine did on its own (a reload, a responder started again). Logging
// never fails the caller.
func (e *Engine) Log(id, name, stage string, d time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error: " + strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	line := fmt.Sprintf("%s id=%s name=%s stage=%s duration=%s %s\n", time.Now().UTC().Format(time.RFC3339Nano),
		dash(id), dash(name), dash(stage), d.Round(time.Microsecond), outcome)
	// One write with O_APPEND: lines of concurrent hooks do not interleave.
	fastio.Create(filepath.Join(e.Store.Dir, "hook.log"), unix.O_APPEND, []byte(line), 0o600, false)
}

// self is this process, the owner of the setups it runs.
func self() (state.Process, error) {
	pid := os.Getpid()
	start, err := netsetup.ProcStartTime(pid)
	return state.Process{PID: pid, Start: start}, err
}

// alive reports whether p is still running (same PID, same start time).
func alive(p state.Process) bool {
	if p.PID <= 0 {
		return false
	}
	start, err := netsetup.ProcStartTime(p.PID)
	return err == nil && start == p.Start
}

// containerAlive reports whether c is still running: its process, and in
// its network namespace.
func containerAlive(c state.Container) bool {
	if !alive(c.Process) {
		return false
	}
	if c.NetnsIno == 0 {
		return true
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", c.PID), &st); err != nil {
		return false
	}
	return st.Ino == c.NetnsIno && st.Dev == c.NetnsDev
}
