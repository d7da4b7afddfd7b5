package main

import (
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// runcResult is `runc run` of a container that exits at once: with netshim
// when the container is its network's only one (its setup installs the
// network's rules and its teardown removes them), with netshim while another
// container keeps the network's rules in place, and without networking.
type runcResult struct {
	alone, with, without []time.Duration
}

// runcRuns times `runc run` of a busybox `true`, alternately with netshim's
// hooks (default bridge) and without networking (a network namespace, no
// hooks).
func runcRuns(netshim, work string, runs int) (*runcResult, error) {
	if _, err := exec.LookPath("runc"); err != nil {
		return nil, fmt.Errorf("runc not installed")
	}
	rootfs := filepath.Join(work, "runc-rootfs")
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	for _, d := range []string{"proc", "dev", "sys", "etc"} {
		os.MkdirAll(filepath.Join(rootfs, d), 0o755)
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox-static not installed")
	}
	data, _ := os.ReadFile(bb)
	os.WriteFile(filepath.Join(rootfs, "bin", "true"), data, 0o755)
	mk := func(name string, withNetshim bool) (string, error) {
		b := filepath.Join(work, name)
		os.MkdirAll(b, 0o755)
		spec := map[string]any{
			"ociVersion": "1.0.2",
			"process":    map[string]any{"terminal": false, "user": map[string]any{"uid": 0, "gid": 0}, "args": []string{"/bin/true"}, "cwd": "/", "env": []string{"PATH=/bin"}},
			"root":       map[string]any{"path": rootfs},
			"hostname":   name,
			"mounts":     []any{map[string]any{"destination": "/proc", "type": "proc", "source": "proc"}},
			"linux":      map[string]any{"namespaces": []any{map[string]any{"type": "pid"}, map[string]any{"type": "mount"}, map[string]any{"type": "uts"}, map[string]any{"type": "network"}}},
		}
		d, _ := json.Marshal(spec)
		if err := os.WriteFile(filepath.Join(b, "config.json"), d, 0o644); err != nil {
			return "", err
		}
		if withNetshim {
			if err := run(netshim, "--state-dir", "/run/netshim-bench-runc", "bundle", b); err != nil {
				return "", err
			}
		}
		return b, nil
	}
	with, err := mk("with", true)
	if err != nil {
		return nil, err
	}
	without, err := mk("without", false)
	if err != nil {
		return nil, err
	}
	r := &runcResult{}
	runAll := func(tag string, pairs ...struct {
		dir string
		out *[]time.Duration
	}) error {
		for i := 0; i < runs+2; i++ {
			for _, b := range pairs {
				start := time.Now()
				if err := run("runc", "--root", "/run/runc-bench", "run", "--bundle", b.dir, fmt.Sprintf("r%s%d%s", tag, i, filepath.Base(b.dir))); err != nil {
					return err
				}
				if i >= 2 { // the first runs warm caches
					*b.out = append(*b.out, time.Since(start))
				}
			}
		}
		return nil
	}
	type pair = struct {
		dir string
		out *[]time.Duration
	}
	if err := runAll("a", pair{with, &r.alone}, pair{without, &r.without}); err != nil {
		return nil, err
	}
	// A long-lived container on the default network, as on a busy host.
	cs, err := spawn(1, work)
	if err != nil {
		return nil, err
	}
	defer reap(cs)
	keeper := &netshimTool{bin: netshim, backend: "nftables", config: "/dev/null", state: "/run/netshim-bench-runc"}
	cs[0].port = 19999
	if err := keeper.bundle(cs[0]); err != nil {
		return nil, err
	}
	if err := keeper.setup(cs[0]); err != nil {
		return nil, err
	}
	if err := runAll("b", pair{with, &r.with}); err != nil {
		return nil, err
	}
	keeper.hook(cs[0], "poststop", "stopped")
	exec.Command("ip", "link", "del", "netshim0").Run()
	return r, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

func render(samples []*sample, rr *runcResult, skipped []string, ns []int, faults map[int][]time.Duration, fs floors) string {
	var b strings.Builder
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(&b, "# netshim benchmark\n\n%s, kernel %s, %d CPUs. Each row: the whole hook process per container (bridge network,\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), strings.TrimSpace(string(kernel)), numCPU())
	b.WriteString("one published port), for N containers (processes in fresh netns) set up one after another, then torn down;\n")
	b.WriteString("at small N that is repeated until there are at least 100 samples (rounds of N, each from no container, the\n")
	b.WriteString("tools taking turns round by round so that they are compared at the same moments). At large N each tool has\n")
	b.WriteString("one round, one after the other; netshim-nftables has a second one after the other tools', at another moment.\n")
	b.WriteString("Teardown runs while the container's process is alive (the tool must remove the veth itself), except in the\n")
	b.WriteString("\"after exit\" rows, where the process is killed first, as before a runtime's poststop. Bundles are on tmpfs\n")
	b.WriteString("(as in Podman's run root); netshim writes each container's /etc/hosts and /etc/resolv.conf there (the CNI\n")
	b.WriteString("plugins and netavark write no files: Podman does). Times in ms.\n\n")
	b.WriteString(faultLine(faults, ns))
	b.WriteString(floorLines(fs, ns))
	base := map[int]*sample{}
	for _, s := range samples {
		if s.tool == "netshim-nftables" {
			base[s.n] = s
		}
	}
	b.WriteString("| tool | N | setup p50 | p90 | max | teardown p50 | p90 | max | setup ×netshim | teardown ×netshim |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range samples {
		ratio := func(a, bse time.Duration) string {
			if bse == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f×", float64(a)/float64(bse))
		}
		sr, tr := "-", "-"
		if bs := base[s.n]; bs != nil {
			sr, tr = ratio(pct(s.setup, .5), pct(bs.setup, .5)), ratio(pct(s.teardown, .5), pct(bs.teardown, .5))
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.tool, s.n,
			ms(pct(s.setup, .5)), ms(pct(s.setup, .9)), ms(pct(s.setup, 1)),
			ms(pct(s.teardown, .5)), ms(pct(s.teardown, .9)), ms(pct(s.teardown, 1)), sr, tr)
	}
	if len(ns) >= 2 {
		b.WriteString("\nGrowth, p50 at the largest N over p50 at the smallest:\n\n")
		for _, s := range samples {
			if s.n != ns[len(ns)-1] {
				continue
			}
			for _, o := range samples {
				if o.tool == s.tool && o.n == ns[0] {
					fmt.Fprintf(&b, "- %s: setup %.2f×, teardown %.2f×\n", s.tool,
						float64(pct(s.setup, .5))/float64(pct(o.setup, .5)), float64(pct(s.teardown, .5))/float64(pct(o.teardown, .5)))
				}
			}
		}
	}
	if big := ns[len(ns)-1]; big-10*inRound >= inRound {
		fmt.Fprintf(&b, "\nWithin the rounds of %d: p50 of the containers set up (torn down) with at most %d on the network, against\n", big, inRound)
		fmt.Fprintf(&b, "those with more than %d. Both come from the same rounds, seconds apart, so the ratio is what N costs, whatever\n", big-10*inRound)
		b.WriteString("the machine's speed did between the rounds of one row and those of another:\n\n")
		for _, s := range samples {
			if s.n != big {
				continue
			}
			few, many := byCount(s.setup, big)
			fewT, manyT := byCount(reversed(s.teardown, big), big)
			fmt.Fprintf(&b, "- %s: setup %s / %s (%.2f×), teardown %s / %s (%.2f×)\n", s.tool,
				ms(pct(few, .5)), ms(pct(many, .5)), float64(pct(many, .5))/float64(pct(few, .5)),
				ms(pct(fewT, .5)), ms(pct(manyT, .5)), float64(pct(manyT, .5))/float64(pct(fewT, .5)))
		}
	}
	if rr != nil {
		fmt.Fprintf(&b, "\n`runc run` of a container that exits at once (%d runs each, p50 / p90 ms):\n\n", len(rr.with))
		fmt.Fprintf(&b, "- without networking (a network namespace, no hooks): %s / %s\n", ms(pct(rr.without, .5)), ms(pct(rr.without, .9)))
		fmt.Fprintf(&b, "- with netshim, another container on the network: %s / %s (+%s)\n", ms(pct(rr.with, .5)), ms(pct(rr.with, .9)), ms(pct(rr.with, .5)-pct(rr.without, .5)))
		fmt.Fprintf(&b, "- with netshim, the network's only container (its hooks also install and remove the network's rules): %s / %s (+%s)\n",
			ms(pct(rr.alone, .5)), ms(pct(rr.alone, .9)), ms(pct(rr.alone, .5)-pct(rr.without, .5)))
	}
	for _, s := range skipped {
		fmt.Fprintf(&b, "\nNot measured: %s.\n", s)
	}
	b.WriteString("\n![latency against N](latency.png)\n")
	return b.String()
}

// inRound is how many containers count as few in the within-round
// comparison; ten times as many, at the end of a round, count as many.
const inRound = 20

// byCount splits the latencies of rounds of n containers, in the order they
// ran, into those that ran with at most inRound containers on the network
// and those with more than n-10*inRound.
func byCount(d []time.Duration, n int) (few, many []time.Duration) {
	for i, x := range d {
		switch k := i % n; {
		case k < inRound:
			few = append(few, x)
		case k >= n-10*inRound:
			many = append(many, x)
		}
	}
	return few, many
}

// reversed reverses each round of n teardowns: the first container of a
// round is torn down with all n on the network, the last one alone.
func reversed(d []time.Duration, n int) []time.Duration {
	out := make([]time.Duration, len(d)/n*n)
	for i, x := range d[:len(out)] {
		r, k := i/n, i%n
		out[r*n+n-1-k] = x
	}
	return out
}

func numCPU() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(data), "processor\t:")
}

var palette = []color.RGBA{{31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255}, {214, 39, 40, 255}, {148, 103, 189, 255}, {140, 86, 75, 255}}

// chart draws p50 setup and teardown latency against N, one line per tool,
// on a logarithmic time axis.
func chart(samples []*sample, ns []int, path string) error {
	const W, H, panelW, top, bottom, left = 1000, 460, 430, 50, 380, 70
	img := image.NewRGBA(image.Rect(0, 0, W, H))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	text := func(x, y int, s string, c color.Color) {
		d := &font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
		d.DrawString(s)
	}
	line := func(x0, y0, x1, y1 int, c color.Color) {
		steps := int(math.Max(math.Abs(float64(x1-x0)), math.Abs(float64(y1-y0))))
		for i := 0; i <= steps; i++ {
			t := float64(i) / math.Max(1, float64(steps))
			x, y := x0+int(t*float64(x1-x0)), y0+int(t*float64(y1-y0))
			img.Set(x, y, c)
			img.Set(x, y+1, c)
		}
	}
	var tools []string
	seen := map[string]bool{}
	lo, hi := math.Inf(1), 0.0
	for _, s := range samples {
		if !seen[s.tool] {
			seen[s.tool] = true
			tools = append(tools, s.tool)
		}
		for _, d := range []time.Duration{pct(s.setup, .5), pct(s.teardown, .5)} {
			v := float64(d) / float64(time.Millisecond)
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if len(samples) == 0 {
		return fmt.Errorf("no samples")
	}
	lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
	yOf := func(v float64) int {
		return bottom - int((math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*float64(bottom-top))
	}
	gray := color.RGBA{200, 200, 200, 255}
	text(left, 25, "p50 latency per container (ms, log scale) against N containers", color.Black)
	for p, title := range []string{"setup", "teardown"} {
		x0 := left + p*(panelW+60)
		text(x0+panelW/2-20, top-8, title, color.Black)
		line(x0, top, x0, bottom, color.Black)
		line(x0, bottom, x0+panelW, bottom, color.Black)
		for v := lo; v <= hi*1.001; v *= 10 {
			y := yOf(v)
			line(x0, y, x0+panelW, y, gray)
			text(x0-45, y+4, fmt.Sprintf("%g", v), color.Black)
		}
		xOf := func(i int) int { return x0 + 40 + i*(panelW-80)/max(1, len(ns)-1) }
		for i, n := range ns {
			text(xOf(i)-10, bottom+18, fmt.Sprintf("N=%d", n), color.Black)
		}
		for ti, tool := range tools {
			c := palette[ti%len(palette)]
			px, py := -1, -1
			for i, n := range ns {
				for _, s := range samples {
					if s.tool != tool || s.n != n {
						continue
					}
					d := pct(s.setup, .5)
					if p == 1 {
						d = pct(s.teardown, .5)
					}
					x, y := xOf(i), yOf(float64(d)/float64(time.Millisecond))
					draw.Draw(img, image.Rect(x-3, y-3, x+4, y+4), image.NewUniform(c), image.Point{}, draw.Src)
					if px >= 0 {
						line(px, py, x, y, c)
					}
					px, py = x, y
				}
			}
		}
	}
	for ti, tool := range tools {
		c := palette[ti%len(palette)]
		x := left + (ti%3)*300
		y := bottom + 40 + (ti/3)*16
		draw.Draw(img, image.Rect(x, y-8, x+14, y+2), image.NewUniform(c), image.Point{}, draw.Src)
		text(x+20, y, tool, color.Black)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return png.Encode(f, img)
}

// faultLine says what a page fault cost before the rounds of each N (see
// faultCost): the machine's speed, as netshim feels it, when the rows were
// measured.
func faultLine(faults map[int][]time.Duration, ns []int) string {
	us := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e3) }
	if parts := probeParts(faults, ns, us, " µs"); len(parts) > 0 {
		return "A page fault (touching a fresh anonymous page, the machine's speed as a hook feels it) cost " + strings.Join(parts, "; ") + ".\n\n"
	}
	return ""
}

// probeParts says, for each N probed, the median probe before its rounds
// and the range, in the unit format gives.
func probeParts(probes map[int][]time.Duration, ns []int, format func(time.Duration) string, unit string) []string {
	var parts []string
	for _, n := range ns {
		d := probes[n]
		if len(d) == 0 {
			continue
		}
		count := fmt.Sprintf("%d probes", len(d))
		if len(d) == 1 {
			count = "1 probe"
		}
		parts = append(parts, fmt.Sprintf("%s%s before the rounds of %d (%s, %s-%s)", format(pct(d, .5)), unit, n, count, format(pct(d, 0)), format(pct(d, 1))))
	}
	return parts
}
