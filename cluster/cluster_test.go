package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/netshim/netshim/config"
)

// startEtcd runs a real etcd server (Debian's etcd-server) on free ports
// of 127.0.0.1 for the test, and returns a client of it.
func startEtcd(t *testing.T) *Client {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Fatalf("etcd is not installed (Debian's etcd-server; make test installs it): %v", err)
	}
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", port()), fmt.Sprintf("http://127.0.0.1:%d", port())
	cmd := exec.Command("etcd", "--data-dir", t.TempDir(), "--name", "t", "--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "t="+peer)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c, err := New(config.Cluster{Endpoints: []string{client}, Timeout: 2 * time.Second, Prefix: "/test"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.Get(context.Background(), "/", false); err == nil {
			return c
		} else if time.Now().After(deadline) {
			t.Fatalf("etcd did not answer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestNetworks(t *testing.T) {
	c := startEtcd(t)
	ctx := context.Background()
	a, err := c.CreateNetwork(ctx, Network{Name: "a", ID: "1", Subnet: netip.MustParsePrefix("10.200.0.0/16"), HostPrefix: 24})
	if err != nil || a.VNI != 1 {
		t.Fatalf("first network: %+v %v", a, err)
	}
	b, err := c.CreateNetwork(ctx, Network{Name: "b", ID: "2", Subnet: netip.MustParsePrefix("10.201.0.0/16"), HostPrefix: 24})
	if err != nil || b.VNI != 2 {
		t.Fatalf("second network: %+v %v", b, err)
	}
	if _, err := c.CreateNetwork(ctx, Network{Name: "a", Subnet: netip.MustParsePrefix("10.9.0.0/16")}); !errors.Is(err, ErrExists) {
		t.Errorf("a second network a: %v", err)
	}
	if _, err := c.CreateNetwork(ctx, Network{Name: "c", Subnet: netip.MustParsePrefix("10.200.128.0/17")}); err == nil {
		t.Error("an overlapping network was created")
	}
	got, err := c.GetNetwork(ctx, "b")
	if err != nil || got == nil || got.Subnet != b.Subnet || got.VNI != 2 {
		t.Fatalf("get b: %+v %v", got, err)
	}
	if err := c.RemoveNetwork(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	// a's VNI is free again.
	d, err := c.CreateNetwork(ctx, Network{Name: "d", ID: "4", Subnet: netip.MustParsePrefix("10.202.0.0/16"), HostPrefix: 24})
	if err != nil || d.VNI != 1 {
		t.Fatalf("network after a removal: %+v %v", d, err)
	}
	nets, err := c.Networks(ctx)
	if err != nil || len(nets) != 2 || nets[0].Name != "b" || nets[1].Name != "d" {
		t.Fatalf("networks %+v %v", nets, err)
	}
}

func TestLeases(t *testing.T) {
	c := startEtcd(t)
	ctx := context.Background()
	n, err := c.CreateNetwork(ctx, Network{Name: "ov", ID: "1", Subnet: netip.MustParsePrefix("10.200.0.0/22"), HostPrefix: 24})
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	// Four hosts at once, each calling twice at once: one subnet each.
	var mu sync.Mutex
	got := map[string]netip.Prefix{}
	var wg sync.WaitGroup
	leases := map[int]int64{}
	for h := 1; h <= 4; h++ {
		id, err := c.Grant(ctx, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		leases[h] = id
		for call := 0; call < 2; call++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				underlay := netip.AddrFrom4([4]byte{192, 0, 2, byte(h)})
				p, _, err := c.LeaseSubnet(ctx, &n, underlay, mac, id, netip.Prefix{})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("host %d: %v", h, err)
					return
				}
				key := underlay.String()
				if prev, ok := got[key]; ok && prev != p {
					t.Errorf("host %d got %s and %s", h, prev, p)
				}
				got[key] = p
			}()
		}
	}
	wg.Wait()
	owners := map[netip.Prefix]string{}
	for h, p := range got {
		if o, dup := owners[p]; dup {
			t.Fatalf("hosts %s and %s share %s", o, h, p)
		}
		owners[p] = h
	}
	// The network has no fifth /24.
	id5, _ := c.Grant(ctx, time.Minute)
	if _, _, err := c.LeaseSubnet(ctx, &n, netip.MustParseAddr("192.0.2.5"), mac, id5, netip.Prefix{}); !errors.Is(err, ErrNoSubnet) {
		t.Fatalf("a fifth host: %v", err)
	}
	// Host 1 leaves: its lease revoked, its subnet is free for host 5.
	if err := c.Revoke(ctx, leases[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KeepAlive(ctx, leases[1]); !errors.Is(err, ErrLeaseGone) {
		t.Fatalf("keepalive of a revoked lease: %v", err)
	}
	p5, all, err := c.LeaseSubnet(ctx, &n, netip.MustParseAddr("192.0.2.5"), mac, id5, netip.Prefix{})
	if err != nil || p5 != got["192.0.2.1"] || len(all) != 4 {
		t.Fatalf("host 5 after host 1 left: %s (want %s), %d leases, %v", p5, got["192.0.2.1"], len(all), err)
	}
	// Host 2 comes back on a new lease: it keeps its subnet.
	id2, _ := c.Grant(ctx, time.Minute)
	if p, _, err := c.LeaseSubnet(ctx, &n, netip.MustParseAddr("192.0.2.2"), mac, id2, got["192.0.2.2"]); err != nil || p != got["192.0.2.2"] {
		t.Fatalf("host 2 on a new lease: %s %v", p, err)
	}
	if ttl, err := c.KeepAlive(ctx, id2); err != nil || ttl <= 0 {
		t.Fatalf("keepalive: %s %v", ttl, err)
	}
	if err := c.RemoveNetwork(ctx, "ov"); err != nil {
		t.Fatalf("remove a network without names: %v", err)
	}
}

func TestNames(t *testing.T) {
	c := startEtcd(t)
	ctx := context.Background()
	if _, err := c.CreateNetwork(ctx, Network{Name: "ov", ID: "1", Subnet: netip.MustParsePrefix("10.200.0.0/16"), HostPrefix: 24}); err != nil {
		t.Fatal(err)
	}
	id, _ := c.Grant(ctx, time.Minute)
	h1, h2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	events := make(chan struct{}, 16)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go c.Watch(wctx, c.WatchPrefix(), func() { events <- struct{}{} })
	select {
	case <-events: // in place
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not say it was in place")
	}
	if err := c.PublishNames(ctx, "ov", h1, "c1", Names{Names: []string{"web", "Web-Alias"}, Addrs: []netip.Addr{netip.MustParseAddr("10.200.0.2")}}, id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not see a name published")
	}
	c.PublishNames(ctx, "ov", h2, "c2", Names{Names: []string{"db"}, Addrs: []netip.Addr{netip.MustParseAddr("10.200.1.2")}}, id)
	// A value that does not decode hides no other name, and reads as
	// published empty, so that its host's sync puts it right.
	if _, err := c.Txn(ctx, nil, []Op{Put(c.key("names", "ov", h2.String(), "c3"), []byte("{not json"), id)}); err != nil {
		t.Fatal(err)
	}
	lookup := c.NameCache(0)
	names := lookup("ov")
	if a := names["web-alias."]; len(a) != 1 || a[0] != netip.MustParseAddr("10.200.0.2") || len(names["db."]) != 1 {
		t.Fatalf("names %v", names)
	}
	if theirs, err := c.HostNames(ctx, "ov", h2); err != nil || len(theirs) != 2 || theirs["c2"].Names[0] != "db" {
		t.Fatalf("host 2's names %v %v", theirs, err)
	} else if bad, ok := theirs["c3"]; !ok || len(bad.Names)+len(bad.Addrs) != 0 {
		t.Fatalf("the undecodable names of c3 read as %v (present %v)", bad, ok)
	}
	if mine, err := c.HostNames(ctx, "ov", h1); err != nil || len(mine) != 1 || mine["c1"].Names[0] != "web" {
		t.Fatalf("host 1's names %v %v", mine, err)
	}
	if err := c.RemoveNetwork(ctx, "ov"); err == nil {
		t.Fatal("a network with containers was removed")
	}
	c.WithdrawNames(ctx, "ov", h1, "c1")
	if names := lookup("ov"); len(names["web."]) != 0 {
		t.Fatalf("withdrawn name still known: %v", names)
	}
	// A lease that ends takes its names.
	c.Revoke(ctx, id)
	if names := lookup("ov"); len(names) != 0 {
		t.Fatalf("names outlived their lease: %v", names)
	}
}

func TestUnreachable(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	c, _ := New(config.Cluster{Endpoints: []string{"http://" + addr}, Timeout: 500 * time.Millisecond, Prefix: "/x"})
	_, err := c.GetNetwork(context.Background(), "ov")
	var ue *UnreachableError
	if !errors.As(err, &ue) || ue.Endpoints[0] != "http://"+addr {
		t.Fatalf("want an UnreachableError, got %v", err)
	}
	// A lookup keeps answering (nothing) while etcd is away.
	if names := c.NameCache(time.Second)("ov"); len(names) != 0 {
		t.Fatalf("names from nowhere: %v", names)
	}
}
