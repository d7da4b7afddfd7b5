package test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/netshim/netshim/internal/sandbox"
)

// responderPID is the pid of network's DNS responder, as its state
// records it.
func (h *host) responderPID(network string) int {
	h.t.Helper()
	data, err := os.ReadFile(filepath.Join(h.stateDir, "networks", network+".json"))
	if err != nil {
		h.t.Fatal(err)
	}
	var st struct{ DNS *struct{ PID int } }
	if err := json.Unmarshal(data, &st); err != nil || st.DNS == nil {
		h.t.Fatalf("no responder of %s in its state: %v\n%s", network, err, data)
	}
	return st.DNS.PID
}

// rssKiB is a process's resident set, in KiB.
func rssKiB(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// The responders answer only their networks' containers and the host, stay
// up under a flood, answer as resolvers expect (truncation, NXDOMAIN, EDNS)
// for glibc, musl and Go, remember a dead upstream, and are started again
// when they die.
func TestDNS(t *testing.T) {
	// The musl clients are built before the sandbox, which has no way out
	// to fetch Debian 13's musl.
	if os.Getenv(envMusl123) == "" && os.Geteuid() == 0 {
		os.Setenv(envMusl123, muslDebian12(t))
		os.Setenv(envMusl125, muslDebian13(t))
	}
	if !sandbox.Enter(t) {
		return
	}
	up := sandbox.Uplink(t)
	upstreamDNS(t, up) // 203.0.113.1 answers outside.test
	// 203.0.113.99 is a dead upstream: its packets vanish.
	sandbox.Run(t, "ip", "-n", "up", "route", "add", "blackhole", "203.0.113.99/32")
	sandbox.Run(t, "ip", "-n", "up", "route", "add", "198.18.0.0/16", "via", "198.51.100.1")
	fakeResolvConf(t, "nameserver 203.0.113.1\n")
	h := newHost(t, fmt.Sprintf(`data_dir = %q
[networks.app]
subnet = "198.18.10.0/24"
dns = ["203.0.113.99", "203.0.113.1"]
[networks.open]
subnet = "198.18.11.0/24"
gateway_mode = "nat-unprotected"
[networks.other]
subnet = "198.18.12.0/24"
[networks.inner]
subnet = "198.18.13.0/24"
internal = true
[networks.big]
subnet = "198.18.14.0/24"
[networks.flood]
subnet = "198.18.15.0/24"
dns = ["203.0.113.99"]
`, filepath.Join(t.TempDir(), "data")))
	start := func(id, network string, extra ...string) *proc {
		ann := map[string]string{"netshim/network": network, "netshim/name": id}
		if len(extra) == 2 {
			ann[extra[0]] = extra[1]
		}
		p := h.newProc(id, ann)
		p.mustSetup()
		return p
	}
	appA := start("appa", "app")
	openA := start("opena", "open")
	otherA := start("othera", "other")
	defA := start("defa", "bridge")
	innerA := start("innera", "inner")
	const quick = 700 * time.Millisecond

	t.Run("scope", func(t *testing.T) {
		// Allowed: the network's own containers, and the host.
		for _, c := range []struct{ from, server, name, want string }{
			{appA.netns(), "198.18.10.1:53", "appa.", "198.18.10.2"},
			{openA.netns(), "198.18.11.1:53", "opena.", "198.18.11.2"},
			{"", "198.18.10.1:53", "appa.", "198.18.10.2"},
		} {
			r, _, err := ask(t, c.from, c.server, c.name, dns.TypeA, false, 0, 2*time.Second)
			if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != c.want {
				t.Errorf("%q asking %s for %s: %v %v", c.from, c.server, c.name, r, err)
			}
		}
		// A nat network drops, before NAT, what comes for its addresses
		// from anywhere but its bridge: the query reaches the host, and no
		// answer comes back.
		p := &probes{t: t}
		p.add("other", "pre", `iifname != "lo" ip saddr 198.18.12.2 ip daddr 198.18.10.1 udp dport 53`)
		p.add("default", "pre", `ip saddr 172.17.0.2 ip daddr 198.18.10.1 udp dport 53`)
		p.add("lan", "pre", `iifname "uplink" ip daddr 198.18.10.1 udp dport 53`)
		p.install()
		for probe, from := range map[string]string{"other": otherA.netns(), "default": defA.netns(), "lan": up} {
			for _, name := range []string{"appa.", "outside.test."} {
				if r, _, err := ask(t, from, "198.18.10.1:53", name, dns.TypeA, false, 0, quick); err == nil {
					t.Errorf("%s asking app's responder for %s: answered %v", probe, name, r)
				}
			}
			if p.count(probe) == 0 {
				t.Errorf("%s: the queries never reached the host", probe)
			}
		}
		// A nat-unprotected network lets them reach its responder, which
		// refuses: no name, no recursion.
		for who, from := range map[string]string{"other": otherA.netns(), "default": defA.netns(), "lan": up} {
			for _, name := range []string{"opena.", "outside.test.", "2.11.18.198.in-addr.arpa."} {
				r, _, err := ask(t, from, "198.18.11.1:53", name, dns.TypeA, false, 0, 2*time.Second)
				if err != nil || r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
					t.Errorf("%s asking open's responder for %s: %v %v", who, name, r, err)
				}
			}
		}
		sandbox.Run(t, "nft", "delete", "table", "ip", "probe")
	})

	t.Run("internal NXDOMAIN", func(t *testing.T) {
		r, d, err := ask(t, innerA.netns(), "198.18.13.1:53", "nosuch.example.", dns.TypeA, false, 0, 2*time.Second)
		if err != nil || r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA || d > 100*time.Millisecond {
			t.Errorf("internal network, unknown name: %v %v after %s", r, err, d)
		}
		// glibc takes it as "not found" at once, not as a failure to retry.
		if out, err := innerA.withResolv("getent", "hosts", "nosuch.example"); err == nil || strings.TrimSpace(out) != "" {
			t.Errorf("getent on an internal network: %v %q", err, out)
		}
		if r, _, err := ask(t, appA.netns(), "198.18.10.1:53", "appa.", dns.TypeAAAA, false, 0, 2*time.Second); err != nil ||
			r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Errorf("AAAA of our own name (NODATA with SOA): %v %v", r, err)
		}
	})

	t.Run("60 sharing an alias", func(t *testing.T) {
		var first *proc
		for i := 0; i < 60; i++ {
			p := start(fmt.Sprintf("big%d", i), "big", "netshim/aliases", "shared")
			if first == nil {
				first = p
			}
		}
		wire, err := askWire(t, first.netns(), "198.18.14.1:53", "shared.", dns.TypeA)
		r := new(dns.Msg)
		if err == nil {
			err = r.Unpack(wire)
		}
		if err != nil || !r.Truncated || len(wire) > 512 || len(r.Answer) == 0 {
			t.Fatalf("UDP without EDNS: %v: TC %v, %d bytes, %d answers", err, r.Truncated, len(wire), len(r.Answer))
		}
		if r, _, err := ask(t, first.netns(), "198.18.14.1:53", "shared.", dns.TypeA, true, 0, 2*time.Second); err != nil || len(r.Answer) != 60 {
			t.Errorf("TCP: %v, %d answers", err, len(r.Answer))
		}
		if addrs, err := first.glibcAddrs("shared"); err != nil || len(addrs) != 60 {
			t.Errorf("glibc: %d addresses %v", len(addrs), err)
		}
		if addrs, err := goLookup(t, first.netns(), "198.18.14.1:53", "shared"); err != nil || len(addrs) != 60 {
			t.Errorf("Go: %d addresses %v", len(addrs), err)
		}
		// musl 1.2.5 asks again over TCP and gets every address (its
		// getaddrinfo keeps 48: musl's MAXADDRS); Debian 12's musl 1.2.3
		// has no DNS over TCP: it takes the truncated answer's whole
		// records instead of failing.
		if r, err := first.musl(os.Getenv(envMusl125), "shared"); err != nil || r.resQuery != 60 || r.gai != 48 {
			t.Errorf("musl 1.2.5: %+v %v", r, err)
		}
		if r, err := first.musl(os.Getenv(envMusl123), "shared"); err != nil || r.gai < 28 || r.resQuery < 28 || r.gaiErr != "ok" {
			t.Errorf("musl 1.2.3: %+v %v", r, err)
		}
		t.Logf("60 addresses: glibc 60, Go 60, musl 1.2.5 res_query 60 and getaddrinfo 48, musl 1.2.3 the %d of the truncated answer", len(r.Answer))
	})

	t.Run("dead first upstream", func(t *testing.T) {
		var took []time.Duration
		for i := 0; i < 6; i++ {
			begin := time.Now()
			out, err := appA.withResolv("getent", "hosts", "outside.test")
			took = append(took, time.Since(begin))
			if err != nil || !strings.Contains(out, "203.0.113.80") {
				t.Errorf("lookup %d: %v %q", i+1, err, out)
			}
		}
		if m := median(took[1:]); m > 600*time.Millisecond {
			t.Errorf("median of 5 lookups after the first: %s (%v)", m, took)
		}
		t.Logf("lookups with the first upstream dead: %v", took)
	})

	t.Run("flood", func(t *testing.T) {
		floodA := start("flooda", "flood")
		pid := h.responderPID("flood")
		sandbox.Run(t, "prlimit", "--pid", strconv.Itoa(pid), "--nofile=1024:1024")
		stop := make(chan struct{})
		var sent, answered atomic.Int64
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // 20,000 forwarded queries in 5 s
			defer wg.Done()
			inNetns(t, floodA.netns(), func() error {
				c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(198, 18, 15, 1), Port: 53})
				if err != nil {
					return err
				}
				defer c.Close()
				go func() {
					buf := make([]byte, 512)
					for {
						if _, err := c.Read(buf); err != nil {
							return
						}
						answered.Add(1)
					}
				}()
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				for i := 0; i < 20000; i += 4 {
					<-tick.C
					for j := i; j < i+4; j++ {
						m := new(dns.Msg)
						m.SetQuestion(fmt.Sprintf("q%d-%d.flood.test.", j, rand.Int()), dns.TypeA)
						b, _ := m.Pack()
						c.Write(b)
						sent.Add(1)
					}
				}
				return nil
			})
		}()
		// 200 idle TCP clients, more than the responder serves at once.
		var idle []net.Conn
		inNetns(t, floodA.netns(), func() error {
			for i := 0; i < 200; i++ {
				if c, err := net.DialTimeout("tcp4", "198.18.15.1:53", time.Second); err == nil {
					idle = append(idle, c)
				}
			}
			return nil
		})
		defer func() {
			for _, c := range idle {
				c.Close()
			}
		}()
		maxRSS, checks, failures := 0, 0, 0
		go func() { wg.Wait(); close(stop) }()
	during:
		for {
			select {
			case <-stop:
				break during
			case <-time.After(200 * time.Millisecond):
			}
			for _, tcp := range []bool{false, true} {
				checks++
				if r, _, err := ask(t, floodA.netns(), "198.18.15.1:53", "flooda.", dns.TypeA, tcp, 0, time.Second); err != nil || len(r.Answer) != 1 {
					failures++
					t.Errorf("a local name during the flood (tcp %v): %v %v", tcp, r, err)
				}
			}
			maxRSS = max(maxRSS, rssKiB(pid))
		}
		time.Sleep(4500 * time.Millisecond) // the last forwards time out
		for _, tcp := range []bool{false, true} {
			if r, _, err := ask(t, floodA.netns(), "198.18.15.1:53", "flooda.", dns.TypeA, tcp, 0, time.Second); err != nil || len(r.Answer) != 1 {
				t.Errorf("a local name after the flood (tcp %v): %v %v", tcp, r, err)
			}
		}
		if err := syscall.Kill(pid, 0); err != nil || h.responderPID("flood") != pid {
			t.Errorf("the responder exited during the flood: %v", err)
		}
		if maxRSS > 100*1024 {
			t.Errorf("responder RSS reached %d KiB", maxRSS)
		}
		t.Logf("flood: %d queries sent, %d answered (SERVFAIL beyond the budget); %d local checks during, %d failed; RSS at most %d KiB",
			sent.Load(), answered.Load(), checks, failures, maxRSS)
	})

	t.Run("restarted when dead", func(t *testing.T) {
		check := func(when string) {
			if r, _, err := ask(t, appA.netns(), "198.18.10.1:53", "appa.", dns.TypeA, false, 0, 2*time.Second); err != nil || len(r.Answer) != 1 {
				t.Errorf("%s: %v %v", when, r, err)
			}
		}
		kill := func() {
			pid := h.responderPID("app")
			syscall.Kill(pid, syscall.SIGKILL)
			waitFor(time.Second, func() bool { return syscall.Kill(pid, 0) != nil })
		}
		kill()
		start("appb", "app") // the network's next hook starts it again
		check("after the next hook")
		kill()
		if out := h.mustNetshim("gc"); !strings.Contains(out, "dns responder of app was not running; started again") {
			t.Errorf("gc output:\n%s", out)
		}
		check("after gc")
	})
}
