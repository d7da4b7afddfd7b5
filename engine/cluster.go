package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/cluster"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// DefaultHostPrefix is the size of each host's share of an overlay network
// (flannel's default).
const DefaultHostPrefix = 24

// createOverlay stores an overlay network's definition in etcd, for every
// host; hosts lease their share of it when their first container joins.
func (e *Engine) createOverlay(req NetworkRequest) (*state.NetworkDef, error) {
	cl, err := e.clusterClient()
	if err != nil {
		return nil, err
	}
	if local, err := e.isLocalNetwork(req.Name); err != nil {
		return nil, err
	} else if local {
		return nil, fmt.Errorf("network %s already exists", req.Name)
	}
	switch {
	case req.Subnet == "":
		return nil, errors.New("--subnet: an overlay network needs one (each host leases a --host-prefix of it)")
	case req.IPv6 || req.Subnet6 != "":
		return nil, errors.New("--ipv6: overlay networks are IPv4 only")
	case req.Gateway != "" || req.IPRange != "" || req.Internal || req.Bridge != "" || req.MTU != 0 || len(req.Options) > 0:
		return nil, errors.New("--driver overlay takes --subnet and --host-prefix only (each host's gateway is its subnet's first address, the MTU the underlay's less 50)")
	}
	subnet, err := netip.ParsePrefix(req.Subnet)
	if err != nil || !subnet.Addr().Is4() {
		return nil, fmt.Errorf("--subnet %q: not an IPv4 CIDR", req.Subnet)
	}
	hp := req.HostPrefix
	if hp == 0 {
		hp = max(DefaultHostPrefix, subnet.Bits()+1)
	}
	if hp <= subnet.Bits() || hp > 29 {
		return nil, fmt.Errorf("--host-prefix %d: must be longer than the subnet's /%d and at most /29", hp, subnet.Bits())
	}
	id := make([]byte, 32)
	rand.Read(id)
	n, err := cl.CreateNetwork(context.Background(), cluster.Network{Name: req.Name, ID: hex.EncodeToString(id),
		Subnet: subnet.Masked(), HostPrefix: hp, Created: time.Now().UTC()})
	if err != nil {
		if errors.Is(err, cluster.ErrExists) {
			return nil, fmt.Errorf("network %s already exists", req.Name)
		}
		return nil, err
	}
	return &state.NetworkDef{Name: n.Name, ID: n.ID, Created: n.Created}, nil
}

// OverlayNetworks lists the cluster's overlay networks (none without a
// cluster).
func (e *Engine) OverlayNetworks() ([]cluster.Network, error) {
	if !e.Config.Cluster.Enabled() {
		return nil, nil
	}
	cl, err := e.clusterClient()
	if err != nil {
		return nil, err
	}
	return cl.Networks(context.Background())
}

// removeOverlay deletes an overlay network from etcd, unless a container
// of any host is on it, and what this host made for it; the other hosts
// forget it at their next sync. The caller holds the lock.
func (e *Engine) removeOverlay(name string) error {
	cl, err := e.clusterClient()
	if err != nil {
		return err
	}
	if err := cl.RemoveNetwork(context.Background(), name); err != nil {
		return err
	}
	ns, err := e.Store.GetNet(name)
	if err != nil || ns == nil || ns.Overlay == nil {
		return err
	}
	return e.forgetOverlay(ns)
}

// forgetOverlay removes this host's bridge, VXLAN device and state of an
// overlay network that no longer exists, if no container is on it here.
// The caller holds the lock.
func (e *Engine) forgetOverlay(ns *state.Net) error {
	if inUse, err := ns.InUse(); err != nil || inUse {
		return err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	for _, link := range []string{ns.Overlay.VXLAN, ns.Bridge} {
		if link == "" {
			continue
		}
		if err := netsetup.DeleteLink(h, link); err != nil {
			return err
		}
	}
	return e.Store.DeleteNet(ns.Name)
}

// SyncOverlays brings this host in line with etcd: it renews the host's
// lease (or takes a new one and its subnets back), installs each overlay
// network's peers, and publishes the names of its containers there (and
// withdraws those of containers gone). It reports what it changed.
func (e *Engine) SyncOverlays() ([]string, error) {
	cl, err := e.clusterClient()
	if err != nil {
		return nil, err
	}
	underlay, err := e.underlay()
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	prev, err := e.Store.GetHostLease()
	if err != nil {
		return nil, err
	}
	lease, err := e.hostLease(ctx, cl, underlay.Addr)
	if err != nil {
		return nil, err
	}
	var report []string
	if prev == nil || prev.ID != lease.ID {
		report = append(report, fmt.Sprintf("etcd lease %x taken, until %s", lease.ID, lease.Expires.Format(time.RFC3339)))
	}
	names, err := e.Store.NetNames()
	if err != nil {
		return report, err
	}
	recs, errs := e.Store.List()
	var all []error
	all = append(all, errs...)
	for _, name := range names {
		ns, err := e.Store.GetNet(name)
		if err != nil || ns == nil || ns.Overlay == nil {
			all = append(all, err)
			continue
		}
		lines, err := e.syncOverlay(ctx, cl, underlay, lease, ns, recs)
		report = append(report, lines...)
		all = append(all, err)
	}
	return report, errors.Join(all...)
}

// syncOverlay is SyncOverlays for one network.
func (e *Engine) syncOverlay(ctx context.Context, cl *cluster.Client, underlay netsetup.Underlay, lease *state.HostLease, ns *state.Net, recs []*state.Record) ([]string, error) {
	var report []string
	o := ns.Overlay
	if def, err := cl.GetNetwork(ctx, ns.Name); err != nil {
		return nil, err
	} else if def == nil || def.ID != o.ID {
		err := e.locked(func() error { return e.forgetOverlay(ns) })
		return []string{fmt.Sprintf("overlay network %s: removed from the cluster; forgotten here", ns.Name)}, err
	}
	n := recordedOverlay(ns)
	subnet, leases, err := cl.LeaseSubnet(ctx, &n, underlay.Addr, netsetup.VTEPMAC(underlay.Addr, o.VNI), lease.ID, ns.Subnet)
	if err != nil {
		return nil, err
	}
	peers, fp := peersOf(leases, underlay.Addr)
	err = e.locked(func() error {
		ns, err := e.Store.GetNet(ns.Name)
		if err != nil || ns == nil || ns.Overlay == nil {
			return err
		}
		inUse, err := ns.InUse()
		if err != nil {
			return err
		}
		if subnet != ns.Subnet {
			if inUse {
				return fmt.Errorf("overlay network %s: this host's subnet %s went to another host while its lease was lost; stop its containers on this host", ns.Name, ns.Subnet)
			}
			report = append(report, fmt.Sprintf("overlay network %s: subnet %s leased", ns.Name, subnet))
			ns.Subnet, ns.Gateway, ns.Low = subnet, subnet.Masked().Addr().Next(), netip.Addr{}
		}
		if !inUse {
			ns.Overlay.Peers = peers
			return e.Store.PutNet(ns)
		}
		if fp != ns.Overlay.Fingerprint {
			report = append(report, fmt.Sprintf("overlay network %s: %d peers installed", ns.Name, len(peers)))
		}
		return e.ensureOverlay(ns, underlay, peers, fp)
	})
	if err != nil {
		return report, err
	}
	// The names: what this host's records say, no more.
	published, err := cl.HostNames(ctx, ns.Name, underlay.Addr)
	if err != nil {
		return report, err
	}
	want := map[string]cluster.Names{}
	for _, r := range recs {
		if r.Phase != state.PhaseReady {
			continue
		}
		for i := range r.Attachments {
			if a := &r.Attachments[i]; a.Driver == ModeOverlay && a.Network == ns.Name {
				want[r.ID] = overlayNames(a)
			}
		}
	}
	for id, names := range want {
		if got, ok := published[id]; ok && fmt.Sprint(got) == fmt.Sprint(names) {
			continue
		}
		if err := cl.PublishNames(ctx, ns.Name, underlay.Addr, id, names, lease.ID); err != nil {
			return report, err
		}
		report = append(report, fmt.Sprintf("overlay network %s: names of %s published", ns.Name, ShortID(id)))
	}
	for id := range published {
		if _, ok := want[id]; !ok {
			if err := cl.WithdrawNames(ctx, ns.Name, underlay.Addr, id); err != nil {
				return report, err
			}
			report = append(report, fmt.Sprintf("overlay network %s: names of %s withdrawn", ns.Name, ShortID(id)))
		}
	}
	return report, nil
}

// locked runs fn under the host lock.
func (e *Engine) locked(fn func() error) error {
	lock, err := e.lock()
	if err != nil {
		return err
	}
	defer lock.Unlock()
	return fn()
}

// WatchOverlays syncs whenever its etcd watch of the overlay keys is
// (re-)established, whenever they change, a second after a sync failed,
// and at least every third of the lease's TTL (which renews it), until ctx
// ends. Each sync's report goes to logf.
func (e *Engine) WatchOverlays(ctx context.Context, logf func(string)) error {
	cl, err := e.clusterClient()
	if err != nil {
		return err
	}
	changed := make(chan struct{}, 1)
	go func() {
		for ctx.Err() == nil {
			err := cl.Watch(ctx, cl.WatchPrefix(), func() {
				select {
				case changed <- struct{}{}:
				default:
				}
			})
			if ctx.Err() == nil {
				logf(fmt.Sprintf("watch: %v; again in a second", err))
				time.Sleep(time.Second)
			}
		}
	}()
	renew := time.NewTicker(max(e.Config.Cluster.LeaseTTL/3, time.Second))
	defer renew.Stop()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-renew.C:
		case <-retry:
		}
		report, err := e.SyncOverlays()
		for _, l := range report {
			logf(l)
		}
		retry = nil
		if err != nil {
			logf(fmt.Sprintf("sync: %v", err))
			retry = time.After(time.Second)
		}
	}
}

// clusterChecks are `netshim doctor`'s lines about the cluster: etcd, the
// underlay, this host's lease, and each overlay network's peers as etcd
// has them against what is installed.
func (e *Engine) clusterChecks() []Check {
	if !e.Config.Cluster.Enabled() {
		return []Check{{"cluster", true, "no [cluster] in the config: overlay networks are off"}}
	}
	var out []Check
	cl, err := e.clusterClient()
	if err != nil {
		return []Check{{"cluster", false, err.Error()}}
	}
	ctx := context.Background()
	nets, err := cl.Networks(ctx)
	if err != nil {
		out = append(out, Check{"etcd", false, err.Error()})
	} else {
		out = append(out, Check{"etcd", true, fmt.Sprintf("%v answers; %d overlay networks", cl.Endpoints(), len(nets))})
	}
	underlay, uerr := e.underlay()
	if uerr != nil {
		out = append(out, Check{"underlay", false, uerr.Error()})
	} else {
		out = append(out, Check{"underlay", true, fmt.Sprintf("%s %s, mtu %d (overlay mtu %d); VXLAN on udp %d",
			underlay.Name, underlay.Addr, underlay.MTU, underlay.MTU-netsetup.VXLANOverhead, netsetup.VXLANPort)})
	}
	lease, lerr := e.Store.GetHostLease()
	switch {
	case lerr != nil:
		out = append(out, Check{"host lease", false, lerr.Error()})
	case lease == nil:
		out = append(out, Check{"host lease", true, "none yet: the first container on an overlay network (or `netshim overlay sync`) takes one"})
	case err != nil:
		out = append(out, Check{"host lease", time.Now().Before(lease.Expires), fmt.Sprintf("%x, until %s by this host's last renewal (etcd unreachable)", lease.ID, lease.Expires.Format(time.RFC3339))})
	default:
		ttl, terr := cl.TimeToLive(ctx, lease.ID)
		if terr != nil {
			out = append(out, Check{"host lease", false, fmt.Sprintf("%x: %v; `netshim overlay sync` takes a new one", lease.ID, terr)})
		} else {
			out = append(out, Check{"host lease", true, fmt.Sprintf("%x, expires in %s unless renewed", lease.ID, ttl)})
		}
	}
	names, serr := e.Store.NetNames()
	if serr != nil {
		return append(out, Check{"overlay networks", false, serr.Error()})
	}
	for _, name := range names {
		ns, serr := e.Store.GetNet(name)
		if serr != nil || ns == nil || ns.Overlay == nil {
			continue
		}
		out = append(out, e.overlayCheck(ctx, cl, ns, underlay, err == nil && uerr == nil))
	}
	return out
}

// overlayCheck compares an overlay network's peers in etcd (online) with
// those installed on this host.
func (e *Engine) overlayCheck(ctx context.Context, cl *cluster.Client, ns *state.Net, underlay netsetup.Underlay, online bool) Check {
	name := "overlay " + ns.Name
	inUse, err := ns.InUse()
	if err != nil {
		return Check{name, false, err.Error()}
	}
	head := fmt.Sprintf("this host %s (vni %d)", ns.Subnet, ns.Overlay.VNI)
	if !inUse {
		return Check{name, true, head + "; no container here: peers are installed with the next one"}
	}
	if !online {
		return Check{name, true, fmt.Sprintf("%s; %d peers installed (etcd not asked)", head, len(ns.Overlay.Peers))}
	}
	leases, err := cl.Leases(ctx, ns.Name)
	if err != nil {
		return Check{name, false, err.Error()}
	}
	peers, _ := peersOf(leases, underlay.Addr)
	installed := map[state.Peer]bool{}
	for _, p := range ns.Overlay.Peers {
		installed[p] = true
	}
	var lines []string
	ok := true
	for _, p := range peers {
		status := "installed"
		if !installed[p] {
			status, ok = "NOT installed", false
		}
		lines = append(lines, fmt.Sprintf("%s (%s) %s", p.Underlay, p.Subnet, status))
		delete(installed, p)
	}
	for p := range installed {
		ok = false
		lines = append(lines, fmt.Sprintf("%s (%s) installed but gone from etcd", p.Underlay, p.Subnet))
	}
	detail := fmt.Sprintf("%s; %d peers: %s", head, len(peers), strings.Join(lines, ", "))
	if !ok {
		detail += "; run `netshim overlay sync`"
	}
	return Check{name, ok, detail}
}
