package test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netshim/netshim/internal/sandbox"
)

// recordView is what the races' checks read of a record.
type recordView struct {
	ID          string `json:"id"`
	Phase       string `json:"phase"`
	IP          string `json:"ip"`
	Attachments []struct {
		Addrs []string `json:"addrs"`
		Ports []struct {
			HostPort int `json:"host_port"`
		} `json:"ports"`
	} `json:"attachments"`
	Ports []struct {
		HostPort int `json:"host_port"`
	} `json:"ports"`
}

// addrs are the record's IPv4 addresses, bare.
func (r recordView) addrs() []string {
	var out []string
	if r.IP != "" {
		out = append(out, r.IP)
	}
	for _, a := range r.Attachments {
		for _, p := range a.Addrs {
			out = append(out, strings.Split(p, "/")[0])
		}
	}
	return out
}

func (r recordView) hostPorts() []int {
	var out []int
	for _, p := range r.Ports {
		out = append(out, p.HostPort)
	}
	for _, a := range r.Attachments {
		for _, p := range a.Ports {
			out = append(out, p.HostPort)
		}
	}
	return out
}

// records reads every record of the state dir.
func (h *host) records() map[string]recordView {
	out := map[string]recordView{}
	files, _ := filepath.Glob(filepath.Join(h.stateDir, "containers", "*.json"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var r recordView
		if json.Unmarshal(data, &r) == nil {
			out[r.ID] = r
		}
	}
	return out
}

// dnatPorts are the host ports of the nftables DNAT map, with the
// container address each goes to.
func dnatPorts(t *testing.T) map[int]string {
	out := map[int]string{}
	data, _ := exec.Command("nft", "list", "map", "ip", "netshim", "publish-any").CombinedOutput()
	for _, m := range regexp.MustCompile(`(?:tcp|udp) \. (\d+) : ([\d.]+) \. \d+`).FindAllStringSubmatch(string(data), -1) {
		p, _ := strconv.Atoi(m[1])
		out[p] = m[2]
	}
	return out
}

// eth0Addr is the IPv4 address on the container's eth0, "" without one.
func (p *proc) eth0Addr() string {
	out, err := p.in("ip", "-o", "-4", "addr", "show", "dev", "eth0")
	if m := regexp.MustCompile(`inet ([\d.]+)/`).FindStringSubmatch(out); err == nil && m != nil {
		return m[1]
	}
	return ""
}

// consistency lists what contradicts the state: two records with one
// address, a published port no record holds, a container's address no
// record names.
func consistency(t *testing.T, h *host, procs []*proc) []string {
	var bad []string
	recs := h.records()
	holder := map[string]string{}
	ports := map[int]string{}
	for id, r := range recs {
		for _, a := range r.addrs() {
			if other, dup := holder[a]; dup {
				bad = append(bad, fmt.Sprintf("address %s held by %s and %s", a, other, id))
			}
			holder[a] = id
		}
		for _, p := range r.hostPorts() {
			ports[p] = id
		}
	}
	for port, addr := range dnatPorts(t) {
		if id, ok := ports[port]; !ok || !contains(recs[id].addrs(), addr) {
			bad = append(bad, fmt.Sprintf("port %d mapped to %s without a record", port, addr))
		}
	}
	for _, p := range procs {
		if a := p.eth0Addr(); a != "" && (holder[a] != p.id) {
			bad = append(bad, fmt.Sprintf("%s has %s on eth0 without a record of it", p.id, a))
		}
	}
	return bad
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// hookCmd starts the hook for p in the background, with the test's fault
// switch set when fault is not empty.
func (p *proc) hookCmd(stage, status, fault string) (*exec.Cmd, *strings.Builder) {
	cmd := exec.Command(netshimBin, "--config", p.h.config, "--state-dir", p.h.stateDir, "hook", stage)
	if fault != "" {
		cmd.Env = append(os.Environ(), "NETSHIM_FAULT="+fault)
	}
	cmd.Stdin = strings.NewReader(p.state(status))
	var errOut strings.Builder
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		p.h.t.Fatal(err)
	}
	return cmd, &errOut
}

// stoppedOrGone waits until pid is stopped (SIGSTOP) or has exited, and
// reports whether it stopped.
func stoppedOrGone(pid int) bool {
	state := func() string {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := strings.LastIndexByte(string(data), ')'); err == nil && i > 0 {
			if s := strings.Fields(string(data[i+1:])); len(s) > 0 {
				return s[0]
			}
		}
		return "X" // gone
	}
	waitFor(5*time.Second, func() bool { s := state(); return s == "T" || s == "Z" || s == "X" })
	return state() == "T"
}

// waitBounded waits at most d for cmd; a command still running is killed
// and reported as hung.
func waitBounded(cmd *exec.Cmd, d time.Duration) (err error, hung bool) {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err, false
	case <-time.After(d):
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		return <-done, true
	}
}

// An unprivileged process that squats every name and path netshim uses
// holds no hook up: setup with a published port and teardown each finish
// within 5 s.
func TestSquattedNames(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	warm := h.newProc("warm", nil)
	warm.mustSetup() // the state dir exists, as root made it
	warm.mustTeardown()
	sum := sha256.Sum256([]byte(h.stateDir))
	dir, err := os.MkdirTemp("", "squatter")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	report := filepath.Join(dir, "report")
	// The abstract name a reclaimer of this state dir used, bound with a
	// backlog it fills itself; and every path under the state dir a
	// socket of netshim's could have.
	squatter := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-c", `
import os, socket, sys, time
name, state, report = sys.argv[1], sys.argv[2], sys.argv[3]
out = open(report, "w")
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind("\0" + name)
s.listen(0)
c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
c.connect("\0" + name)
out.write("abstract name squatted\n")
for p in ["reclaim.sock", "reclaimer.sock", "netshim.sock", "dns.sock", "containers/x.sock"]:
    try:
        t = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        t.bind(os.path.join(state, p))
        t.listen(0)
        out.write("bound %s\n" % p)
    except OSError as e:
        out.write("could not bind %s: %s\n" % (p, e.strerror))
out.write("squatting\n")
out.flush()
time.sleep(3600)
`, "netshim-reclaim-"+hex.EncodeToString(sum[:8]), h.stateDir, report)
	if err := squatter.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { squatter.Process.Kill(); squatter.Wait() }()
	ready := func() bool { data, _ := os.ReadFile(report); return strings.Contains(string(data), "squatting\n") }
	if !waitFor(5*time.Second, ready) {
		t.Fatal("the squatter did not start")
	}
	data, _ := os.ReadFile(report)
	if strings.Contains(string(data), "bound ") {
		t.Errorf("an unprivileged process bound a path in the state dir:\n%s", data)
	}
	for i := 0; i < 3; i++ {
		p := h.newProc(fmt.Sprintf("sq%d", i), map[string]string{"netshim/publish": fmt.Sprintf("%d:80", 8080+i)})
		for _, stage := range [][2]string{{"createRuntime", "creating"}, {"poststop", "stopped"}} {
			cmd, errOut := p.hookCmd(stage[0], stage[1], "")
			start := time.Now()
			err, hung := waitBounded(cmd, 5*time.Second)
			if hung || err != nil {
				t.Errorf("%s %s with the names squatted: hung %v after %s: %v %s", stage[0], p.id, hung, time.Since(start).Round(time.Millisecond), err, errOut)
			}
		}
		if i == 2 {
			p.cmd.Process.Kill() // the last teardown after the container is gone
		}
	}
	t.Logf("squatter:\n%s", data)
	assertClean(t, h)
}

// A container id started again after a crash that skipped its poststop
// gets its network every time.
func TestRestartAfterCrash(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	failed := 0
	var last *proc
	for i := 0; i < 12; i++ {
		p := h.newProc("again", map[string]string{"netshim/publish": "8080:80"})
		if errOut, err := p.hook("createRuntime", "creating"); err != nil {
			t.Errorf("start %d: %v %s", i+1, err, errOut)
			failed++
		} else if p.eth0Addr() == "" {
			t.Errorf("start %d: the hook said ok, and eth0 has no address", i+1)
			failed++
		}
		// The container crashes; its runtime never runs poststop. Its
		// netns is destroyed (its veth goes with it) before the id is
		// started again, which frees the netns's inode number for reuse.
		p.cmd.Process.Kill()
		p.cmd.Wait()
		eventually(t, 2*time.Second, "the crashed container's veth goes with its netns", func() bool {
			return !strings.Contains(sandbox.Run(t, "ip", "-o", "link"), "veth")
		})
		time.Sleep(300 * time.Millisecond) // the netns is freed after its links

		last = p
	}
	t.Logf("restarts without network: %d of 12", failed)
	last.mustTeardown()
	h.mustNetshim("gc")
	assertClean(t, h)
}

// gc run in a loop while containers start (30 at the hook level, 20 under
// runc) unwires none of them, and no address is held twice.
func TestGCWhileStarting(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	stop := make(chan struct{})
	var gcs, gcFailed int
	var gcErr string
	var gcWG sync.WaitGroup
	gcWG.Add(1)
	go func() {
		defer gcWG.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if out, errOut, err := h.netshim("", "gc"); err != nil {
				gcFailed++
				gcErr = errOut
			} else {
				_ = out
			}
			gcs++
		}
	}()
	procs := make([]*proc, 30)
	for i := range procs {
		procs[i] = h.newProc(fmt.Sprintf("g%02d", i), map[string]string{"netshim/publish": fmt.Sprintf("%d:80", 11000+i)})
	}
	failed := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errOut, err := p.hook("createRuntime", "creating"); err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
				t.Errorf("setup %s beside gc: %v %s", p.id, err, errOut)
			}
		}()
	}
	var runcs []*container
	for i := 0; i < 20; i++ {
		c := h.newBundle(uniqueID(t, fmt.Sprintf("r%02d", i)), sleeper, "--name", fmt.Sprintf("r%02d", i))
		if err := c.start(); err != nil {
			failed++
			t.Errorf("runc start beside gc: %v", err)
		}
		t.Cleanup(c.stop)
		runcs = append(runcs, c)
	}
	wg.Wait()
	time.Sleep(300 * time.Millisecond) // a few more gc rounds over the finished starts
	close(stop)
	gcWG.Wait()
	lost := 0
	recs := h.records()
	for _, p := range procs {
		if r, ok := recs[p.id]; !ok || p.eth0Addr() == "" || !contains(r.addrs(), p.eth0Addr()) {
			lost++
			t.Errorf("%s lost its network or record: eth0 %q, record %+v", p.id, p.eth0Addr(), r)
		}
	}
	for _, c := range runcs {
		out, _ := c.exec("ip", "-o", "-4", "addr", "show", "eth0")
		if _, ok := recs[c.id]; !ok || !strings.Contains(out, "inet ") {
			lost++
			t.Errorf("runc container %s lost its network or record: %q", c.id, out)
		}
	}
	bad := consistency(t, h, procs)
	for _, b := range bad {
		t.Error(b)
	}
	t.Logf("%d gc runs (%d failed %s); %d of 50 starts failed, %d containers lost network or record, %d inconsistencies",
		gcs, gcFailed, strings.TrimSpace(gcErr), failed, lost, len(bad))
}

// poststop arriving while createRuntime of the same id is in flight, at
// every fault point and at random moments, leaves the state consistent,
// and gc leaves only what is live.
func TestPoststopDuringSetup(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	keep := h.newProc("keep", map[string]string{"netshim/publish": "7999:80"})
	keep.mustSetup()
	points := []string{"setup:record", "setup:ports-reserved", "setup:bridge", "setup:veth", "setup:container", "setup:published", "setup:files"}
	var procs []*proc
	hangs, violations := 0, 0
	seen := map[string]bool{}
	for i := 0; i < 40; i++ {
		p := h.newProc(fmt.Sprintf("race%02d", i), map[string]string{"netshim/publish": fmt.Sprintf("%d:80", 9000+i)})
		procs = append(procs, p)
		fault := ""
		if i < 20 {
			fault = "stop:" + points[i%len(points)]
		}
		setup, setupErr := p.hookCmd("createRuntime", "creating", fault)
		paused := false
		if fault != "" {
			// Every point is on a setup's way: one that never stops it
			// would make this race a different one unnoticed.
			if paused = stoppedOrGone(setup.Process.Pid); !paused {
				t.Errorf("%s: setup never stopped at %s", p.id, fault)
			}
		} else {
			time.Sleep(time.Duration(rand.IntN(15000)) * time.Microsecond)
		}
		teardown, teardownErr := p.hookCmd("poststop", "stopped", "")
		if paused {
			time.Sleep(100 * time.Millisecond)
			setup.Process.Signal(syscall.SIGCONT)
		}
		if err, hung := waitBounded(teardown, 10*time.Second); hung {
			hangs++
			t.Errorf("%s: poststop hung: %v %s", p.id, err, teardownErr)
		}
		if err, hung := waitBounded(setup, 10*time.Second); hung {
			hangs++
			t.Errorf("%s: createRuntime hung: %v %s", p.id, err, setupErr)
		}
		// A teardown leaves deleting the pair to the reclaimer: until
		// then the container's eth0 keeps its address, its host end down.
		waitReclaimers(t)
		for _, b := range consistency(t, h, procs) {
			if !seen[b] {
				seen[b] = true
				violations++
				t.Errorf("after race %d (%s): %s", i, map[bool]string{true: fault, false: "random delay"}[fault != ""], b)
			}
		}
	}
	// The containers go; gc leaves only keep's state.
	for _, p := range procs {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	h.mustNetshim("gc")
	recs := h.records()
	if len(recs) != 1 || recs["keep"].ID != "keep" {
		t.Errorf("records after gc: %v", recs)
	}
	if ports := dnatPorts(t); len(ports) != 1 || ports[7999] == "" {
		t.Errorf("published ports after gc: %v", ports)
	}
	t.Logf("40 races: %d hooks hung, %d inconsistencies", hangs, violations)
	keep.mustTeardown()
	assertClean(t, h)
}

// A full state dir fails the setup cleanly: nothing is left that ps or the
// next setup misreads, and freeing space needs no manual step.
func TestStateDirFull(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	os.MkdirAll(h.stateDir, 0o700)
	sandbox.Run(t, "mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", h.stateDir)
	t.Cleanup(func() { exec.Command("umount", "-l", h.stateDir).Run() })
	a := h.newProc("a", map[string]string{"netshim/publish": "8080:80"})
	a.mustSetup()
	filler := filepath.Join(h.stateDir, "filler")
	exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=4k").Run() // until the tmpfs is full
	b := h.newProc("b", map[string]string{"netshim/publish": "8081:80"})
	errOut, err := b.hook("createRuntime", "creating")
	if err == nil || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "no space left on device") {
		t.Errorf("setup on a full state dir: %v %q", err, errOut)
	}
	if _, ok := h.records()["b"]; ok {
		t.Errorf("a record of the failed setup is left: %+v", h.records()["b"])
	}
	if out := h.mustNetshim("ps"); strings.Contains(out, "b ") || strings.Count(out, "\n") != 2 {
		t.Errorf("ps after the failed setup:\n%s", out)
	}
	if b.eth0Addr() != "" {
		t.Error("the failed setup left eth0 configured")
	}
	if ports := dnatPorts(t); ports[8081] != "" {
		t.Errorf("the failed setup left its port: %v", ports)
	}
	os.Remove(filler)
	b.mustSetup() // no manual step
	c := h.newProc("c", nil)
	c.mustSetup()
	if b.eth0Addr() != "172.17.0.3" || c.eth0Addr() != "172.17.0.4" {
		t.Errorf("after space came back: b %s, c %s", b.eth0Addr(), c.eth0Addr())
	}
	for _, p := range []*proc{a, b, c} {
		p.mustTeardown()
	}
	assertClean(t, h)
}

// Container ids runc accepts are accepted; what cannot work is refused
// with one line: an id too long for a file name, a name DNS cannot answer.
func TestIDsAndNames(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "data_dir = \""+filepath.Join(t.TempDir(), "data")+"\"\n[networks.dnsnet]\nsubnet = \"198.18.20.0/24\"\n")
	for _, id := range []string{"x,y", "_under", strings.Repeat("a", 129), strings.Repeat("b", 200), "a+b.c-d"} {
		p := h.newProc(id, map[string]string{"netshim/network": "dnsnet"})
		if errOut, err := p.hook("createRuntime", "creating"); err != nil || p.eth0Addr() == "" {
			t.Errorf("id %q (runc accepts it): %v %s", id, err, errOut)
			continue
		}
		p.mustTeardown()
	}
	for _, c := range []struct{ id, name, want string }{
		{strings.Repeat("c", 239), "", `state field id "ccc`},
		{"..", "", `state field id ".."`},
		{"n1", strings.Repeat("n", 64), "annotation netshim/name = \"nnn"},
		{"n2", "a." + strings.Repeat("n", 64), "annotation netshim/name = \"a.nnn"},
	} {
		ann := map[string]string{"netshim/network": "dnsnet"}
		if c.name != "" {
			ann["netshim/name"] = c.name
		}
		p := h.newProc(c.id, ann)
		errOut, err := p.hook("createRuntime", "creating")
		if err == nil || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("id %.10s… name %.10s…: %v %q, want one line with %q", c.id, c.name, err, errOut, c.want)
		}
	}
	assertClean(t, h)
}

// State written by an older format is refused with one line that says what
// to do, before anything is done.
func TestOldState(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	os.MkdirAll(filepath.Join(h.stateDir, "containers"), 0o700)
	os.WriteFile(filepath.Join(h.stateDir, "ports.json"), []byte(`{"tcp/8080":[{"id":"old","name":"old"}]}`), 0o600)
	p := h.newProc("new", nil)
	errOut, err := p.hook("createRuntime", "creating")
	if err == nil || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "older netshim") {
		t.Errorf("setup on old state: %v %q", err, errOut)
	}
	if p.eth0Addr() != "" {
		t.Error("setup on old state wired the container")
	}
}
