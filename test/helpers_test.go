// Package test holds netshim's end-to-end tests: the real binary, real
// runtimes and busybox containers, each test in a sandbox of its own.
package test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/netshim/netshim/netsetup"
)

// netshimBin is the binary under test, built once by TestMain; udpEchoBin
// is a static UDP echo server for container root filesystems.
var netshimBin, udpEchoBin string

func TestMain(m *testing.M) {
	netshimBin, udpEchoBin = os.Getenv("NETSHIM_BIN"), os.Getenv("NETSHIM_TEST_UDPECHO")
	if udpEchoBin != "" { // a sandboxed re-run of one test: reuse the builds
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "netshim-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	build := func(out, pkg string) {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			os.Exit(2)
		}
	}
	if netshimBin == "" {
		netshimBin = filepath.Join(dir, "netshim")
		build(netshimBin, "../hook")
	}
	udpEchoBin = filepath.Join(dir, "udpecho")
	build(udpEchoBin, "./udpecho")
	os.Setenv("NETSHIM_BIN", netshimBin)
	os.Setenv("NETSHIM_TEST_UDPECHO", udpEchoBin)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// host is a sandbox's view of netshim: its config and state dir.
type host struct {
	t        *testing.T
	dir      string
	config   string
	stateDir string
	runcRoot string
	// runtime is the OCI runtime the containers run under: runc or crun.
	runtime string
	// netns, when set, is the `ip netns` name of the network namespace
	// this host's commands run in (one host of several).
	netns string
}

// command is name with args, run in the host's netns (nsenter, not `ip
// netns exec`, which remounts /sys and so hides the cgroups from runc).
func (h *host) command(name string, args ...string) *exec.Cmd {
	if h.netns != "" {
		return exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.netns, name}, args...)...)
	}
	return exec.Command(name, args...)
}

// newHost makes a config (TOML text, may be empty) and state dir for a test.
func newHost(t *testing.T, toml string) *host {
	dir := t.TempDir()
	h := &host{t: t, dir: dir, config: filepath.Join(dir, "netshim.toml"), stateDir: filepath.Join(dir, "state"), runcRoot: filepath.Join(dir, "runc"), runtime: "runc"}
	if err := os.WriteFile(h.config, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return h
}

// netshim runs the binary with this host's config and state dir.
func (h *host) netshim(stdin string, args ...string) (string, string, error) {
	full := append([]string{"--config", h.config, "--state-dir", h.stateDir}, args...)
	cmd := h.command(netshimBin, full...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// mustNetshim runs the binary and fails the test if it fails.
func (h *host) mustNetshim(args ...string) string {
	h.t.Helper()
	out, errOut, err := h.netshim("", args...)
	if err != nil {
		h.t.Fatalf("netshim %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// busyboxRootfs fills dir with a busybox-static rootfs.
func busyboxRootfs(t *testing.T, dir string) {
	t.Helper()
	bin := filepath.Join(dir, "bin")
	for _, d := range []string{bin, filepath.Join(dir, "proc"), filepath.Join(dir, "dev"), filepath.Join(dir, "sys"), filepath.Join(dir, "tmp"), filepath.Join(dir, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox-static is not installed: %v", err)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command(src, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(bin, applet)); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "etc", "group"), []byte("root:x:0:\n"), 0o644)
}

// baseSpec is what `runc spec` writes, with a detached process, Docker's
// NET_RAW (for ping) and no network namespace yet: `netshim bundle` adds it.
func baseSpec(hostname string, args []string) map[string]any {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
	return map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"terminal": false, "user": map[string]any{"uid": 0, "gid": 0},
			"args": args, "env": []string{"PATH=/bin", "TERM=xterm"}, "cwd": "/",
			"capabilities":    map[string]any{"bounding": caps, "effective": caps, "permitted": caps},
			"rlimits":         []any{map[string]any{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}},
			"noNewPrivileges": true,
		},
		"root":     map[string]any{"path": "rootfs", "readonly": false},
		"hostname": hostname,
		"mounts": []any{
			map[string]any{"destination": "/proc", "type": "proc", "source": "proc"},
			map[string]any{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			map[string]any{"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			map[string]any{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		"linux": map[string]any{
			"namespaces": []any{
				map[string]any{"type": "pid"}, map[string]any{"type": "ipc"}, map[string]any{"type": "uts"}, map[string]any{"type": "mount"},
			},
			"maskedPaths":   []string{"/proc/kcore", "/proc/keys"},
			"readonlyPaths": []string{"/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

// container is a runc container made by a test.
type container struct {
	h      *host
	id     string
	bundle string
}

// newBundle writes a bundle with a busybox rootfs running args, then runs
// `netshim bundle` on it with the given flags.
func (h *host) newBundle(id string, args []string, flags ...string) *container {
	h.t.Helper()
	bundle := filepath.Join(h.dir, "bundles", id)
	busyboxRootfs(h.t, filepath.Join(bundle, "rootfs"))
	data, _ := json.MarshalIndent(baseSpec(id, args), "", "\t")
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		h.t.Fatal(err)
	}
	h.mustNetshim(append([]string{"bundle", bundle}, flags...)...)
	return &container{h: h, id: id, bundle: bundle}
}

// uniqueID makes container ids unique on the machine: cgroup paths are
// shared by every sandbox.
func uniqueID(t *testing.T, name string) string {
	return fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%1e9)
}

// runc runs the runtime (runc, or crun) with this host's root.
func (h *host) runc(args ...string) (string, error) {
	cmd := h.command(h.runtime, append([]string{"--root", h.runcRoot}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// start runs the container detached; the hook's error, if any, is returned.
func (c *container) start() error {
	log, err := os.Create(filepath.Join(c.bundle, "runc.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := c.h.command(c.h.runtime, "--root", c.h.runcRoot, "run", "-d", "--bundle", c.bundle, c.id)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(log.Name())
		return fmt.Errorf("%s run %s: %v: %s", c.h.runtime, c.id, err, out)
	}
	return nil
}

// mustStart starts the container and removes it when the test ends.
func (c *container) mustStart() *container {
	c.h.t.Helper()
	if err := c.start(); err != nil {
		c.h.t.Fatal(err)
	}
	c.h.t.Cleanup(func() { c.stop() })
	return c
}

// exec runs a command in the container.
func (c *container) exec(args ...string) (string, error) {
	return c.h.runc(append([]string{"exec", c.id}, args...)...)
}

// mustExec runs a command in the container and fails the test if it fails.
func (c *container) mustExec(args ...string) string {
	c.h.t.Helper()
	out, err := c.exec(args...)
	if err != nil {
		c.h.t.Fatalf("in %s: %s: %v\n%s", c.id, strings.Join(args, " "), err, out)
	}
	return out
}

// stop kills and deletes the container; runc runs the poststop hook.
func (c *container) stop() {
	c.h.runc("kill", c.id, "KILL")
	waitFor(2*time.Second, func() bool {
		out, _ := c.h.runc("state", c.id)
		return !strings.Contains(out, `"running"`)
	})
	if out, err := c.h.runc("delete", "-f", c.id); err != nil && !strings.Contains(out, "does not exist") {
		c.h.t.Errorf("runc delete %s: %v: %s", c.id, err, out)
	}
}

// listenIn opens a TCP listener inside the netns at path; the socket stays in
// that namespace.
func listenIn(t *testing.T, nsPath, addr string) net.Listener {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var l net.Listener
	network := "tcp4"
	if strings.HasPrefix(addr, "[") {
		network = "tcp6"
	}
	err = netsetup.Do(ns, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// acceptRemote accepts one connection and returns the peer's address as the
// listener saw it.
func acceptRemote(l net.Listener, timeout time.Duration) (string, error) {
	type res struct {
		addr string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer c.Close()
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		fmt.Fprintf(c, "you are %s\n", host)
		ch <- res{addr: host}
	}()
	select {
	case r := <-ch:
		return r.addr, r.err
	case <-time.After(timeout):
		return "", fmt.Errorf("no connection within %s", timeout)
	}
}

// waitFor waits until cond holds, at most d, and reports whether it did:
// every wait for asynchronous work goes through it (or eventually).
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// eventually is waitFor that fails the test, saying what did not happen.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !waitFor(d, cond) {
		t.Fatalf("not within %s: %s", d, what)
	}
}
