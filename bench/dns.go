package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"
)

// dnsResult is the latency of a build's DNS responder, as a container on
// its network sees it: queries for a container's name (local) and for a
// name it forwards to an upstream that answers at once.
type dnsResult struct {
	build            string
	local, forwarded []time.Duration
}

// dnsUpstream is the forwarded names' upstream, on the bench's loopback:
// it answers every A query with 192.0.2.1.
const dnsUpstream = "127.0.0.9"

func serveUpstream() (func(), error) {
	c, err := net.ListenPacket("udp4", dnsUpstream+":53")
	if err != nil {
		return nil, err
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) != nil || len(m.Questions) != 1 {
				continue
			}
			m.Response = true
			m.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5},
				Body:   &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}},
			}}
			if resp, err := m.Pack(); err == nil {
				c.WriteTo(resp, from)
			}
		}
	}()
	return func() { c.Close() }, nil
}

// measureDNS sets up one container on a user network with build bin, asks
// its responder n local and n forwarded names, one at a time over UDP, and
// tears the container down.
func measureDNS(bin, build string, n int, work string) (*dnsResult, error) {
	dir := filepath.Join(work, "dns-"+build)
	os.MkdirAll(dir, 0o755)
	config := filepath.Join(dir, "netshim.toml")
	stateDir := filepath.Join("/run", "netshim-dns-"+build)
	defer os.RemoveAll(stateDir)
	toml := fmt.Sprintf("data_dir = %q\n[networks.dnsbench]\nsubnet = \"10.99.0.0/24\"\ndns = [%q]\n", filepath.Join(dir, "data"), dnsUpstream)
	if err := os.WriteFile(config, []byte(toml), 0o644); err != nil {
		return nil, err
	}
	cs, err := spawn(1, dir)
	if err != nil {
		return nil, err
	}
	defer reap(cs)
	c := cs[0]
	spec := `{"ociVersion":"1.0.2","hostname":"target","root":{"path":"rootfs"},"annotations":{"netshim/network":"dnsbench","netshim/name":"target"}}`
	if err := os.WriteFile(filepath.Join(c.dir, "config.json"), []byte(spec), 0o644); err != nil {
		return nil, err
	}
	hook := func(stage, status string) error {
		return runHook([]string{bin, "--config", config, "--state-dir", stateDir, "hook", stage},
			fmt.Sprintf(`{"ociVersion":"1.0.2","id":%q,"status":%q,"pid":%d,"bundle":%q}`, c.id, status, c.pid, c.dir))
	}
	if err := hook("createRuntime", "creating"); err != nil {
		return nil, fmt.Errorf("dns bench setup: %w", err)
	}
	defer hook("poststop", "stopped")
	r := &dnsResult{build: build}
	err = inNetns(c.netns(), func() error {
		conn, err := net.Dial("udp4", "10.99.0.1:53")
		if err != nil {
			return err
		}
		defer conn.Close()
		buf := make([]byte, 1500)
		query := func(name string, id uint16) (time.Duration, error) {
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
			b.StartQuestions()
			b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
			q, _ := b.Finish()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			if _, err := conn.Write(q); err != nil {
				return 0, err
			}
			for {
				k, err := conn.Read(buf)
				if err != nil {
					return 0, fmt.Errorf("query %s: %w", name, err)
				}
				if k >= 12 && buf[0] == q[0] && buf[1] == q[1] {
					if buf[3]&0xf != 0 {
						return 0, fmt.Errorf("query %s: rcode %d", name, buf[3]&0xf)
					}
					return time.Since(start), nil
				}
			}
		}
		for i := 0; i < n; i++ {
			d, err := query("target.", uint16(i))
			if err != nil {
				return err
			}
			r.local = append(r.local, d)
			if d, err = query(fmt.Sprintf("f%d.bench.test.", i), uint16(i)); err != nil {
				return err
			}
			r.forwarded = append(r.forwarded, d)
		}
		return nil
	})
	return r, err
}

// inNetns runs f on a thread in the netns at path.
func inNetns(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread is thrown away with the goroutine
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// dnsLines is the report's DNS section.
func dnsLines(rs []*dnsResult) string {
	if len(rs) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nDNS responder of a user network, as one of its containers sees it: %d queries of a container's name (local)\n", len(rs[0].local))
	b.WriteString("and as many of names it forwards to an upstream on the host's loopback that answers at once, one at a time\n")
	b.WriteString("over UDP. Times in ms.\n\n")
	b.WriteString("| build | local p50 | p99 | forwarded p50 | p99 |\n|---|---:|---:|---:|---:|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.build, ms3(pct(r.local, .5)), ms3(pct(r.local, .99)), ms3(pct(r.forwarded, .5)), ms3(pct(r.forwarded, .99)))
	}
	return b.String()
}

func ms3(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond)) }
