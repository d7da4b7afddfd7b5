package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// overlayResult is an overlay network's container start and stop against
// a user bridge network's on the same host, the etcd requests each makes,
// and ping round trips between containers on one host and across two.
type overlayResult struct {
	overlay, bridge           sample
	startReqs, stopReqs       float64
	sameHost, crossHost       time.Duration
	sameHostP90, crossHostP90 time.Duration
}

const benchEtcd = "http://192.0.2.254:2379"

// underlayLinkPrefix names the bench's ends of the hosts' underlay links.
const underlayLinkPrefix = "ul-"

// overlayRuns makes two hosts (netns on an underlay bridge, TEST-NET
// addresses) and an etcd server (Debian's etcd-server) in the bench's
// netns, and times hooks run in host 1's netns, as a runtime there would
// run them: rounds of n containers on an overlay network and on a user
// bridge network, alternately, until runs samples each.
func overlayRuns(netshim, work string, n, runs int) (*overlayResult, error) {
	if _, err := exec.LookPath("etcd"); err != nil {
		return nil, fmt.Errorf("etcd is not installed (Debian's etcd-server)")
	}
	dir := filepath.Join(work, "overlay")
	os.MkdirAll(dir, 0o755)
	for _, c := range [][]string{
		{"link", "add", "bul0", "address", "02:00:c0:00:02:fe", "type", "bridge"},
		{"addr", "add", "192.0.2.254/24", "dev", "bul0"},
		{"link", "set", "bul0", "up"},
	} {
		if err := run("ip", c...); err != nil {
			return nil, err
		}
	}
	defer run("ip", "link", "del", "bul0")
	etcd := exec.Command("etcd", "--data-dir", filepath.Join(dir, "etcd"), "--name", "bench",
		"--listen-client-urls", benchEtcd, "--advertise-client-urls", benchEtcd,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "bench=http://127.0.0.1:2380")
	if err := etcd.Start(); err != nil {
		return nil, err
	}
	defer func() { etcd.Process.Kill(); etcd.Wait() }()
	hosts := []*benchHost{{name: "bh1", addr: "192.0.2.1"}, {name: "bh2", addr: "192.0.2.2"}}
	for _, h := range hosts {
		if err := h.make(netshim, dir); err != nil {
			return nil, err
		}
		defer h.remove()
	}
	for k := 0; ; k++ {
		if _, err := http.Get(benchEtcd + "/version"); err == nil {
			break
		} else if k == 200 {
			return nil, fmt.Errorf("etcd did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	h1, h2 := hosts[0], hosts[1]

	if err := h1.cli("network", "create", "-d", "overlay", "--subnet", "10.210.0.0/16", "bench-ov"); err != nil {
		return nil, err
	}
	// Host 2 holds a subnet and has a container: host 1 has a peer.
	peer, err := spawn(1, filepath.Join(dir, "h2"))
	if err != nil {
		return nil, err
	}
	defer reap(peer)
	if err := h2.start(peer[0], "bench-ov"); err != nil {
		return nil, err
	}
	defer h2.stop(peer[0])

	r := &overlayResult{}
	var reqs [2]int
	for len(r.overlay.setup) < runs {
		for _, network := range []string{"bench-ov", "bench-net"} {
			cs, err := spawn(n, filepath.Join(dir, network))
			if err != nil {
				return nil, err
			}
			s := &r.bridge
			if network == "bench-ov" {
				s = &r.overlay
			}
			before := etcdRequests()
			for _, c := range cs {
				start := time.Now()
				if err := h1.start(c, network); err != nil {
					reap(cs)
					return nil, err
				}
				s.setup = append(s.setup, time.Since(start))
			}
			between := etcdRequests()
			for _, c := range cs {
				start := time.Now()
				if err := h1.stop(c); err != nil {
					reap(cs)
					return nil, err
				}
				s.teardown = append(s.teardown, time.Since(start))
			}
			if network == "bench-ov" {
				reqs[0] += between - before
				reqs[1] += etcdRequests() - between
			}
			reap(cs)
		}
	}
	r.startReqs, r.stopReqs = float64(reqs[0])/float64(len(r.overlay.setup)), float64(reqs[1])/float64(len(r.overlay.setup))
	// Round trips: two containers on host 1, one on host 2.
	cs, err := spawn(2, filepath.Join(dir, "ping"))
	if err != nil {
		return nil, err
	}
	defer reap(cs)
	for _, c := range cs {
		if err := h1.start(c, "bench-ov"); err != nil {
			return nil, err
		}
		defer h1.stop(c)
	}
	for _, h := range hosts {
		if err := h.cli("overlay", "sync"); err != nil {
			return nil, err
		}
	}
	same, err := h1.addrOf(cs[1].id)
	if err != nil {
		return nil, err
	}
	cross, err := h2.addrOf(peer[0].id)
	if err != nil {
		return nil, err
	}
	if r.sameHost, r.sameHostP90, err = pingFrom(cs[0], same); err != nil {
		return nil, err
	}
	if r.crossHost, r.crossHostP90, err = pingFrom(cs[0], cross); err != nil {
		return nil, err
	}
	return r, nil
}

// benchHost is a host of the overlay bench: a netns on the underlay with
// its own netshim config and state.
type benchHost struct {
	name, addr, bin, config, state string
}

func (h *benchHost) make(bin, dir string) error {
	h.bin, h.config, h.state = bin, filepath.Join(dir, h.name+".toml"), filepath.Join("/run", "netshim-bench-"+h.name)
	for _, c := range [][]string{
		{"netns", "add", h.name},
		{"link", "add", underlayLinkPrefix + h.name, "type", "veth", "peer", "name", "eth0", "netns", h.name},
		{"link", "set", underlayLinkPrefix + h.name, "master", "bul0", "up"},
		{"-n", h.name, "addr", "add", h.addr + "/24", "dev", "eth0"},
		{"-n", h.name, "link", "set", "eth0", "up"},
		{"-n", h.name, "link", "set", "lo", "up"},
		{"-n", h.name, "route", "add", "default", "via", "192.0.2.254"},
	} {
		if err := run("ip", c...); err != nil {
			return err
		}
	}
	config := fmt.Sprintf("firewall = \"nftables\"\ndata_dir = %q\n[networks.bench-net]\nsubnet = \"10.99.0.0/16\"\n[cluster]\netcd_endpoints = [%q]\n",
		filepath.Join(dir, h.name+"-data"), benchEtcd)
	return os.WriteFile(h.config, []byte(config), 0o644)
}

func (h *benchHost) remove() {
	run("ip", "netns", "del", h.name)
	os.RemoveAll(h.state)
}

// inHost runs fn on a thread in the host's netns: what it starts is a
// process of that host, as a runtime's hook there would be.
func (h *benchHost) inHost(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	ns, err := netns.GetFromName(h.name)
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return err
	}
	defer netns.Set(orig)
	return fn()
}

func (h *benchHost) cli(args ...string) error {
	return h.inHost(func() error {
		return run(h.bin, append([]string{"--config", h.config, "--state-dir", h.state}, args...)...)
	})
}

func (h *benchHost) hook(c *container, stage, status string) error {
	return h.inHost(func() error {
		return runHook([]string{h.bin, "--config", h.config, "--state-dir", h.state, "hook", stage},
			fmt.Sprintf(`{"ociVersion":"1.0.2","id":%q,"status":%q,"pid":%d,"bundle":%q}`, c.id, status, c.pid, c.dir))
	})
}

func (h *benchHost) start(c *container, network string) error {
	spec := fmt.Sprintf(`{"ociVersion":"1.0.2","hostname":%q,"root":{"path":"rootfs"},"annotations":{"netshim/network":%q}}`, c.id, network)
	if err := os.WriteFile(filepath.Join(c.dir, "config.json"), []byte(spec), 0o644); err != nil {
		return err
	}
	return h.hook(c, "createRuntime", "creating")
}

func (h *benchHost) stop(c *container) error { return h.hook(c, "poststop", "stopped") }

// addr is a container's address, from `netshim inspect`.
func (h *benchHost) addrOf(id string) (string, error) {
	var out []byte
	err := h.inHost(func() error {
		var err error
		out, err = exec.Command(h.bin, "--config", h.config, "--state-dir", h.state, "inspect", id).Output()
		return err
	})
	if err != nil {
		return "", err
	}
	var info struct{ IPAddress string }
	if err := json.Unmarshal(out, &info); err != nil || info.IPAddress == "" {
		return "", fmt.Errorf("inspect %s: %v %s", id, err, out)
	}
	return info.IPAddress, nil
}

// etcdRequests is how many requests etcd has begun to serve (its gRPC
// server's count, which its JSON API goes through), watches and health
// checks aside.
func etcdRequests() int {
	resp, err := http.Get(benchEtcd + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	total := 0
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "grpc_server_started_total{") || strings.Contains(line, `grpc_method="Watch"`) || strings.Contains(line, "Health") {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		total += int(v)
	}
	return total
}

var rttRe = regexp.MustCompile(`time=([0-9.]+) ms`)

// pingFrom pings addr 200 times from c's netns, and returns the round
// trips' p50 and p90.
func pingFrom(c *container, addr string) (time.Duration, time.Duration, error) {
	out, err := exec.Command("nsenter", "--net="+c.netns(), "ping", "-c", "200", "-i", "0.01", addr).CombinedOutput()
	if err != nil {
		diag, _ := exec.Command("nsenter", "--net="+c.netns(), "sh", "-c", "ip -br addr; ip route; ip neigh").CombinedOutput()
		return 0, 0, fmt.Errorf("ping %s: %v: %s\n%s", addr, err, out, diag)
	}
	var rtts []time.Duration
	for _, m := range rttRe.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		rtts = append(rtts, time.Duration(v*float64(time.Millisecond)))
	}
	if len(rtts) == 0 {
		return 0, 0, fmt.Errorf("ping %s: no replies: %s", addr, out)
	}
	return pct(rtts, .5), pct(rtts, .9), nil
}

// overlayLine reports overlayRuns.
func overlayLine(r *overlayResult, n int) string {
	return fmt.Sprintf("\nOverlay network (two hosts, each a netns on an underlay bridge; etcd 3.4 on the underlay; hooks run in host 1's netns,\n"+
		"rounds of %d containers on the overlay and on a user bridge network of the same host, alternately, %d each; p50 / p90 ms):\n"+
		"overlay setup %s / %s, teardown %s / %s; user bridge network setup %s / %s, teardown %s / %s.\n"+
		"etcd requests per container start %.1f, per stop %.1f. Ping round trip (p50 / p90 of 200, ms): same host %.3f / %.3f,\n"+
		"across hosts (VXLAN) %.3f / %.3f.\n",
		n, len(r.overlay.setup),
		ms(pct(r.overlay.setup, .5)), ms(pct(r.overlay.setup, .9)), ms(pct(r.overlay.teardown, .5)), ms(pct(r.overlay.teardown, .9)),
		ms(pct(r.bridge.setup, .5)), ms(pct(r.bridge.setup, .9)), ms(pct(r.bridge.teardown, .5)), ms(pct(r.bridge.teardown, .9)),
		r.startReqs, r.stopReqs,
		float64(r.sameHost)/1e6, float64(r.sameHostP90)/1e6, float64(r.crossHost)/1e6, float64(r.crossHostP90)/1e6)
}
