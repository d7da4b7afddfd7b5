// Command bench measures, in one run on one machine, the per-container
// setup and teardown latency of netshim (both firewall backends), the CNI
// reference plugins (bridge + host-local + portmap, through cnitool) and
// netavark, for N containers (processes in fresh netns) with one published
// port each; and `runc run` of a container that exits at once, with netshim
// and without networking. It must run as root inside a throwaway network
// and mount namespace: `make bench` does that.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var (
	flagN       = flag.String("n", "20,1000", "container counts")
	flagOut     = flag.String("out", "bench", "where results.md and latency.png go")
	flagNetshim = flag.String("netshim", "bin/netshim", "netshim binary")
	flagCNI     = flag.String("cni", "bench/out/bin", "directory of the CNI plugins and cnitool")
	flagRuns    = flag.Int("runc-runs", 20, "runc run repetitions")
	flagConnect = flag.Int("connect-runs", 100, "network connect/disconnect samples (0: none)")
	flagOverlay = flag.Int("overlay-runs", 200, "overlay network starts (and as many on a user bridge network) to time (0: none)")
	flagTools   = flag.String("tools", "netshim-nftables,netshim-iptables,netshim-nftables-ipv6,cni,netavark", "tools to measure")
	flagSamples = flag.Int("min-samples", 100, "repeat a measurement at small N until it has this many samples")
	flagNoop    = flag.String("noop", "bench/out/noop", "a Go program that does nothing, built as netshim is")
	flagDNS     = flag.Int("dns", 2000, "DNS responder queries of each kind (local, forwarded); 0 skips them")
	flagBase    = flag.String("baseline", "", "another netshim binary (an older build) measured beside -netshim as baseline-nftables and baseline-iptables")
)

// container is a process in a fresh netns standing in for a container.
type container struct {
	i      int
	id     string
	pid    int
	reaped bool
	dir    string // bundle
	port   int
}

// kill ends the container's process and reaps it.
func (c *container) kill() {
	if c.reaped {
		return
	}
	unix.Kill(c.pid, unix.SIGKILL)
	var ws unix.WaitStatus
	unix.Wait4(c.pid, &ws, 0, nil)
	c.reaped = true
}

func (c *container) netns() string { return fmt.Sprintf("/proc/%d/ns/net", c.pid) }

// tool is one implementation under test.
type tool interface {
	name() string
	// available says why the tool cannot run, or "".
	available() string
	prepare(work string) error
	setup(c *container) error
	teardown(c *container) error
	cleanup()
}

// bundler is a tool that needs a container's inputs written before its
// setup, as a runtime writes the bundle before it runs hooks: that is not
// part of the tool's time.
type bundler interface {
	bundle(c *container) error
}

// sample is the latencies of one tool at one N.
type sample struct {
	tool     string
	n        int
	setup    []time.Duration
	teardown []time.Duration
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	idx := int(p * float64(len(s)-1))
	return s[idx]
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func spawn(n int, work string) ([]*container, error) {
	self, _ := os.Readlink("/proc/self/ns/net")
	cs := make([]*container, n)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return nil, err
	}
	for i := range cs {
		// Forked without a pidfd, unlike exec.Cmd's Start: the bench would
		// hold a descriptor per container, and every hook it then spawns
		// copies its descriptor table and closes those on exec (0.05 ms
		// more per spawn at 1,000 containers, measured with a static C
		// program). A runtime spawns its hooks from a process of its own.
		pid, err := syscall.ForkExec(unshare, []string{"unshare", "-n", "sleep", "100000"}, &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}})
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(work, fmt.Sprintf("b%d", i))
		os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755)
		cs[i] = &container{i: i, id: fmt.Sprintf("bench%04d", i), pid: pid, dir: dir, port: 20000 + i}
	}
	for _, c := range cs {
		for k := 0; k < 500; k++ {
			ns, _ := os.Readlink(c.netns())
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", c.pid))
			if ns != self && strings.HasSuffix(exe, "/sleep") {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	return cs, nil
}

func reap(cs []*container) {
	for _, c := range cs {
		c.kill()
	}
	quiesce()
}

// quiesce waits until the kernel has destroyed the namespaces of reaped
// containers (their veths are gone): that work runs in the background and
// would otherwise be billed to whatever is measured next.
func quiesce() {
	for i := 0; i < 1200; i++ {
		out, _ := exec.Command("ip", "-o", "link", "show", "type", "veth").Output()
		left := false
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			// The overlay bench's underlay links stay.
			left = left || (l != "" && !strings.Contains(l, ": "+underlayLinkPrefix))
		}
		if !left {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
}

// measure runs setup for every container, then teardown for every one.
// With afterExit the container's process is killed before its teardown,
// as a runtime's poststop comes after the container has exited.
func measure(t tool, n int, work string, afterExit bool) (*sample, error) {
	dir := filepath.Join(work, fmt.Sprintf("%s-%d-%v", t.name(), n, afterExit))
	os.RemoveAll(dir) // an earlier round's bundles: every round starts afresh
	os.MkdirAll(dir, 0o755)
	if err := t.prepare(dir); err != nil {
		return nil, err
	}
	defer t.cleanup()
	cs, err := spawn(n, dir)
	if err != nil {
		return nil, err
	}
	defer reap(cs)
	name := t.name()
	if afterExit {
		name += " (teardown after exit)"
	}
	s := &sample{tool: name, n: n}
	for _, c := range cs {
		if b, ok := t.(bundler); ok {
			if err := b.bundle(c); err != nil {
				return nil, fmt.Errorf("%s bundle %d: %w", t.name(), c.i, err)
			}
		}
		start := time.Now()
		if err := t.setup(c); err != nil {
			return nil, fmt.Errorf("%s setup %d: %w", t.name(), c.i, err)
		}
		s.setup = append(s.setup, time.Since(start))
	}
	for _, c := range cs {
		if afterExit {
			c.kill()
		}
		start := time.Now()
		if err := t.teardown(c); err != nil {
			return nil, fmt.Errorf("%s teardown %d: %w", t.name(), c.i, err)
		}
		s.teardown = append(s.teardown, time.Since(start))
	}
	return s, nil
}

func main() {
	flag.Parse()
	if self, init := mustReadlink("/proc/self/ns/net"), mustReadlink("/proc/1/ns/net"); self == init {
		fmt.Fprintln(os.Stderr, "bench: refusing to run in the machine's own network namespace; use make bench")
		os.Exit(2)
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=755"); err != nil {
		fmt.Fprintln(os.Stderr, "bench: mount /run:", err)
		os.Exit(2)
	}
	run("ip", "link", "set", "lo", "up")
	// Bundles live on the tmpfs just mounted, as in Podman's run root. On
	// a disk-backed /tmp, writing a container's /etc files costs netshim
	// 0.2-0.6 ms more, and far more on ext4 just after many files were
	// deleted (it skips recently deleted inodes when it allocates one,
	// reading their inode table blocks): that measures the disk's recent
	// history, which the bench itself churns, not the tools.
	work, _ := os.MkdirTemp("/run", "netshim-bench")
	defer os.RemoveAll(work)
	netshim, _ := filepath.Abs(*flagNetshim)
	cniDir, _ := filepath.Abs(*flagCNI)
	all := map[string]tool{
		"netshim-nftables": &netshimTool{bin: netshim, backend: "nftables"},
		"netshim-iptables": &netshimTool{bin: netshim, backend: "iptables"},
		// The default network dual stack: an address and the published
		// port in both families.
		"netshim-nftables-ipv6": &netshimTool{bin: netshim, backend: "nftables", label: "netshim-nftables-ipv6", ipv6: true},
		"cni":                   &cniTool{dir: cniDir},
		"netavark":              &netavarkTool{},
	}
	if *flagBase != "" {
		base, _ := filepath.Abs(*flagBase)
		all["baseline-nftables"] = &netshimTool{bin: base, backend: "nftables", label: "baseline-nftables"}
		all["baseline-iptables"] = &netshimTool{bin: base, backend: "iptables", label: "baseline-iptables"}
		if !strings.Contains(*flagTools, "baseline-") {
			// Each backend's row followed by the baseline's.
			var tools []string
			for _, name := range strings.Split(*flagTools, ",") {
				tools = append(tools, name)
				if b, ok := strings.CutPrefix(name, "netshim-"); ok && all["baseline-"+b] != nil {
					tools = append(tools, "baseline-"+b)
				}
			}
			*flagTools = strings.Join(tools, ",")
		}
	}
	var ns []int
	for _, f := range strings.Split(*flagN, ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -n:", err)
			os.Exit(2)
		}
		ns = append(ns, n)
	}
	// One row per tool, N and teardown mode, in the report's order.
	type row struct {
		t         tool
		n         int
		afterExit bool
		s         *sample
	}
	var rows []*row
	var skipped []string
	for _, name := range strings.Split(*flagTools, ",") {
		if name == "" {
			continue // -tools "": runc run only
		}
		t := all[name]
		if t == nil {
			fmt.Fprintln(os.Stderr, "bench: unknown tool", name)
			os.Exit(2)
		}
		if why := t.available(); why != "" {
			skipped = append(skipped, fmt.Sprintf("%s: %s", name, why))
			fmt.Printf("skip %s: %s\n", name, why)
			continue
		}
		for _, n := range ns {
			rows = append(rows, &row{t: t, n: n})
			if name == "netshim-nftables" {
				rows = append(rows, &row{t: t, n: n, afterExit: true})
			}
		}
	}
	// At small N one round is a handful of samples on a machine whose
	// speed drifts (a third, from one minute to the next): rounds, each
	// from no container, are repeated until the percentiles rest on
	// -min-samples, and the tools take turns round by round, so that
	// they are compared at the same moments.
	//
	// At large N every tool gets one round, one after the other, so a slow
	// minute lands on one tool's whole round. The nftables rows, the
	// targets' and the cheapest (a round of 1,000 is ~25 s, the others'
	// minutes), get a second round after every other tool's, at another
	// moment.
	// What a page fault cost, and what a process that does nothing cost,
	// before each round (see faultCost and floor).
	faults := map[int][]time.Duration{}
	floors := newFloors(*flagNoop)
	for _, n := range ns {
		rounds := max(1, (*flagSamples+n-1)/n)
		roundsOf := func(w *row) int {
			if t, ok := w.t.(*netshimTool); ok && rounds == 1 && t.backend == "nftables" {
				return 2
			}
			return rounds
		}
		for r := 0; r < max(rounds, 2); r++ {
			faults[n] = append(faults[n], faultCost())
			floors.probe(n)
			for _, w := range rows {
				if w.n != n || r >= roundsOf(w) {
					continue
				}
				fmt.Printf("measuring %s, N=%d%s, round %d/%d ...\n", w.t.name(), n, map[bool]string{true: ", teardown after exit"}[w.afterExit], r+1, roundsOf(w))
				one, err := measure(w.t, n, work, w.afterExit)
				if err != nil {
					fmt.Fprintln(os.Stderr, "bench:", err)
					os.Exit(1)
				}
				if w.s == nil {
					w.s = one
				} else {
					w.s.setup = append(w.s.setup, one.setup...)
					w.s.teardown = append(w.s.teardown, one.teardown...)
				}
			}
		}
	}
	var samples []*sample
	for _, w := range rows {
		samples = append(samples, w.s)
		fmt.Printf("%s N=%d: setup p50 %v  teardown p50 %v\n", w.s.tool, w.n, pct(w.s.setup, .5).Round(10*time.Microsecond), pct(w.s.teardown, .5).Round(10*time.Microsecond))
	}
	fmt.Println("measuring runc run ...")
	rr, err := runcRuns(netshim, work, *flagRuns)
	if err != nil {
		// Reported, not fatal: the per-container results stand on their own.
		skipped = append(skipped, "runc run: "+err.Error())
		rr = nil
	}
	paragraphs := "" // connect/disconnect and the overlay, after the tables
	if *flagConnect > 0 {
		fmt.Println("measuring network connect and disconnect ...")
		r, err := connectRuns(netshim, work, 20, *flagConnect)
		if err != nil {
			skipped = append(skipped, "network connect: "+err.Error())
		} else {
			paragraphs += connectLine(r, 20)
		}
	}
	if *flagOverlay > 0 {
		fmt.Println("measuring an overlay network ...")
		r, err := overlayRuns(netshim, work, 20, *flagOverlay)
		if err != nil {
			skipped = append(skipped, "overlay: "+err.Error())
		} else {
			paragraphs += overlayLine(r, 20)
		}
	}
	var dnsRes []*dnsResult
	if *flagDNS > 0 {
		builds := [][2]string{{"netshim", netshim}}
		if *flagBase != "" {
			base, _ := filepath.Abs(*flagBase)
			builds = append(builds, [2]string{"baseline", base})
		}
		stop, err := serveUpstream()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: dns upstream:", err)
			os.Exit(1)
		}
		for _, b := range builds {
			fmt.Printf("measuring the DNS responder of %s ...\n", b[0])
			r, err := measureDNS(b[1], b[0], *flagDNS, work)
			if err != nil {
				skipped = append(skipped, "dns "+b[0]+": "+err.Error())
				continue
			}
			dnsRes = append(dnsRes, r)
		}
		stop()
	}
	report := render(samples, rr, skipped, ns, faults, floors) + paragraphs + dnsLines(dnsRes)
	fmt.Print(report)
	os.MkdirAll(*flagOut, 0o755)
	if err := os.WriteFile(filepath.Join(*flagOut, "results.md"), []byte(report), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if err := chart(samples, ns, filepath.Join(*flagOut, "latency.png")); err != nil {
		fmt.Fprintln(os.Stderr, "bench: chart:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s and %s\n", filepath.Join(*flagOut, "results.md"), filepath.Join(*flagOut, "latency.png"))
}

// faultCost is what a page fault costs the machine at the moment: the time
// to touch the pages of a fresh anonymous mapping, per page (the median of
// five mappings of 256 pages). On this VM most of it is the work for the
// page, not the fault's entry: populating the pages without a fault
// (MADV_POPULATE_WRITE) cost 1.6-1.75 µs against 1.84-2.17 for touching
// them. The machine is a nested guest (PVM), so part of that work is its
// host's, which a profile taken in the guest does not see. A busy host
// makes it slower: 1.3-1.5 µs in the machine's fast periods, 2.1-2.5 in
// its slow ones. A setup takes some 440 faults, and its start and exit are
// made of the same page work: the figure reads directly one of the costs
// that move netshim most, beside the other tools' own times (which move
// less). It is one reading, not the whole: run 18 measured netshim's
// slowest N = 20 rows since run 9 with a median probe of 1.74 µs, and run
// 24 met every target with 2.03.
func faultCost() time.Duration {
	const pages = 256
	var ds []time.Duration
	for range 5 {
		m, err := unix.Mmap(-1, 0, pages*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return 0
		}
		ds = append(ds, touchPages(m))
		unix.Munmap(m)
	}
	return pct(ds, .5)
}

// touchPages writes a byte to each page of m and returns the time per page.
func touchPages(m []byte) time.Duration {
	page := os.Getpagesize()
	start := time.Now()
	for i := 0; i < len(m); i += page {
		m[i] = 1
	}
	return time.Since(start) / time.Duration(len(m)/page)
}

func mustReadlink(p string) string {
	s, _ := os.Readlink(p)
	return s
}
