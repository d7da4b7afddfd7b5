package test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/netsetup"
)

// inNetns runs f in the network namespace at nsPath ("" is the sandbox's).
func inNetns(t *testing.T, nsPath string, f func() error) error {
	t.Helper()
	if nsPath == "" {
		return f()
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	return netsetup.Do(ns, f)
}

// ask sends one query from nsPath to server (ip:53) and returns the answer
// and how long it took. bufsize > 0 adds EDNS with that size.
func ask(t *testing.T, nsPath, server, name string, qtype uint16, tcp bool, bufsize uint16, timeout time.Duration) (*dns.Msg, time.Duration, error) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	if bufsize > 0 {
		m.SetEdns0(bufsize, false)
	}
	c := &dns.Client{Timeout: timeout, UDPSize: 65535}
	if tcp {
		c.Net = "tcp"
	}
	var r *dns.Msg
	var d time.Duration
	err := inNetns(t, nsPath, func() error {
		var err error
		r, d, err = c.Exchange(m, server)
		return err
	})
	return r, d, err
}

// procNet is a hook-level container's netns path.
func (p *proc) netns() string { return fmt.Sprintf("/proc/%d/ns/net", p.pid) }

// withResolv runs argv in p's netns and a mount namespace of its own with
// p's /etc/resolv.conf (as netshim wrote it) over the host's, as the
// container's own resolver libraries would read it.
func (p *proc) withResolv(argv ...string) (string, error) {
	resolv := filepath.Join(p.bundle, "rootfs", "etc", "resolv.conf")
	args := append([]string{"-t", strconv.Itoa(p.pid), "-n", "unshare", "-m", "--propagation", "private", "sh", "-c",
		`mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv}, argv...)
	out, err := exec.Command("nsenter", args...).CombinedOutput()
	return string(out), err
}

// glibcAddrs are the IPv4 addresses glibc's getaddrinfo gives p for name.
func (p *proc) glibcAddrs(name string) ([]string, error) {
	out, err := p.withResolv("getent", "ahostsv4", name)
	if err != nil {
		return nil, fmt.Errorf("getent ahostsv4 %s: %v: %s", name, err, out)
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			seen[f[0]] = true
		}
	}
	var addrs []string
	for a := range seen {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	return addrs, nil
}

// muslClientSrc looks a name up with musl's getaddrinfo (which keeps at
// most 48 addresses, musl's MAXADDRS) and with res_query (the resolver's
// own answer), and prints how many addresses each gave.
const muslClientSrc = `#include <stdio.h>
#include <string.h>
#include <netdb.h>
#include <resolv.h>
int main(int argc, char **argv) {
	struct addrinfo hints, *res, *p;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_INET;
	hints.ai_socktype = SOCK_STREAM;
	int rc = getaddrinfo(argv[1], NULL, &hints, &res), n = 0;
	if (rc == 0) for (p = res; p; p = p->ai_next) n++;
	static unsigned char buf[65536];
	int len = res_query(argv[1], 1, 1, buf, sizeof buf), an = -1;
	if (len >= 12) an = buf[6] << 8 | buf[7];
	printf("getaddrinfo %d %s\nres_query %d\n", n, rc ? gai_strerror(rc) : "ok", an);
	return 0;
}
`

// The musl clients' paths, for a sandboxed test (see TestDNS).
const (
	envMusl123 = "NETSHIM_TEST_MUSL123"
	envMusl125 = "NETSHIM_TEST_MUSL125"
)

// muslResult is what the musl client printed.
type muslResult struct {
	gai, resQuery int
	gaiErr        string
}

func (p *proc) musl(bin, name string) (muslResult, error) {
	out, err := p.withResolv(bin, name)
	m := regexp.MustCompile(`getaddrinfo (\d+) (.*)\nres_query (-?\d+)`).FindStringSubmatch(out)
	if err != nil || m == nil {
		return muslResult{}, fmt.Errorf("%s %s: %v: %s", bin, name, err, out)
	}
	r := muslResult{gaiErr: m[2]}
	r.gai, _ = strconv.Atoi(m[1])
	r.resQuery, _ = strconv.Atoi(m[3])
	return r, nil
}

// muslDebian12 builds the client with Debian 12's musl-gcc (musl 1.2.3: no
// DNS over TCP).
func muslDebian12(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "client.c")
	os.WriteFile(src, []byte(muslClientSrc), 0o644)
	bin := filepath.Join(dir, "musl123-client")
	if out, err := exec.Command("musl-gcc", "-static", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("musl-gcc (Debian's musl-tools): %v\n%s", err, out)
	}
	return bin
}

// muslDebian13 builds the client with Debian 13's musl (1.2.5, which asks
// again over TCP when an answer is truncated): its musl-dev package, a test
// fixture fetched from deb.debian.org and kept in the user's cache dir,
// linked by gcc. Debian 12 has no newer musl.
func muslDebian13(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	root := filepath.Join(cache, "netshim-test", "musl-debian13")
	lib := filepath.Join(root, "usr", "lib", "x86_64-linux-musl")
	if _, err := os.Stat(filepath.Join(lib, "libc.a")); err != nil {
		fetchDebian13Package(t, "musl-dev", root)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "client.c")
	os.WriteFile(src, []byte(muslClientSrc), 0o644)
	libgcc, err := exec.Command("gcc", "-print-libgcc-file-name").Output()
	if err != nil {
		t.Fatalf("gcc: %v", err)
	}
	bin := filepath.Join(dir, "musl125-client")
	args := []string{"-static", "-O2", "-nostdinc", "-nostdlib", "-fno-stack-protector",
		"-isystem", filepath.Join(root, "usr", "include", "x86_64-linux-musl"), "-o", bin,
		filepath.Join(lib, "crt1.o"), filepath.Join(lib, "crti.o"), src, filepath.Join(lib, "libc.a"),
		filepath.Join(lib, "crtn.o"), strings.TrimSpace(string(libgcc))}
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc with Debian 13's musl: %v\n%s", err, out)
	}
	return bin
}

// fetchDebian13Package unpacks Debian 13's package pkg (amd64) into root,
// found in the suite's package index and checked against its SHA256.
func fetchDebian13Package(t *testing.T, pkg, root string) {
	t.Helper()
	const mirror = "http://deb.debian.org/debian/"
	dir := t.TempDir()
	get := func(url, to string) {
		var out []byte
		var err error
		for try := 0; try < 3; try++ {
			if out, err = exec.Command("curl", "-sfSL", "--retry", "2", "-o", to, url).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(time.Second)
		}
		t.Fatalf("fetch %s: %v: %s", url, err, out)
	}
	index := filepath.Join(dir, "Packages.xz")
	get(mirror+"dists/trixie/main/binary-amd64/Packages.xz", index)
	text, err := exec.Command("xz", "-dc", index).Output()
	if err != nil {
		t.Fatalf("unpack the package index: %v", err)
	}
	var file, sum string
	for _, stanza := range strings.Split(string(text), "\n\n") {
		if !strings.HasPrefix(stanza, "Package: "+pkg+"\n") {
			continue
		}
		for _, l := range strings.Split(stanza, "\n") {
			if v, ok := strings.CutPrefix(l, "Filename: "); ok {
				file = v
			}
			if v, ok := strings.CutPrefix(l, "SHA256: "); ok {
				sum = v
			}
		}
	}
	if file == "" || sum == "" {
		t.Fatalf("no %s in Debian 13's index", pkg)
	}
	deb := filepath.Join(dir, filepath.Base(file))
	get(mirror+file, deb)
	out, err := exec.Command("sha256sum", deb).Output()
	if err != nil || !strings.HasPrefix(string(out), sum+" ") {
		t.Fatalf("%s: sha256 %s, the index says %s (%v)", file, out, sum, err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x %s: %v: %s", deb, err, out)
	}
}

// goLookup is Go's own resolver's addresses for name, asking server from
// nsPath.
func goLookup(t *testing.T, nsPath, server, name string) ([]string, error) {
	var addrs []string
	err := inNetns(t, nsPath, func() error {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		addrs, err = r.LookupHost(ctx, name)
		return err
	})
	return addrs, err
}

// askWire sends one plain UDP query (no EDNS) from nsPath and returns the
// answer as it came on the wire.
func askWire(t *testing.T, nsPath, server, name string, qtype uint16) ([]byte, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	q, err := m.Pack()
	if err != nil {
		return nil, err
	}
	var resp []byte
	err = inNetns(t, nsPath, func() error {
		c, err := net.Dial("udp4", server)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(q); err != nil {
			return err
		}
		buf := make([]byte, 65535)
		n, err := c.Read(buf)
		resp = buf[:n]
		return err
	})
	return resp, err
}
