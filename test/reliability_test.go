package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netshim/netshim/internal/sandbox"
)

// hookWithFault runs the hook with the test-only fault switch set and
// reports whether it was killed by SIGKILL.
func (p *proc) hookWithFault(stage, status, point string) bool {
	cmd := exec.Command(netshimBin, "--config", p.h.config, "--state-dir", p.h.stateDir, "hook", stage)
	cmd.Env = append(os.Environ(), "NETSHIM_FAULT="+point)
	cmd.Stdin = strings.NewReader(p.state(status))
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	return false
}

// hostState is everything netshim keeps on the host, as text to compare.
func hostState(t *testing.T, h *host) string {
	t.Helper()
	waitReclaimers(t)
	var b strings.Builder
	links := sandbox.Run(t, "ip", "-o", "link", "show", "type", "veth")
	var names []string
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			names = append(names, f[1])
		}
	}
	sort.Strings(names)
	fmt.Fprintf(&b, "veths: %v\n", names)
	b.WriteString(sandbox.Run(t, "nft", "-s", "list", "ruleset"))
	var files []string
	filepath.Walk(h.stateDir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && fi.Name() != "hook.log" {
			data, _ := os.ReadFile(p)
			// Allocation hints move; the rest must be exact.
			files = append(files, strings.TrimPrefix(p, h.stateDir)+" "+stripLow(string(data)))
		}
		return nil
	})
	sort.Strings(files)
	b.WriteString(strings.Join(files, "\n"))
	fmt.Fprintf(&b, "\nresponders: %d\n", len(responders()))
	return b.String()
}

// stripLow drops from a JSON state file what legitimately moves between
// runs: the allocation hint and the responder's process identity.
func stripLow(s string) string {
	var v any
	if json.Unmarshal([]byte(s), &v) != nil {
		return s
	}
	var strip func(any)
	strip = func(v any) {
		switch m := v.(type) {
		case map[string]any:
			for _, k := range []string{"low", "pid", "start"} {
				delete(m, k)
			}
			for _, x := range m {
				strip(x)
			}
		case []any:
			for _, x := range m {
				strip(x)
			}
		}
	}
	strip(v)
	out, _ := json.MarshalIndent(v, "", " ")
	return string(out)
}

// A hook killed with SIGKILL at any point leaves only what gc, or the next
// setup, undoes: afterwards the host holds exactly the live container's
// state.
func TestHookKilledAnywhere(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "data_dir = \""+filepath.Join(t.TempDir(), "data")+"\"\n")
	h.mustNetshim("network", "create", "--subnet", "198.18.0.0/24", "solo")
	keep := h.newProc("keep", map[string]string{"netshim/name": "keep", "netshim/publish": "8080:80"})
	keep.mustSetup()
	// One full cycle on solo, so its state file exists in the baseline.
	warm := h.newProc("warm", map[string]string{"netshim/network": "solo"})
	warm.mustSetup()
	warm.mustTeardown()
	baseline := hostState(t, h)

	setupPoints := []string{"setup:record", "setup:ports-reserved", "setup:bridge", "setup:rules", "setup:veth",
		"setup:container", "setup:published", "setup:responder", "setup:files"}
	tried := 0
	recover := func(i int) {
		if i%2 == 0 {
			out := h.mustNetshim("gc")
			if !strings.Contains(out, "container") {
				t.Errorf("gc reported nothing:\n%s", out)
			}
			return
		}
		// The next setup undoes a crashed one, cheaply, under the lock.
		next := h.newProc(fmt.Sprintf("next%d", i), nil)
		next.mustSetup()
		next.mustTeardown()
	}
	for i, point := range setupPoints {
		for _, network := range []string{"bridge", "solo"} {
			// The bridge's rules are in already (keep's), and only user
			// networks have a responder: those points are not on the way.
			if network == "bridge" && (point == "setup:rules" || point == "setup:responder") {
				continue
			}
			id := fmt.Sprintf("crash%d%s", i, network)
			ann := map[string]string{"netshim/network": network, "netshim/publish": fmt.Sprintf("%d:80", 9000+i)}
			p := h.newProc(id, ann)
			if !p.hookWithFault("createRuntime", "creating", point) {
				t.Errorf("%s on %s: hook was not killed", point, network)
				p.mustTeardown()
				continue
			}
			tried++
			recover(i)
			if got := hostState(t, h); got != baseline {
				t.Errorf("after a kill at %s on %s:\n--- want\n%s\n--- got\n%s", point, network, baseline, got)
			}
			p.cmd.Process.Kill()
		}
	}
	for i, point := range []string{"teardown:link", "teardown:ports", "teardown:address", "teardown:detached"} {
		p := h.newProc(fmt.Sprintf("td%d", i), map[string]string{"netshim/network": "solo", "netshim/publish": "7000:80"})
		p.mustSetup()
		p.cmd.Process.Kill() // poststop comes after the container is gone
		p.cmd.Wait()
		if !p.hookWithFault("poststop", "stopped", point) {
			t.Errorf("%s: hook was not killed", point)
			continue
		}
		tried++
		if i%2 == 0 {
			h.mustNetshim("gc")
		} else {
			p.mustTeardown() // poststop run again
		}
		if got := hostState(t, h); got != baseline {
			t.Errorf("after a kill at %s:\n--- want\n%s\n--- got\n%s", point, baseline, got)
		}
	}
	t.Logf("fault points tried: %d", tried)
	keep.mustIn("ping", "-c1", "-W2", "172.17.0.1")
	keep.mustTeardown()
	assertClean(t, h)
}

// A setup wires its container's own links after releasing the lock. One
// stopped there (as a slow hook would be) is not mistaken for a crashed
// one: gc and other setups run meanwhile and leave it alone, and it
// finishes when it resumes.
func TestSetupInFlightNotReaped(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	slow := h.newProc("slow", map[string]string{"netshim/publish": "8080:80"})
	cmd := exec.Command(netshimBin, "--config", h.config, "--state-dir", h.stateDir, "hook", "createRuntime")
	cmd.Env = append(os.Environ(), "NETSHIM_FAULT=stop:setup:veth")
	cmd.Stdin = strings.NewReader(slow.state("creating"))
	var errOut strings.Builder
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := func() bool {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
		f := strings.Fields(string(data))
		return len(f) > 2 && f[2] == "T"
	}
	if !waitFor(5*time.Second, stopped) {
		t.Fatalf("hook did not stop at setup:veth: %s", errOut.String())
	}
	other := h.newProc("other", nil)
	other.mustSetup() // takes the lock, looks for crashed setups
	if out := h.mustNetshim("gc"); strings.Contains(out, "slow") {
		t.Errorf("gc took the setup in flight for a crashed one:\n%s", out)
	}
	cmd.Process.Signal(syscall.SIGCONT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("resumed setup: %v %s", err, errOut.String())
	}
	slow.mustIn("ping", "-c1", "-W2", "172.17.0.1")
	if out := slow.mustIn("ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(out, "172.17.0.2/16") {
		t.Errorf("slow container's address: %s", out)
	}
	slow.mustTeardown()
	other.mustTeardown()
	assertClean(t, h)
}

// gc reclaims a record whose process is gone even if its PID now belongs to
// another process, and leaves that process alone.
func TestGCReusedPID(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	a := h.newProc("a", nil)
	a.mustSetup()
	b := h.newProc("b", nil)
	b.mustSetup()
	// a's container dies; its PID is "reused" by an unrelated process: the
	// record is pointed at it, as a reused PID would be.
	a.cmd.Process.Kill()
	a.cmd.Wait()
	other := exec.Command("sleep", "1000")
	other.Start()
	defer other.Process.Kill()
	rec := filepath.Join(h.stateDir, "containers", "a.json")
	var fields map[string]any
	data, _ := os.ReadFile(rec)
	if err := json.Unmarshal(data, &fields); err != nil || fields["container"].(map[string]any)["pid"] != float64(a.pid) {
		t.Fatalf("record of a: %v %s", err, data)
	}
	fields["container"].(map[string]any)["pid"] = other.Process.Pid
	data, _ = json.Marshal(fields)
	os.WriteFile(rec, data, 0o600)
	out := h.mustNetshim("gc")
	if !strings.Contains(out, "container a (a): its process is gone") || strings.Contains(out, "container b") {
		t.Errorf("gc:\n%s", out)
	}
	if err := other.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("gc touched the process that reused the PID: %v", err)
	}
	if _, err := os.Stat(rec); err == nil {
		t.Error("a's record kept")
	}
	b.mustIn("ping", "-c1", "-W2", "172.17.0.1")
	if out := h.mustNetshim("gc"); out != "" {
		t.Errorf("second gc removed more:\n%s", out)
	}
	b.mustTeardown()
	assertClean(t, h)
}

// 50 containers set up at once on one network get 50 distinct addresses
// and all answer; 50 teardowns at once leave nothing.
func TestHookParallel(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	const n = 50
	procs := make([]*proc, n)
	for i := range procs {
		procs[i] = h.newProc(fmt.Sprintf("p%02d", i), map[string]string{"netshim/publish": fmt.Sprintf("%d:80", 10000+i)})
	}
	run := func(stage, status string) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if errOut, err := p.hook(stage, status); err != nil {
					t.Errorf("%s %s: %v %s", stage, p.id, err, errOut)
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	setup := run("createRuntime", "creating")
	seen := map[string]string{}
	for _, p := range procs {
		out := p.mustIn("ip", "-o", "-4", "addr", "show", "eth0")
		f := strings.Fields(out)
		if len(f) < 4 {
			t.Fatalf("%s: %s", p.id, out)
		}
		if other, dup := seen[f[3]]; dup {
			t.Errorf("%s and %s both have %s", p.id, other, f[3])
		}
		seen[f[3]] = p.id
	}
	var wg sync.WaitGroup
	for addr := range seen {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := strings.Split(addr, "/")[0]
			if out, err := exec.Command("ping", "-c1", "-W2", ip).CombinedOutput(); err != nil {
				t.Errorf("%s does not answer: %s", ip, out)
			}
		}()
	}
	wg.Wait()
	teardown := run("poststop", "stopped")
	t.Logf("50 parallel setups: %v wall; 50 parallel teardowns: %v wall", setup.Round(time.Millisecond), teardown.Round(time.Millisecond))
	assertClean(t, h)
	if left, _ := os.ReadDir(filepath.Join(h.stateDir, "ports")); len(left) > 0 {
		t.Error("port reservations left")
	}
}

// soakCycles is how many start/stop cycles TestSoak runs: 100 in make
// test, 1,000 in make soak (NETSHIM_SOAK_CYCLES).
func soakCycles() int {
	if n, err := strconv.Atoi(os.Getenv("NETSHIM_SOAK_CYCLES")); err == nil && n > 0 {
		return n
	}
	return 100
}

func countFiles(dir string) int {
	n := 0
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// Start/stop cycles at the hook level, alternating the default bridge with
// a published port and a user network with its responder: afterwards no
// link, rule, address, record or helper process is left, and the state dir
// holds as many files as after the first cycle.
func TestSoak(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "data_dir = \""+filepath.Join(t.TempDir(), "data")+"\"\n")
	h.mustNetshim("network", "create", "--subnet", "198.18.0.0/24", "soak")
	cycle := func(i int) {
		ann := map[string]string{"netshim/publish": "8080:80,53/udp"}
		if i%2 == 1 {
			ann = map[string]string{"netshim/network": "soak", "netshim/name": "s"}
		}
		p := h.newProc(fmt.Sprintf("c%d", i), ann)
		p.mustSetup()
		p.cmd.Process.Kill() // the container exits, then poststop runs
		p.cmd.Wait()
		p.mustTeardown()
	}
	cycle(0)
	cycle(1)
	files := countFiles(h.stateDir)
	n := soakCycles()
	start := time.Now()
	for i := 2; i < n; i++ {
		cycle(i)
	}
	t.Logf("%d cycles in %v (%v a cycle)", n, time.Since(start).Round(time.Millisecond), (time.Since(start) / time.Duration(n-2)).Round(time.Microsecond))
	assertClean(t, h)
	if got := countFiles(h.stateDir); got != files {
		t.Errorf("state dir has %d files, had %d after the first cycles", got, files)
	}
	if r := responders(); len(r) != 0 {
		t.Errorf("responders left: %v", r)
	}
	if out := sandbox.Run(t, "ip", "-o", "addr"); strings.Contains(out, " 172.17.0.2/") || strings.Contains(out, " 198.18.0.2/") {
		t.Errorf("addresses left:\n%s", out)
	}
}

// A hostile rootfs points /etc/hosts or /etc at host files, or a bind
// mount's source is a symlink: the host file is never written, and the
// container is configured or the create fails clearly.
func TestHookHostileRootfs(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	victimDir := t.TempDir()
	victim := filepath.Join(victimDir, "hosts")
	os.WriteFile(victim, []byte("precious\n"), 0o644)
	cases := map[string]func(p *proc){
		"hosts absolute": func(p *proc) {
			os.MkdirAll(p.bundle+"/rootfs/etc", 0o755)
			os.Symlink(victim, p.bundle+"/rootfs/etc/hosts")
		},
		"hosts dotdot": func(p *proc) {
			os.MkdirAll(p.bundle+"/rootfs/etc", 0o755)
			os.Symlink("../../../../../../.."+victim, p.bundle+"/rootfs/etc/hosts")
		},
		"etc absolute": func(p *proc) { os.Symlink(victimDir, p.bundle+"/rootfs/etc") },
		"etc dotdot":   func(p *proc) { os.Symlink("../../../../../../.."+victimDir, p.bundle+"/rootfs/etc") },
		"resolv absolute": func(p *proc) {
			os.MkdirAll(p.bundle+"/rootfs/etc", 0o755)
			os.Symlink(victim, p.bundle+"/rootfs/etc/resolv.conf")
		},
	}
	i := 0
	for name, mk := range cases {
		p := h.newProc(fmt.Sprintf("h%d", i), nil)
		i++
		mk(p)
		errOut, err := p.hook("createRuntime", "creating")
		if err != nil && !strings.Contains(errOut, "netshim: refusing to write") {
			t.Errorf("%s: unclear failure %q", name, errOut)
		}
		if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
			t.Fatalf("%s: the host file was written: %q", name, data)
		}
		p.mustTeardown()
	}
	// A bind mount over /etc/hosts whose source is a symlink to a host file.
	p := h.newProc("bind", nil)
	link := filepath.Join(p.bundle, "hosts-link")
	os.Symlink(victim, link)
	spec := fmt.Sprintf(`{"ociVersion":"1.0.2","hostname":"x","root":{"path":"rootfs"},"mounts":[{"destination":"/etc/hosts","type":"bind","source":%q,"options":["rbind"]}]}`, link)
	os.WriteFile(filepath.Join(p.bundle, "config.json"), []byte(spec), 0o644)
	if errOut, err := p.hook("createRuntime", "creating"); err == nil || !strings.Contains(errOut, "is a symlink") {
		t.Errorf("symlinked bind source: %v %q", err, errOut)
	}
	if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
		t.Fatalf("bind source: the host file was written: %q", data)
	}
	// poststop after a failed create succeeds and leaves nothing.
	p.mustTeardown()
	assertClean(t, h)
}

// A corrupt state file stops setups with an error naming it; the
// documented recovery (move it aside, run gc) keeps the other containers'
// records and rebuilds their allocations, so no address is handed out twice.
func TestCorruptStateRecovery(t *testing.T) {
	if !sandbox.Enter(t) {
		return
	}
	h := newHost(t, "")
	a := h.newProc("a", map[string]string{"netshim/publish": "8080:80"})
	a.mustSetup()
	netFile := filepath.Join(h.stateDir, "networks", "bridge.json")
	os.WriteFile(netFile, []byte(`{"name": "bridge", "subnet": `), 0o600)
	b := h.newProc("b", map[string]string{"netshim/publish": "8080:80"})
	errOut, err := b.hook("createRuntime", "creating")
	if err == nil || !strings.Contains(errOut, "netshim: state file "+netFile+" is corrupt") || !strings.Contains(errOut, "run `netshim gc`") {
		t.Fatalf("corrupt network state: %v %q", err, errOut)
	}
	// The user moves the bad file aside; the allocation and reservation
	// files are lost too.
	os.Rename(netFile, netFile+".bad")
	os.RemoveAll(filepath.Join(h.stateDir, "networks", "bridge.addrs"))
	os.RemoveAll(filepath.Join(h.stateDir, "ports"))
	out := h.mustNetshim("gc")
	if !strings.Contains(out, "allocation of 172.17.0.2 to a, restored") || !strings.Contains(out, "reservation of port 8080/tcp for a, restored") {
		t.Errorf("gc:\n%s", out)
	}
	if errOut, err := b.hook("createRuntime", "creating"); err == nil || !strings.Contains(errOut, "port 8080/tcp is already allocated by a") {
		t.Errorf("after recovery, a's port is still a's: %v %q", err, errOut)
	}
	b.writeSpec(nil)
	b.mustSetup()
	if out := b.mustIn("ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, "172.17.0.3/16") {
		t.Errorf("after recovery b got %s; a holds 172.17.0.2", out)
	}
	a.mustTeardown()
	b.mustTeardown()
	os.Remove(netFile + ".bad")
	assertClean(t, h)
}
