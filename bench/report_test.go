package main

import (
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestByCount checks which runs of two rounds of 250 count as made with few
// containers on the network and which with many, for setups (in the order
// they ran) and for teardowns (each round reversed first).
func TestByCount(t *testing.T) {
	const n = 250
	var d []time.Duration
	for r := 0; r < 2; r++ {
		for k := 0; k < n; k++ {
			d = append(d, time.Duration(r*1000+k))
		}
	}
	few, many := byCount(d, n)
	if len(few) != 2*inRound || few[0] != 0 || few[inRound-1] != inRound-1 || few[inRound] != 1000 {
		t.Errorf("setups with few containers: %v", few)
	}
	if len(many) != 2*10*inRound || many[0] != n-10*inRound || many[len(many)-1] != 1000+n-1 {
		t.Errorf("setups with many containers: %v", many)
	}
	fewT, manyT := byCount(reversed(d, n), n)
	// The last teardowns of a round ran with the fewest containers left.
	if !slices.Contains(fewT, n-1) || !slices.Contains(fewT, 1000+n-inRound) || slices.Contains(fewT, 0) {
		t.Errorf("teardowns with few containers: %v", fewT)
	}
	if !slices.Contains(manyT, 0) || !slices.Contains(manyT, 1000+10*inRound-1) || slices.Contains(manyT, n-1) {
		t.Errorf("teardowns with many containers: %v", manyT)
	}
	if got := reversed(d[:n+7], n); len(got) != n || got[0] != n-1 {
		t.Errorf("a partial round is left out: got %d, first %v", len(got), got[0])
	}
}

// TestFaultCost checks that the probe measures page faults: more than
// writing to the same number of pages already mapped (a few nanoseconds
// each; a fault is hundreds at the least), and less than a millisecond.
func TestFaultCost(t *testing.T) {
	d := faultCost()
	if d <= 0 || d > time.Millisecond {
		t.Fatalf("faultCost() = %v", d)
	}
	m, err := unix.Mmap(-1, 0, 256*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	touchPages(m) // fault them in
	var mapped []time.Duration
	for range 5 {
		mapped = append(mapped, touchPages(m))
	}
	if w := pct(mapped, .5); d < 5*w {
		t.Errorf("faultCost() = %v, not well above a write to a mapped page (%v)", d, w)
	}
}

// TestFaultLine checks the report's line on the probes: median and range
// per N, in µs, and nothing without probes.
func TestFaultLine(t *testing.T) {
	f := map[int][]time.Duration{
		20:   {1500 * time.Nanosecond, 1300 * time.Nanosecond, 2100 * time.Nanosecond},
		1000: {1400 * time.Nanosecond},
	}
	want := "A page fault (touching a fresh anonymous page, the machine's speed as a hook feels it) cost " +
		"1.50 µs before the rounds of 20 (3 probes, 1.30-2.10); 1.40 µs before the rounds of 1000 (1 probe, 1.40-1.40).\n\n"
	if got := faultLine(f, []int{20, 1000}); got != want {
		t.Errorf("faultLine:\n got %q\nwant %q", got, want)
	}
	if got := faultLine(nil, []int{20}); got != "" {
		t.Errorf("faultLine without probes: %q", got)
	}
}

// TestFloorLines checks the report's lines on the floors: median and range
// per N, in ms, a line per program, and nothing without probes.
func TestFloorLines(t *testing.T) {
	fs := floors{
		{name: "a", d: map[int][]time.Duration{20: {700 * time.Microsecond, 650 * time.Microsecond, 900 * time.Microsecond}, 1000: {800 * time.Microsecond}}},
		{name: "b", d: map[int][]time.Duration{}},
	}
	want := "A process that does nothing, started and reaped as a hook is (the median of 15 starts per probe, a probe before each round), cost:\n\n" +
		"- a: 0.70 before the rounds of 20 (3 probes, 0.65-0.90); 0.80 before the rounds of 1000 (1 probe, 0.80-0.80)\n\n"
	if got := floorLines(fs, []int{20, 1000}); got != want {
		t.Errorf("floorLines:\n got %q\nwant %q", got, want)
	}
	if got := floorLines(fs[1:], []int{20}); got != "" {
		t.Errorf("floorLines without probes: %q", got)
	}
}

// TestFloorProbe starts a real program that does nothing: each probe keeps
// one median, and a program that cannot start is left out of the probe.
func TestFloorProbe(t *testing.T) {
	sh, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1)")
	}
	fs := floors{
		{name: "true", argv: []string{sh}, d: map[int][]time.Duration{}},
		{name: "missing", argv: []string{"/nonexistent/noop"}, d: map[int][]time.Duration{}},
	}
	fs.probe(20)
	fs.probe(20)
	if d := fs[0].d[20]; len(d) != 2 || d[0] <= 0 || d[0] > time.Second {
		t.Errorf("true: %v", d)
	}
	if d := fs[1].d[20]; len(d) != 0 {
		t.Errorf("a program that cannot start was timed: %v", d)
	}
}
