package test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/internal/sandbox"
	"github.com/netshim/netshim/netsetup"
)

// probes are counters in a table of the test's own, at priority -400
// (before conntrack and before every rule of netshim's): a blocked case
// asserts its probe counted packets, so it cannot pass because the probe
// was never sent.
type probes struct {
	t     *testing.T
	rules []probeRule
	// family is the probe table's: ip (the default) or ip6.
	family string
}

func (p *probes) fam() string {
	if p.family == "" {
		return "ip"
	}
	return p.family
}

type probeRule struct {
	name  string
	chain string // "pre" (prerouting) or "out" (output)
	match string // nft match expression
}

func (p *probes) add(name, chain, match string) {
	p.rules = append(p.rules, probeRule{name, chain, match})
}

// install (re)creates the probe table with zeroed counters.
func (p *probes) install() {
	p.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "table %[1]s probe\ndelete table %[1]s probe\ntable %[1]s probe {\n", p.fam())
	for _, chain := range []string{"pre", "out"} {
		hook := map[string]string{"pre": "prerouting", "out": "output"}[chain]
		fmt.Fprintf(&b, "chain %s {\ntype filter hook %s priority -400; policy accept;\n", chain, hook)
		for _, r := range p.rules {
			if r.chain == chain {
				fmt.Fprintf(&b, "%s counter comment %q\n", r.match, r.name)
			}
		}
		b.WriteString("}\n")
	}
	b.WriteString("}\n")
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		p.t.Fatalf("install probes: %v: %s\n%s", err, out, b.String())
	}
}

// count is the packets probe name has counted.
func (p *probes) count(name string) int {
	out, err := exec.Command("nft", "list", "table", p.fam(), "probe").CombinedOutput()
	if err != nil {
		p.t.Fatalf("list probes: %v: %s", err, out)
	}
	m := regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "` + regexp.QuoteMeta(name) + `"`).FindSubmatch(out)
	if m == nil {
		p.t.Fatalf("no probe %q in\n%s", name, out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// blocked reports whether connection r was blocked: it neither got through
// nor was refused (a refusal would come from a stack it reached), and
// probe counted its packets arriving at the host.
func (p *probes) blocked(probe string, r dialResult) (string, bool) {
	n := p.count(probe)
	switch {
	case r.err == nil:
		return fmt.Sprintf("got through: %q", r.body), false
	case r.refused:
		return "refused by a stack it reached", false
	case n == 0:
		return "the probe never reached the host", false
	}
	return fmt.Sprintf("blocked (%d packets seen at the host)", n), true
}

// allowed reports whether connection r got through with body want.
func allowed(want string, r dialResult) (string, bool) {
	if r.err != nil || r.body != want {
		return fmt.Sprintf("did not get through: %q %v", r.body, r.err), false
	}
	return "allowed", true
}

// serveHostService serves "host service" over HTTP on addr in the
// sandbox, for as long as the test runs: a service of the host that
// containers must not reach where their network forbids it.
func serveHostService(t *testing.T, network, addr string) {
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, "HTTP/1.0 200 OK\r\n\r\nhost service\n")
			c.Close()
		}
	}()
}

// lan makes a netns standing for a host on a LAN of the sandbox: joined by
// a veth pair (hostIf in the sandbox with hostAddr, eth0 in the netns with
// peerAddr, both /24), with routes through the sandbox to each of routes.
// It returns the netns path.
func lan(t *testing.T, name, hostIf, hostAddr, peerAddr string, routes ...string) string {
	t.Helper()
	cmds := [][]string{
		{"netns", "add", name},
		{"link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", name},
		{"addr", "add", hostAddr + "/24", "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", name, "addr", "add", peerAddr + "/24", "dev", "eth0"},
		{"-n", name, "link", "set", "eth0", "up"},
		{"-n", name, "link", "set", "lo", "up"},
	}
	for _, r := range routes {
		cmds = append(cmds, []string{"-n", name, "route", "add", r, "via", hostAddr})
	}
	for _, c := range cmds {
		sandbox.Run(t, "ip", c...)
	}
	return "/run/netns/" + name
}

// aimAtLoopback makes the LAN host at nsPath send what it addresses to
// 127.0.0.1 to the sandbox through via: its own loopback address gone,
// route_localnet on, and a route (what an attacker on the uplink's LAN
// does, or sends as a raw frame).
func aimAtLoopback(t *testing.T, nsPath, via string) {
	t.Helper()
	ns := filepath.Base(nsPath)
	sandbox.Run(t, "ip", "-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo")
	sandbox.Run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf.eth0.route_localnet=1")
	sandbox.Run(t, "ip", "-n", ns, "route", "add", "127.0.0.1/32", "via", via)
}

// dialResult is how a TCP exchange from a netns ended.
type dialResult struct {
	body    string // the HTTP body, when it got through
	refused bool   // a RST: the packet reached a stack that had nothing there
	err     error
}

// fetch gets / from addr over TCP from nsPath ("" is the sandbox), waiting
// at most timeout to connect.
func fetch(nsPath, addr string, timeout time.Duration) dialResult {
	var c net.Conn
	dial := func() (err error) {
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	}
	var err error
	if nsPath == "" {
		err = dial()
	} else {
		ns, nerr := netns.GetFromPath(nsPath)
		if nerr != nil {
			return dialResult{err: nerr}
		}
		defer ns.Close()
		err = netsetup.Do(ns, dial)
	}
	if err != nil {
		return dialResult{refused: errors.Is(err, unix.ECONNREFUSED), err: err}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
	buf := make([]byte, 4096)
	var resp []byte
	for {
		n, err := c.Read(buf)
		resp = append(resp, buf[:n]...)
		if err != nil {
			break
		}
	}
	_, body, _ := strings.Cut(string(resp), "\r\n\r\n")
	return dialResult{body: body}
}

// containerPID is the container's init PID, from the runtime.
func (c *container) pid() int {
	c.h.t.Helper()
	out, err := c.h.runc("state", c.id)
	if err != nil {
		c.h.t.Fatalf("state of %s: %v: %s", c.id, err, out)
	}
	var st struct{ Pid int }
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.h.t.Fatalf("state of %s: %v: %s", c.id, err, out)
	}
	return st.Pid
}

// rawUDP sends, from the container's eth0 as a process with CAP_NET_RAW
// in it can, one hand-made frame: to the gateway's MAC, an IPv4/UDP
// datagram from src to dst:port.
func rawUDP(t *testing.T, pid int, gwMAC net.HardwareAddr, src, dst netip.Addr, port uint16, payload []byte) {
	t.Helper()
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	err = netsetup.Do(ns, func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		frame := append(append(append([]byte{}, gwMAC...), ifc.HardwareAddr...), 0x08, 0x00)
		udpLen := 8 + len(payload)
		ip := make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
		binary.BigEndian.PutUint16(ip[2:], uint16(20+udpLen))
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(ip[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
		udp := make([]byte, 8)
		binary.BigEndian.PutUint16(udp[0:], 40000)
		binary.BigEndian.PutUint16(udp[2:], port)
		binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
		frame = append(append(append(frame, ip...), udp...), payload...)
		sa := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: htons(unix.ETH_P_IP)}
		for i := 0; i < 3; i++ {
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send a raw frame from the container: %v", err)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// linkMAC is a sandbox link's MAC address.
func linkMAC(t *testing.T, name string) net.HardwareAddr {
	t.Helper()
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return ifc.HardwareAddr
}

// matrix runs attack cases at once and collects one line per case for the
// log, as "case: result".
type matrix struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
	wg    sync.WaitGroup
}

func (m *matrix) report(name, result string, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mark := "ok  "
	if !ok {
		mark = "FAIL"
	}
	m.lines = append(m.lines, fmt.Sprintf("%s %-58s %s", mark, name, result))
}

func (m *matrix) run(name string, f func() (string, bool)) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		res, ok := f()
		if !ok {
			m.t.Errorf("%s: %s", name, res)
		}
		m.report(name, res, ok)
	}()
}

func (m *matrix) done(title string) {
	m.wg.Wait()
	sort.Strings(m.lines)
	m.t.Logf("%s:\n%s", title, strings.Join(m.lines, "\n"))
	m.lines = nil
}

// writeFile writes a file or fails the test.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
