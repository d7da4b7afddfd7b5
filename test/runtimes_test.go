package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/internal/sandbox"
)

// need skips the test when a runtime is missing; make test installs them,
// so in CI this never skips.
func need(t *testing.T, bins ...string) {
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s is not installed (make test installs it)", b)
		}
	}
}

// crun: the same acceptance as runc (address, ping, a published port from
// the upstream, clean teardown). crun reports "created" to createRuntime.
func TestCrun(t *testing.T) {
	need(t, "crun")
	if !sandbox.Enter(t) {
		return
	}
	// crun refuses cgroup v1+v2 hybrid hosts; without the unified mount (in
	// this private mount namespace only) it uses v1.
	unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH)
	up := sandbox.Uplink(t)
	h := newHost(t, "")
	h.runtime = "crun"
	web := h.webBundle("web", "-p", "8080:80").mustStart().waitHTTP()
	cl := h.newBundle(uniqueID(t, "cl"), sleeper, "--name", "cl").mustStart()
	if out := web.mustExec("ip", "addr", "show", "eth0"); !strings.Contains(out, "inet 172.17.0.2/16") || !strings.Contains(out, "02:42:ac:11:00:02") {
		t.Errorf("web eth0:\n%s", out)
	}
	cl.mustExec("ping", "-c1", "-W2", "172.17.0.2")
	cl.mustExec("ping", "-c1", "-W2", "203.0.113.1")
	if body, err := httpGet(up, "198.51.100.1:8080"); err != nil || body != "hello from web\n" {
		t.Errorf("published port: %q %v", body, err)
	}
	web.stop()
	cl.stop()
	assertClean(t, h)
	log, _ := os.ReadFile(filepath.Join(h.stateDir, "hook.log"))
	if !strings.Contains(string(log), "name=web stage=createRuntime") {
		t.Errorf("hook.log:\n%s", log)
	}
}

// crun hides a hook's stderr; the failure is in the state dir's log with
// the container id.
func TestCrunFailureLogged(t *testing.T) {
	need(t, "crun")
	if !sandbox.Enter(t) {
		return
	}
	unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH)
	h := newHost(t, "")
	h.runtime = "crun"
	c := h.newBundle(uniqueID(t, "bad"), sleeper, "--name", "bad", "--ip", "10.9.9.9")
	if err := c.start(); err == nil {
		t.Fatal("started with an address outside the subnet")
	}
	c.stop()
	log, _ := os.ReadFile(filepath.Join(h.stateDir, "hook.log"))
	if !strings.Contains(string(log), "id="+c.id+" name=bad stage=createRuntime") || !strings.Contains(string(log), "error: annotation netshim/ip = \"10.9.9.9\": address 10.9.9.9 on network bridge: outside subnet") {
		t.Errorf("hook.log lacks the failure:\n%s", log)
	}
	assertClean(t, h)
}

// Podman with its hooks.d: Podman makes the netns (--network none), netshim
// wires it from the annotation, and Podman runs the poststop itself, with
// an empty environment and the bundle as cwd.
func TestPodman(t *testing.T) {
	need(t, "podman")
	if !sandbox.Enter(t) {
		return
	}
	up := sandbox.Uplink(t)
	h := newHost(t, "")
	podman, hooks, rootfs := podmanFor(h)
	out, err := podman("run", "-d", "--name", "pweb", "--hooks-dir", hooks, "--network", "none",
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--cap-add", "NET_RAW",
		"--annotation", "netshim/network=bridge", "--annotation", "netshim/publish=8080:80",
		"--rootfs", rootfs, "httpd", "-f", "-p", "80", "-h", "/www")
	if err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	defer podman("rm", "-f", "pweb")
	if out, err := podman("exec", "pweb", "ip", "addr", "show", "eth0"); err != nil || !strings.Contains(out, "inet 172.17.0.2/16") {
		t.Errorf("podman container eth0: %v\n%s", err, out)
	}
	if out, err := podman("exec", "pweb", "ping", "-c1", "-W2", "172.17.0.1"); err != nil {
		t.Errorf("ping gateway: %v\n%s", err, out)
	}
	var body string
	waitFor(time.Second, func() bool {
		body, err = httpGet(up, "198.51.100.1:8080")
		return err == nil
	})
	if body != "hello from podman\n" {
		t.Errorf("published port: %q %v", body, err)
	}
	if out := h.mustNetshim("ps"); !strings.Contains(out, "0.0.0.0:8080->80/tcp") {
		t.Errorf("ps:\n%s", out)
	}
	if out, err := podman("rm", "-f", "pweb"); err != nil {
		t.Fatalf("podman rm: %v\n%s", err, out)
	}
	assertClean(t, h)
}

// podmanFor sets Podman up for host h: a hooks.d with netshim's hook for
// containers that have a netshim/network annotation, a busybox rootfs
// serving "hello from podman" in /www, and a podman command with its own
// storage, under runc.
func podmanFor(h *host) (podman func(args ...string) (string, error), hooks, rootfs string) {
	t := h.t
	hooks = filepath.Join(h.dir, "hooks.d")
	os.MkdirAll(hooks, 0o755)
	hookFile := map[string]any{
		"version": "1.0.0",
		"hook": map[string]any{
			"path":    netshimBin,
			"args":    []string{"netshim", "--config", h.config, "--state-dir", h.stateDir, "hook"},
			"env":     []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
			"timeout": 30,
		},
		"when":   map[string]any{"annotations": map[string]string{"^netshim/network$": ".*"}},
		"stages": []string{"createRuntime", "poststop"},
	}
	data, _ := json.Marshal(hookFile)
	os.WriteFile(filepath.Join(hooks, "netshim.json"), data, 0o644)
	rootfs = filepath.Join(h.dir, "rootfs")
	busyboxRootfs(t, rootfs)
	os.MkdirAll(filepath.Join(rootfs, "www"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "www", "index.html"), []byte("hello from podman\n"), 0o644)
	podman = func(args ...string) (string, error) {
		base := []string{"--root", filepath.Join(h.dir, "storage"), "--runroot", filepath.Join(h.dir, "runroot"),
			"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none"}
		out, err := exec.Command("podman", append(base, args...)...).CombinedOutput()
		return string(out), err
	}
	return podman, hooks, rootfs
}

func TestPodmanNetsNft(t *testing.T) { testPodmanNets(t, "nftables") }

func TestPodmanNetsIpt(t *testing.T) { testPodmanNets(t, "iptables") }

// Under Podman's hooks.d too: a container on two networks reaches a
// container of each by name, those two do not reach each other, and
// `network connect`/`disconnect` work on a running Podman container by its
// name; `podman rm` leaves nothing.
func testPodmanNets(t *testing.T, backend string) {
	need(t, "podman")
	if !sandbox.Enter(t) {
		return
	}
	sandbox.Uplink(t)
	h := newHost(t, "firewall = \""+backend+"\"\n[networks.front]\nsubnet = \"10.85.0.0/24\"\n[networks.back]\nsubnet = \"10.86.0.0/24\"\n")
	podman, hooks, _ := podmanFor(h)
	run := func(name, networks string) {
		// A rootfs each: with --network none Podman mounts no
		// resolv.conf of its own, and netshim writes the rootfs's.
		rootfs := filepath.Join(h.dir, "rootfs-"+name)
		busyboxRootfs(t, rootfs)
		out, err := podman("run", "-d", "--name", name, "--hooks-dir", hooks, "--network", "none",
			"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--cap-add", "NET_RAW",
			"--annotation", "netshim/network="+networks, "--annotation", "netshim/name="+name,
			"--rootfs", rootfs, "sleep", "3600")
		if err != nil {
			t.Fatalf("podman run %s: %v\n%s", name, err, out)
		}
		t.Cleanup(func() { podman("rm", "-f", "-t", "0", name) })
	}
	run("pboth", "front back") // Podman splits --annotation at commas
	run("pfront", "front")
	run("pback", "back")
	for _, c := range [][2]string{{"pboth", "pfront"}, {"pboth", "pback"}, {"pfront", "pboth"}, {"pback", "pboth"}} {
		if out, err := podman("exec", c[0], "ping", "-c1", "-W2", c[1]); err != nil {
			t.Errorf("%s -> %s by name: %v\n%s", c[0], c[1], err, out)
		}
	}
	// Blocked, and the probe proves the ping reached the host.
	var front struct{ Bridge string }
	if err := json.Unmarshal([]byte(h.mustNetshim("network", "inspect", "front")), &front); err != nil {
		t.Fatal(err)
	}
	p := &probes{t: t}
	p.add("front-to-back", "pre", fmt.Sprintf(`iifname %q ip daddr 10.86.0.2`, front.Bridge))
	p.install()
	if out, err := podman("exec", "pfront", "ping", "-c1", "-W1", "10.86.0.2"); err == nil {
		t.Errorf("front reached back:\n%s", out)
	} else if p.count("front-to-back") == 0 {
		t.Error("front -> back: the probe never reached the host")
	}
	sandbox.Run(t, "nft", "delete", "table", "ip", "probe")
	h.mustNetshim("network", "connect", "back", "pfront")
	if out, err := podman("exec", "pback", "ping", "-c1", "-W1", "pfront"); err != nil {
		t.Errorf("back -> pfront after connect: %v\n%s", err, out)
	}
	h.mustNetshim("network", "disconnect", "back", "pfront")
	if out, err := podman("exec", "pback", "nslookup", "pfront"); err == nil {
		t.Errorf("pfront still resolves on back after disconnect:\n%s", out)
	}
	for _, name := range []string{"pboth", "pfront", "pback"} {
		if out, err := podman("rm", "-f", "-t", "0", name); err != nil {
			t.Fatalf("podman rm %s: %v\n%s", name, err, out)
		}
	}
	assertClean(t, h)
}
