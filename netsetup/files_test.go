package netsetup

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/state"
)

func TestBuildHosts(t *testing.T) {
	got := string(BuildHosts(HostsSpec{
		Addrs: []netip.Addr{netip.MustParseAddr("172.17.0.3")}, Hostname: "c961d4e7a9ca", Name: "wordpress",
		Links: []state.Link{{Name: "db_wordpress", Alias: "db", IP: netip.MustParseAddr("172.17.0.2")}, {Name: "cache", IP: netip.MustParseAddr("172.17.0.4")}},
		Extra: []HostEntry{{Name: "gw", IP: netip.MustParseAddr("172.17.0.1")}},
	}))
	for _, want := range []string{"127.0.0.1\tlocalhost\n", "172.17.0.2\tdb db_wordpress\n", "172.17.0.4\tcache\n",
		"172.17.0.1\tgw\n", "172.17.0.3\tc961d4e7a9ca wordpress\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	if strings.Contains(got, "::1") || strings.Contains(got, "ip6-") {
		t.Errorf("IPv6 lines without Loopback6:\n%s", got)
	}
	got = string(BuildHosts(HostsSpec{Loopback6: true}))
	if !strings.HasPrefix(got, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n") {
		t.Errorf("with Loopback6:\n%s", got)
	}
	base := string(BuildHosts(HostsSpec{Base: []byte("10.0.0.1 hostbox")}))
	if base != "10.0.0.1 hostbox\n" {
		t.Errorf("base: %q", base)
	}
}

func TestBuildResolv(t *testing.T) {
	host := []byte("# comment\nnameserver 127.0.0.53\nnameserver 198.51.100.53\nsearch example.test\noptions edns0\n")
	got := string(BuildResolv(ResolvSpec{Host: host}))
	if strings.Contains(got, "127.0.0.53") || !strings.Contains(got, "nameserver 198.51.100.53\n") ||
		!strings.Contains(got, "search example.test\n") || !strings.Contains(got, "options edns0\n") {
		t.Errorf("filtered host:\n%s", got)
	}
	got = string(BuildResolv(ResolvSpec{Host: []byte("nameserver 127.0.0.53\n")}))
	if !strings.Contains(got, "nameserver 8.8.8.8\n") {
		t.Errorf("fallback:\n%s", got)
	}
	got = string(BuildResolv(ResolvSpec{Host: host, Nameservers: []netip.Addr{netip.MustParseAddr("203.0.113.53")}, Search: []string{"a.test"}, Options: []string{"ndots:2"}}))
	if strings.Contains(got, "198.51.100.53") || !strings.Contains(got, "nameserver 203.0.113.53\n") || !strings.Contains(got, "search a.test\n") || !strings.Contains(got, "options ndots:2\n") {
		t.Errorf("override:\n%s", got)
	}
	got = string(BuildResolv(ResolvSpec{Host: host, KeepLoopback: true}))
	if !strings.Contains(got, "127.0.0.53") {
		t.Errorf("host mode:\n%s", got)
	}
}

func TestWriteIntoRootfs(t *testing.T) {
	bundle := t.TempDir()
	rootfs := filepath.Join(bundle, "rootfs")
	os.MkdirAll(rootfs, 0o755)
	p, err := WriteContainerFile(bundle, rootfs, nil, "/etc/hosts", []byte("one\n"))
	if err != nil || p != filepath.Join(rootfs, "etc/hosts") {
		t.Fatal(p, err)
	}
	st1, _ := os.Stat(p)
	if _, err := WriteContainerFile(bundle, rootfs, nil, "/etc/hosts", []byte("two\n")); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(p)
	st2, _ := os.Stat(p)
	if string(data) != "two\n" || !os.SameFile(st1, st2) {
		t.Fatalf("not rewritten in place: %q", data)
	}
}

func TestWriteBindSource(t *testing.T) {
	bundle := t.TempDir()
	src := filepath.Join(bundle, "hosts-src")
	os.WriteFile(src, []byte("old old old\n"), 0o644)
	mounts := []Mount{{Destination: "/etc/hosts", Type: "bind", Source: "hosts-src", Options: []string{"rbind", "ro"}}}
	p, err := WriteContainerFile(bundle, filepath.Join(bundle, "rootfs"), mounts, "/etc/hosts", []byte("new\n"))
	if err != nil || p != src {
		t.Fatal(p, err)
	}
	if data, _ := os.ReadFile(src); string(data) != "new\n" {
		t.Fatalf("%q", data)
	}
}

// A hostile rootfs points /etc/hosts, /etc, or a bind source at a host file:
// the host file is never written.
func TestHostileSymlinks(t *testing.T) {
	victimDir := t.TempDir()
	victim := filepath.Join(victimDir, "hosts")
	os.WriteFile(victim, []byte("precious\n"), 0o644)
	check := func(name string) {
		t.Helper()
		if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
			t.Fatalf("%s: host file written: %q", name, data)
		}
	}
	cases := map[string]func(rootfs string){
		"absolute file link": func(r string) { os.MkdirAll(r+"/etc", 0o755); os.Symlink(victim, r+"/etc/hosts") },
		"dotdot file link": func(r string) {
			os.MkdirAll(r+"/etc", 0o755)
			os.Symlink("../../../../../../../.."+victim, r+"/etc/hosts")
		},
		"etc dir link":    func(r string) { os.Symlink(victimDir, r+"/etc") },
		"etc dotdot link": func(r string) { os.Symlink("../../../../../../.."+victimDir, r+"/etc") },
	}
	for name, mk := range cases {
		bundle := t.TempDir()
		rootfs := filepath.Join(bundle, "rootfs")
		os.MkdirAll(rootfs, 0o755)
		mk(rootfs)
		p, err := WriteContainerFile(bundle, rootfs, nil, "/etc/hosts", []byte("pwned\n"))
		check(name)
		if err == nil && !strings.HasPrefix(p, rootfs) {
			t.Errorf("%s: wrote %s outside the rootfs", name, p)
		}
	}
	bundle := t.TempDir()
	os.Symlink(victim, filepath.Join(bundle, "src"))
	mounts := []Mount{{Destination: "/etc/hosts", Source: filepath.Join(bundle, "src"), Options: []string{"bind"}}}
	_, err := WriteContainerFile(bundle, filepath.Join(bundle, "rootfs"), mounts, "/etc/hosts", []byte("pwned\n"))
	var ue *UnsafePathError
	if !errors.As(err, &ue) {
		t.Errorf("symlinked bind source: %v", err)
	}
	check("bind source")
}

// A FIFO or a device node at /etc/hosts is refused without being opened
// for writing (opening one can block, or start a device).
func TestWriteContainerFileNotRegular(t *testing.T) {
	for name, mk := range map[string]func(string) error{
		"fifo":   func(p string) error { return unix.Mkfifo(p, 0o644) },
		"device": func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3))) },
	} {
		bundle := t.TempDir()
		rootfs := filepath.Join(bundle, "rootfs")
		os.MkdirAll(rootfs+"/etc", 0o755)
		if err := mk(rootfs + "/etc/hosts"); err != nil {
			t.Logf("%s: cannot make one here: %v", name, err)
			continue
		}
		_, err := WriteContainerFile(bundle, rootfs, nil, "/etc/hosts", []byte("x\n"))
		var ue *UnsafePathError
		if !errors.As(err, &ue) {
			t.Errorf("%s: %v, want a refusal", name, err)
		}
	}
}
