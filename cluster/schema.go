package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The keys, under the client's prefix:
//
//	networks/NAME                     Network
//	vnis/VNI                          NAME (one network per VNI)
//	subnets/NAME/10.200.1.0-24        Lease, on the holder's etcd lease
//	names/NAME/UNDERLAY/CONTAINER-ID  Names, on the holder's etcd lease

// Network is an overlay network's definition, the same for every host.
type Network struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	// Subnet is the network's; each host leases a HostPrefix of it.
	Subnet     netip.Prefix `json:"subnet"`
	HostPrefix int          `json:"host_prefix"`
	VNI        uint32       `json:"vni"`
	Created    time.Time    `json:"created"`
}

// Lease is one host's share of an overlay network: its subnet, and how
// the other hosts reach it (flannel's subnet lease).
type Lease struct {
	Subnet   netip.Prefix `json:"subnet"`
	Underlay netip.Addr   `json:"underlay"`
	VTEPMAC  string       `json:"vtep_mac"`
	// EtcdLease is the etcd lease the key lives on.
	EtcdLease int64 `json:"-"`
}

// Names are one container's names and addresses in an overlay network's
// DNS.
type Names struct {
	Names []string     `json:"names"`
	Addrs []netip.Addr `json:"addrs"`
}

// ErrExists says an overlay network of that name exists.
var ErrExists = errors.New("exists")

// ErrNoSubnet says every host subnet of an overlay network is leased.
var ErrNoSubnet = errors.New("no free host subnet")

func (c *Client) key(parts ...string) string { return c.Prefix + "/" + strings.Join(parts, "/") }

// subnetKey names a subnet as flannel does: 10.200.1.0-24.
func subnetKey(p netip.Prefix) string { return p.Addr().String() + "-" + strconv.Itoa(p.Bits()) }

// MaxVNI is the largest VXLAN network identifier.
const MaxVNI = 1<<24 - 1

// CreateNetwork stores n, with the lowest VNI no other network has, unless
// a network of its name exists (ErrExists) or its subnet overlaps
// another's.
func (c *Client) CreateNetwork(ctx context.Context, n Network) (Network, error) {
	for attempt := 0; attempt < 10; attempt++ {
		nets, err := c.Networks(ctx)
		if err != nil {
			return n, err
		}
		used := map[uint32]bool{}
		for _, o := range nets {
			if o.Name == n.Name {
				return n, fmt.Errorf("overlay network %s: %w", n.Name, ErrExists)
			}
			if o.Subnet.Overlaps(n.Subnet) {
				return n, fmt.Errorf("overlay network %s: subnet %s overlaps overlay network %s (%s)", n.Name, n.Subnet, o.Name, o.Subnet)
			}
			used[o.VNI] = true
		}
		n.VNI = 1
		for used[n.VNI] {
			n.VNI++
		}
		if n.VNI > MaxVNI {
			return n, fmt.Errorf("overlay network %s: no free VNI", n.Name)
		}
		value, err := json.Marshal(n)
		if err != nil {
			return n, err
		}
		netKey, vniKey := c.key("networks", n.Name), c.key("vnis", strconv.Itoa(int(n.VNI)))
		ok, err := c.Txn(ctx, []Op{Absent(netKey), Absent(vniKey)},
			[]Op{Put(netKey, value, 0), Put(vniKey, []byte(n.Name), 0)})
		if err != nil {
			return n, fmt.Errorf("create overlay network %s: %w", n.Name, err)
		}
		if ok {
			return n, nil
		}
		// Another host created a network meanwhile: look again.
	}
	return n, fmt.Errorf("create overlay network %s: too much contention", n.Name)
}

// GetNetwork returns overlay network name, or nil.
func (c *Client) GetNetwork(ctx context.Context, name string) (*Network, error) {
	kvs, err := c.Get(ctx, c.key("networks", name), false)
	if err != nil || len(kvs) == 0 {
		return nil, err
	}
	var n Network
	if err := json.Unmarshal(kvs[0].Value, &n); err != nil {
		return nil, fmt.Errorf("overlay network %s in etcd: %w", name, err)
	}
	return &n, nil
}

// Networks lists the overlay networks, by name.
func (c *Client) Networks(ctx context.Context) ([]Network, error) {
	out, err := getAll[Network](ctx, c, c.key("networks")+"/", false, nil)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// getAll reads every key under prefix as a T; fill, if set, completes
// each from its key. A value that does not decode fails the read, or, with
// lenient, comes out as T's zero value: where one bad key must not hide
// all the others (names), and a zero value is harmless (no names) or is
// put right by the caller (a sync republishes it).
func getAll[T any](ctx context.Context, c *Client, prefix string, lenient bool, fill func(KV, *T)) ([]T, error) {
	kvs, err := c.Get(ctx, prefix, true)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(kvs))
	for _, kv := range kvs {
		var v T
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			if !lenient {
				return nil, fmt.Errorf("%s in etcd: %w", kv.Key, err)
			}
			v = *new(T)
		}
		if fill != nil {
			fill(kv, &v)
		}
		out = append(out, v)
	}
	return out, nil
}

// RemoveNetwork deletes overlay network name and the hosts' leases of
// it, unless a container of any host is on it (has names published).
func (c *Client) RemoveNetwork(ctx context.Context, name string) error {
	n, err := c.GetNetwork(ctx, name)
	if err != nil {
		return err
	}
	if n == nil {
		return fmt.Errorf("network %s not found", name)
	}
	names, err := c.Get(ctx, c.key("names", name)+"/", true)
	if err != nil {
		return err
	}
	if len(names) > 0 {
		hosts := map[string]bool{}
		for _, kv := range names {
			parts := strings.Split(strings.TrimPrefix(kv.Key, c.key("names", name)+"/"), "/")
			hosts[parts[0]] = true
		}
		return fmt.Errorf("overlay network %s has active endpoints on hosts %s", name, strings.Join(slices.Sorted(maps.Keys(hosts)), ", "))
	}
	_, err = c.Txn(ctx, nil, []Op{Delete(c.key("networks", name), false), Delete(c.key("vnis", strconv.Itoa(int(n.VNI))), false),
		Delete(c.key("subnets", name)+"/", true)})
	return err
}

// Leases returns the hosts' leases of an overlay network.
func (c *Client) Leases(ctx context.Context, network string) ([]Lease, error) {
	return getAll(ctx, c, c.key("subnets", network)+"/", false, func(kv KV, l *Lease) {
		l.EtcdLease = kv.Lease
	})
}

// LeaseSubnet gives this host (underlay, with VTEP mac) a subnet of n on
// etcd lease id: the one it holds, else want if free, else the lowest
// free one. Every host leases at most one subnet of a network: the
// transaction makes concurrent calls of one host agree. It returns the
// subnet and every host's lease as read.
func (c *Client) LeaseSubnet(ctx context.Context, n *Network, underlay netip.Addr, mac net.HardwareAddr, id int64, want netip.Prefix) (netip.Prefix, []Lease, error) {
	mine := Lease{Underlay: underlay, VTEPMAC: mac.String()}
	for attempt := 0; attempt < 20; attempt++ {
		held, err := c.Leases(ctx, n.Name)
		if err != nil {
			return netip.Prefix{}, nil, err
		}
		taken := map[netip.Prefix]bool{}
		for _, l := range held {
			if l.Underlay == underlay && l.EtcdLease == id && l.VTEPMAC == mine.VTEPMAC {
				return l.Subnet, held, nil
			}
			if l.Underlay == underlay {
				// Held on a lease of ours that is gone, or with another
				// VTEP MAC: take it over.
				want = l.Subnet
				continue
			}
			taken[l.Subnet] = true
		}
		if !want.IsValid() || taken[want] || !n.Subnet.Contains(want.Addr()) || want.Bits() != n.HostPrefix {
			if want, err = firstFree(n, taken); err != nil {
				return want, nil, err
			}
		}
		mine.Subnet = want
		value, err := json.Marshal(mine)
		if err != nil {
			return want, nil, err
		}
		key := c.key("subnets", n.Name, subnetKey(want))
		var cond []Op
		if prev := find(held, want); prev != nil && prev.Underlay == underlay {
			cond = nil // ours already: overwrite with the new lease
		} else {
			cond = []Op{Absent(key)}
		}
		ok, err := c.Txn(ctx, cond, []Op{Put(key, value, id)})
		if err != nil {
			return want, nil, fmt.Errorf("lease a subnet of overlay network %s: %w", n.Name, err)
		}
		if ok {
			mine.EtcdLease = id
			others := slices.DeleteFunc(held, func(l Lease) bool { return l.Underlay == underlay })
			return want, append(others, mine), nil
		}
		want = netip.Prefix{}
	}
	return netip.Prefix{}, nil, fmt.Errorf("lease a subnet of overlay network %s: too much contention", n.Name)
}

func find(ls []Lease, p netip.Prefix) *Lease {
	for i := range ls {
		if ls[i].Subnet == p {
			return &ls[i]
		}
	}
	return nil
}

// firstFree is the lowest host subnet of n not taken.
func firstFree(n *Network, taken map[netip.Prefix]bool) (netip.Prefix, error) {
	p := netip.PrefixFrom(n.Subnet.Masked().Addr(), n.HostPrefix)
	for n.Subnet.Contains(p.Addr()) {
		if !taken[p] {
			return p, nil
		}
		next := p.Addr()
		for i := 0; i < 1<<(32-n.HostPrefix); i++ {
			next = next.Next()
		}
		if !next.IsValid() {
			break
		}
		p = netip.PrefixFrom(next, n.HostPrefix)
	}
	return netip.Prefix{}, fmt.Errorf("overlay network %s (%s): %w", n.Name, n.Subnet, ErrNoSubnet)
}

// PublishNames stores a container's names on this host's etcd lease.
func (c *Client) PublishNames(ctx context.Context, network string, underlay netip.Addr, id string, names Names, lease int64) error {
	value, err := json.Marshal(names)
	if err != nil {
		return err
	}
	_, err = c.Txn(ctx, nil, []Op{Put(c.key("names", network, underlay.String(), id), value, lease)})
	return err
}

// WithdrawNames removes a container's names.
func (c *Client) WithdrawNames(ctx context.Context, network string, underlay netip.Addr, id string) error {
	_, err := c.Txn(ctx, nil, []Op{Delete(c.key("names", network, underlay.String(), id), false)})
	return err
}

// HostNames returns the names this host published in network, by
// container id. A value that does not decode comes out empty, so that a
// sync, which compares, puts it right.
func (c *Client) HostNames(ctx context.Context, network string, underlay netip.Addr) (map[string]Names, error) {
	var ids []string
	names, err := getAll(ctx, c, c.key("names", network, underlay.String())+"/", true, func(kv KV, _ *Names) {
		ids = append(ids, kv.Key[strings.LastIndexByte(kv.Key, '/')+1:])
	})
	out := map[string]Names{}
	for i, n := range names {
		out[ids[i]] = n
	}
	return out, err
}

// AllNames returns every container's names in network, of every host; a
// value that does not decode gives none, and hides no other.
func (c *Client) AllNames(ctx context.Context, network string) ([]Names, error) {
	return getAll[Names](ctx, c, c.key("names", network)+"/", true, nil)
}

// WatchPrefix is the prefix Watch needs to see every change of leases and
// names.
func (c *Client) WatchPrefix() string { return c.Prefix + "/" }

// NameCache returns a lookup of an overlay network's names of every host
// (lower-case FQDN -> addresses), read from etcd at most once per fresh;
// while etcd does not answer, the last names read are kept.
func (c *Client) NameCache(fresh time.Duration) func(network string) map[string][]netip.Addr {
	type entry struct {
		names map[string][]netip.Addr
		read  time.Time
	}
	var mu sync.Mutex
	cache := map[string]*entry{}
	return func(network string) map[string][]netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		e := cache[network]
		if e != nil && time.Since(e.read) < fresh {
			return e.names
		}
		if e == nil {
			e = &entry{}
			cache[network] = e
		}
		e.read = time.Now()
		all, err := c.AllNames(context.Background(), network)
		if err != nil {
			return e.names
		}
		e.names = map[string][]netip.Addr{}
		for _, n := range all {
			for _, name := range n.Names {
				fq := strings.ToLower(strings.TrimSuffix(name, ".")) + "."
				e.names[fq] = append(e.names[fq], n.Addrs...)
			}
		}
		return e.names
	}
}
