package engine

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/cluster"
	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/firewall"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// ModeOverlay is the driver of overlay networks: a bridge network whose
// subnet is this host's lease of the overlay's, joined to the other
// hosts' by a VXLAN device (flannel's vxlan backend).
const ModeOverlay = "overlay"

// overlayDriver is the bridge driver with the overlay's parts: the VXLAN
// device and its peers, set up under the lock in Reserve; what etcd says
// is read before the lock (joinOverlays), and names are published after
// the setup (publishNames).
type overlayDriver struct{ bridgeDriver }

// overlayJoin is what a setup learned of an overlay network before it
// took the lock: its definition, this host's subnet lease and the peers.
type overlayJoin struct {
	net      cluster.Network
	underlay netsetup.Underlay
	subnet   netip.Prefix
	peers    []state.Peer
	fp       uint64
}

// clusterClient is the etcd client of the config's [cluster].
func (e *Engine) clusterClient() (*cluster.Client, error) {
	if e.cluster != nil {
		return e.cluster, nil
	}
	if !e.Config.Cluster.Enabled() {
		return nil, errors.New("overlay networks need [cluster] etcd_endpoints in the config")
	}
	c, err := cluster.New(e.Config.Cluster)
	if err != nil {
		return nil, err
	}
	e.cluster = c
	return c, nil
}

// isLocalNetwork reports whether name is a network of this host alone: the
// default network, host, none, or a network of the config or of
// `network create`.
func (e *Engine) isLocalNetwork(name string) (bool, error) {
	if name == config.DefaultNetwork || name == ModeHost || name == ModeNone {
		return true, nil
	}
	if _, ok := e.Config.Networks[name]; ok {
		return true, nil
	}
	if e.Defs == nil {
		return false, nil
	}
	def, err := e.Defs.Get(name)
	return def != nil, err
}

// joinOverlays settles, before the lock, each overlay network of the
// request: its definition, this host's etcd lease and subnet, the peers.
func (e *Engine) joinOverlays(req *Request) error {
	for _, ep := range req.Endpoints {
		local, err := e.isLocalNetwork(ep.Network)
		if err != nil || local {
			if err != nil {
				return err
			}
			continue
		}
		if !e.Config.Cluster.Enabled() {
			return fmt.Errorf("network %s not found", ep.Network)
		}
		if len(req.Endpoints) > 1 {
			return fmt.Errorf("network %s: an overlay network cannot be combined with other networks", ep.Network)
		}
		j, err := e.joinOverlay(ep.Network)
		if err != nil {
			return err
		}
		if e.overlays == nil {
			e.overlays = map[string]*overlayJoin{}
		}
		e.overlays[ep.Network] = j
	}
	return nil
}

// joinOverlay is joinOverlays for one network: with etcd reachable, three
// requests once the host holds its subnet (renew the lease, read the
// leases, and later publish the container's names); without it, the
// host's recorded lease while it has not expired.
func (e *Engine) joinOverlay(name string) (*overlayJoin, error) {
	cl, err := e.clusterClient()
	if err != nil {
		return nil, err
	}
	underlay, err := e.underlay()
	if err != nil {
		return nil, fmt.Errorf("overlay network %s: %w", name, err)
	}
	ns, err := e.Store.GetNet(name)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	j := &overlayJoin{underlay: underlay}
	if ns != nil && ns.Overlay != nil {
		j.net = recordedOverlay(ns)
	} else {
		n, err := cl.GetNetwork(ctx, name)
		if err != nil {
			return nil, e.offlineRefusal(name, err)
		}
		if n == nil {
			return nil, fmt.Errorf("network %s not found", name)
		}
		j.net = *n
	}
	lease, err := e.hostLease(ctx, cl, underlay.Addr)
	if err != nil {
		var ue *cluster.UnreachableError
		if errors.As(err, &ue) && lease != nil && time.Now().Before(lease.Expires) && ns != nil && ns.Overlay != nil && ns.Subnet.IsValid() {
			// Held until it expires: the host goes on with what it knows,
			// the peers as installed.
			j.subnet, j.peers, j.fp = ns.Subnet, ns.Overlay.Peers, ns.Overlay.Fingerprint
			return j, nil
		}
		return nil, e.offlineRefusal(name, err)
	}
	var want netip.Prefix
	if ns != nil && ns.Overlay != nil {
		want = ns.Subnet
	}
	subnet, leases, err := cl.LeaseSubnet(ctx, &j.net, underlay.Addr, netsetup.VTEPMAC(underlay.Addr, j.net.VNI), lease.ID, want)
	if err != nil {
		return nil, e.offlineRefusal(name, err)
	}
	j.subnet = subnet
	j.peers, j.fp = peersOf(leases, underlay.Addr)
	return j, nil
}

// recordedOverlay is an overlay network's definition as this host
// recorded it.
func recordedOverlay(ns *state.Net) cluster.Network {
	o := ns.Overlay
	return cluster.Network{Name: ns.Name, ID: o.ID, Subnet: o.Subnet, HostPrefix: o.HostPrefix, VNI: o.VNI}
}

// offlineRefusal words a failure to reach etcd for a host that holds no
// lease it could go on with.
func (e *Engine) offlineRefusal(name string, err error) error {
	var ue *cluster.UnreachableError
	if errors.As(err, &ue) {
		return fmt.Errorf("overlay network %s: this host holds no subnet lease and etcd (%s) is unreachable: %w", name, strings.Join(ue.Endpoints, ","), ue.Err)
	}
	return fmt.Errorf("overlay network %s: %w", name, err)
}

// underlay is the interface VXLAN traffic leaves by.
func (e *Engine) underlay() (netsetup.Underlay, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return netsetup.Underlay{}, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return netsetup.FindUnderlay(h, e.Config.Cluster.Underlay)
}

// peersOf are the leases of other hosts than underlay, and a fingerprint
// of them: unchanged leases need no netlink work.
func peersOf(leases []cluster.Lease, underlay netip.Addr) ([]state.Peer, uint64) {
	var peers []state.Peer
	for _, l := range leases {
		if l.Underlay != underlay {
			peers = append(peers, state.Peer{Underlay: l.Underlay, MAC: l.VTEPMAC, Subnet: l.Subnet})
		}
	}
	slices.SortFunc(peers, func(a, b state.Peer) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	h := fnv.New64a()
	for _, p := range peers {
		fmt.Fprintf(h, "%s %s %s\n", p.Underlay, p.MAC, p.Subnet)
	}
	return peers, h.Sum64() | 1 // never 0, which means none installed
}

// hostLease renews this host's etcd lease, or grants one (under the host
// lock, so concurrent hooks share one). On an unreachable etcd it returns
// the recorded lease with the error.
func (e *Engine) hostLease(ctx context.Context, cl *cluster.Client, underlay netip.Addr) (*state.HostLease, error) {
	l, err := e.Store.GetHostLease()
	if err != nil {
		return nil, err
	}
	if l != nil && l.Underlay == underlay {
		ttl, err := cl.KeepAlive(ctx, l.ID)
		if err == nil {
			l.Expires = time.Now().Add(ttl)
			return l, e.Store.PutHostLease(l)
		}
		if !errors.Is(err, cluster.ErrLeaseGone) {
			return l, err
		}
	}
	lock, err := e.lock()
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	if again, err := e.Store.GetHostLease(); err != nil {
		return nil, err
	} else if again != nil && l != nil && again.ID != l.ID && again.Underlay == underlay {
		return again, nil // granted by another hook meanwhile
	}
	id, err := cl.Grant(ctx, e.Config.Cluster.LeaseTTL)
	if err != nil {
		return l, err
	}
	l = &state.HostLease{ID: id, Underlay: underlay, Expires: time.Now().Add(e.Config.Cluster.LeaseTTL)}
	return l, e.Store.PutHostLease(l)
}

// overlayNetwork is the bridge network an overlay network (name, id) is
// on this host: its subnet there, and an MTU that leaves room for VXLAN.
func overlayNetwork(name, id string, subnet netip.Prefix, mtu int) *config.Network {
	return &config.Network{
		Name: name, ID: id, Bridge: "ov-" + id[:12],
		Subnet: subnet, Gateway: subnet.Masked().Addr().Next(),
		MTU: mtu, ICC: true, Masquerade: true, GatewayMode: config.GatewayNAT,
	}
}

// driverOf is the kind of driver for a request's network.
func (e *Engine) driverOf(network string) string {
	if e.overlays[network] != nil {
		return ModeOverlay
	}
	return driverKind(network)
}

// Reserve implements Driver: the network's overlay part recorded first
// (its rules, installed by the bridge driver, are made from it), the
// bridge network's reservation, then the VXLAN device and the peers.
func (o *overlayDriver) Reserve(rec *state.Record, req *Request, ep *Endpoint, save func() error) error {
	e := o.e
	j := e.overlays[ep.Network]
	ns, err := e.Store.GetNet(ep.Network)
	if err != nil {
		return err
	}
	if ns == nil {
		ns = e.Store.NewNet(ep.Network)
	}
	if ns.Overlay == nil || ns.Overlay.ID != j.net.ID {
		ns.Overlay = &state.Overlay{ID: j.net.ID}
	}
	ov := ns.Overlay
	ov.Subnet, ov.HostPrefix, ov.VNI = j.net.Subnet, j.net.HostPrefix, j.net.VNI
	ov.VXLAN, ov.Underlay, ov.MTU = "vx-"+j.net.ID[:12], j.underlay.Addr, j.underlay.MTU-netsetup.VXLANOverhead
	if err := e.Store.PutNet(ns); err != nil {
		return err
	}
	if err := o.bridgeDriver.Reserve(rec, req, ep, save); err != nil {
		return err
	}
	rec.Attachments[len(rec.Attachments)-1].Driver = ModeOverlay
	if err := save(); err != nil {
		return err
	}
	if ns, err = e.Store.GetNet(ep.Network); err != nil {
		return err
	}
	return e.ensureOverlay(ns, j.underlay, j.peers, j.fp)
}

// ensureOverlay makes the network's VXLAN device and installs peers on it
// and in its firewall rules, unless they are installed already (the same
// fingerprint fp). The caller holds the lock.
func (e *Engine) ensureOverlay(ns *state.Net, underlay netsetup.Underlay, peers []state.Peer, fp uint64) error {
	ov := ns.Overlay
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	_, existed, err := netsetup.LookupLink(h, ov.VXLAN)
	if err != nil {
		return err
	}
	vx, err := netsetup.EnsureVXLAN(h, netsetup.VXLANSpec{Name: ov.VXLAN, VNI: ov.VNI,
		MAC: netsetup.VTEPMAC(ov.Underlay, ov.VNI), Underlay: underlay, MTU: ov.MTU})
	if err != nil {
		return fmt.Errorf("overlay network %s: %w", ns.Name, err)
	}
	if existed && fp == ov.Fingerprint && fp != 0 {
		return nil // installed already
	}
	var np []netsetup.Peer
	for _, p := range peers {
		mac, err := net.ParseMAC(p.MAC)
		if err != nil {
			return fmt.Errorf("overlay network %s: peer %s: %w", ns.Name, p.Underlay, err)
		}
		np = append(np, netsetup.Peer{Underlay: p.Underlay, MAC: mac, Subnet: p.Subnet})
	}
	if err := netsetup.SyncPeers(h, vx, np); err != nil {
		return fmt.Errorf("overlay network %s: %w", ns.Name, err)
	}
	changed := !slices.Equal(peerAddrs(ov.Peers), peerAddrs(peers))
	ov.Peers, ov.Fingerprint = peers, fp
	if changed && ns.RulesInstalled() {
		// The VXLAN filter lets the new set of peers in.
		def, err := e.network(ns.Name)
		if err != nil {
			return err
		}
		rules := firewall.RulesFor(def, ns, e.Config.TrustedHostInterfaces)
		fw, err := firewall.New(ns.Firewall)
		if err != nil {
			return err
		}
		installed, err := fw.EnsureNetwork(rules, ns.Installed)
		if err != nil {
			return err
		}
		ns.Installed, ns.Rules = installed, &rules
	}
	return e.Store.PutNet(ns)
}

func peerAddrs(ps []state.Peer) []netip.Addr {
	out := make([]netip.Addr, len(ps))
	for i, p := range ps {
		out[i] = p.Underlay
	}
	return out
}

// Detach implements Driver: the bridge network's part, and with the
// network's last container on this host its VXLAN device (nothing may
// come in for an empty network).
func (o *overlayDriver) Detach(rec *state.Record, a state.Attachment, r *Reclaim) error {
	if err := o.bridgeDriver.Detach(rec, a, r); err != nil {
		return err
	}
	ns, err := o.e.Store.GetNet(a.Network)
	if err != nil || ns == nil || ns.Overlay == nil {
		return err
	}
	_, err = o.e.dropIdleOverlay(ns)
	return err
}

// dropIdleOverlay deletes the VXLAN device of a network no container of
// this host is on, and says whether there was one. The caller holds the
// lock.
func (e *Engine) dropIdleOverlay(ns *state.Net) (bool, error) {
	if inUse, err := ns.InUse(); err != nil || inUse {
		return false, err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	_, found, err := netsetup.LookupLink(h, ns.Overlay.VXLAN)
	if err != nil || !found {
		return false, err
	}
	if err := netsetup.DeleteLink(h, ns.Overlay.VXLAN); err != nil {
		return false, err
	}
	// The peers stay known, for a start while etcd is unreachable.
	ns.Overlay.Fingerprint = 0
	return true, e.Store.PutNet(ns)
}

// overlayNames are the names and addresses an overlay attachment
// publishes.
func overlayNames(a *state.Attachment) cluster.Names {
	n := cluster.Names{Names: a.Names}
	for _, p := range a.Addrs {
		n.Addrs = append(n.Addrs, p.Addr())
	}
	return n
}

// publishNames puts a set-up container's names on its overlay networks in
// etcd, for the other hosts' DNS. A failure is logged, not fatal: the
// container runs, and `netshim overlay sync` publishes them later.
func (e *Engine) publishNames(rec *state.Record) {
	for i := range rec.Attachments {
		a := &rec.Attachments[i]
		if a.Driver != ModeOverlay {
			continue
		}
		err := e.withCluster(func(cl *cluster.Client, l *state.HostLease) error {
			return cl.PublishNames(context.Background(), a.Network, l.Underlay, rec.ID, overlayNames(a), l.ID)
		})
		if err != nil {
			e.Log(rec.ID, rec.Name, "publish", 0, fmt.Errorf("names on overlay network %s not published (overlay sync will): %w", a.Network, err))
		}
	}
}

// withdrawNames removes a torn-down container's names from etcd; what
// fails is left to `netshim overlay sync`.
func (e *Engine) withdrawNames(rec *state.Record) {
	for _, a := range rec.Attachments {
		if a.Driver != ModeOverlay {
			continue
		}
		err := e.withCluster(func(cl *cluster.Client, l *state.HostLease) error {
			return cl.WithdrawNames(context.Background(), a.Network, l.Underlay, rec.ID)
		})
		if err != nil {
			e.Log(rec.ID, rec.Name, "withdraw", 0, fmt.Errorf("names on overlay network %s not withdrawn (overlay sync will): %w", a.Network, err))
		}
	}
}

func (e *Engine) withCluster(fn func(*cluster.Client, *state.HostLease) error) error {
	cl, err := e.clusterClient()
	if err != nil {
		return err
	}
	l, err := e.Store.GetHostLease()
	if err != nil {
		return err
	}
	if l == nil {
		return errors.New("this host holds no etcd lease")
	}
	return fn(cl, l)
}
