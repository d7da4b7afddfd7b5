package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// floorStarts is how many times a probe starts each program.
const floorStarts = 15

// A hook is a process, and part of its time is what starting and reaping
// a process costs on the machine, whatever it does. A floor measures that
// part for a program that does nothing: a static `busybox true` (the
// kernel's share: fork, exec, exit and the wait), and a Go program whose
// main is empty, built as netshim is (adding the Go runtime's start and
// exit). Both are started the way the bench starts a hook.
type floor struct {
	name string
	argv []string
	// d holds, per N, one median per probe.
	d map[int][]time.Duration
}

// floors are the programs probed before each round.
type floors []*floor

// newFloors returns the floors this machine can measure: busybox when it
// is installed, and noop when it is built.
func newFloors(noop string) floors {
	var fs floors
	if bb, err := exec.LookPath("busybox"); err == nil {
		fs = append(fs, &floor{name: "`busybox true` (static)", argv: []string{bb, "true"}, d: map[int][]time.Duration{}})
	}
	if abs, err := filepath.Abs(noop); err == nil {
		if _, err := os.Stat(abs); err == nil {
			fs = append(fs, &floor{name: "a Go program whose main is empty, built as netshim is", argv: []string{abs}, d: map[int][]time.Duration{}})
		}
	}
	return fs
}

// probe starts each program floorStarts times, taking turns, and keeps
// each one's median under n. A program that fails is left out of it.
func (fs floors) probe(n int) {
	ds := make([][]time.Duration, len(fs))
	for range floorStarts {
		for i, f := range fs {
			if d, err := startOnce(f.argv); err == nil {
				ds[i] = append(ds[i], d)
			}
		}
	}
	for i, f := range fs {
		if len(ds[i]) > 0 {
			f.d[n] = append(f.d[n], pct(ds[i], .5))
		}
	}
}

// startOnce runs argv as the bench runs a hook (runHook) and returns how
// long it took.
func startOnce(argv []string) (time.Duration, error) {
	start := time.Now()
	if err := runHook(argv, `{"ociVersion":"1.0.2"}`); err != nil {
		return 0, fmt.Errorf("%s: %w", argv[0], err)
	}
	return time.Since(start), nil
}

// floorLines says what the floors cost before the rounds of each N: the
// median probe and the range.
func floorLines(fs floors, ns []int) string {
	var lines []string
	for _, f := range fs {
		if parts := probeParts(f.d, ns, ms, ""); len(parts) > 0 {
			lines = append(lines, "- "+f.name+": "+strings.Join(parts, "; "))
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return fmt.Sprintf("A process that does nothing, started and reaped as a hook is (the median of %d starts per probe, a probe before each round), cost:\n\n", floorStarts) +
		strings.Join(lines, "\n") + "\n\n"
}
