package ocihook

import (
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/netshim/netshim/internal/fastio"
	"github.com/netshim/netshim/internal/unmapper"
)

// Worker is a goroutine a hook starts as it starts, for the one piece of
// work the hook runs beside its own: setup's shared state under the lock,
// teardown's link removal. It warms the JSON codecs first, then stays on
// its CPU, yielding, until that work comes. A goroutine started when the
// work is ready, or one woken for it, runs only once the other CPU's
// thread is woken: 0.15 ms on this kind of VM, twice that or more when the
// host is busy, on the critical path of every setup and teardown. Before
// anything else it starts the hook's unmapper (see loop), off that path.
type Worker struct {
	jobs chan func()
	quit chan struct{}
	mu   sync.Mutex
	// given and done say Go handed a job over and Done let the worker go:
	// either makes later jobs run on goroutines of their own.
	given, done bool
	// ended is closed when the worker's goroutine returns.
	ended chan struct{}
}

// workerSpin bounds how long a worker stays on its CPU waiting for work;
// after it, the worker blocks like any goroutine. A hook hands its work
// over half a millisecond or so after it starts, and lets the worker go
// when it returns (Done).
const workerSpin = time.Millisecond

// StartWorker starts a hook's worker; stage is the hook's argument, which
// says which codecs to warm.
func StartWorker(stage string) *Worker {
	w := newWorker()
	go w.loop(stage)
	return w
}

// newWorker is a worker not started yet.
func newWorker() *Worker {
	return &Worker{jobs: make(chan func(), 1), quit: make(chan struct{}), ended: make(chan struct{})}
}

func (w *Worker) loop(stage string) {
	defer close(w.ended)
	// The hook's memory is freed after its exit, not before the runtime
	// hears of it: the exit, from exit_group to the parent's SIGCHLD, went
	// from 0.21-0.22 ms to 0.10-0.11 here. Started on the worker, beside
	// the config's load; without it (another architecture) a hook exits
	// as any process.
	unmapper.Start()
	if s, _ := ResolveStage(stage, ""); s == StageSetup {
		// A process's first LockOSThread starts the runtime's template
		// thread, with a clone that takes 50-90 µs here. Setup's first
		// lock is its step in the container's netns, on the critical
		// path; this one makes that clone here, on the other CPU, while
		// the config loads. Teardown locks no thread.
		runtime.LockOSThread()
		runtime.UnlockOSThread()
	}
	// The codecs first, one type at a time while no work has come: what
	// is not built by then is built as it is used.
	for _, warm := range codecWarmers(stage) {
		if w.poll() {
			return
		}
		warm()
	}
	// Spinning only makes sense with a CPU nobody else wants: with one
	// CPU, it would take turns with the goroutine that is to hand the work
	// over; on a host busy with other work (hooks run in parallel), it
	// would take CPU time from it. The load is looked at again as it goes.
	if runtime.GOMAXPROCS(0) > 1 {
		deadline := time.Now().Add(workerSpin)
		for next := time.Now(); ; runtime.Gosched() {
			if w.poll() {
				return
			}
			if now := time.Now(); !now.Before(next) {
				if !now.Before(deadline) || !cpusFree() {
					break
				}
				next = now.Add(workerSpin / 10)
			}
		}
	}
	w.wait()
}

// poll runs the job handed over, if there is one, and reports whether the
// worker is finished: it ran its job, or was let go.
func (w *Worker) poll() bool {
	select {
	case job := <-w.jobs:
		job()
	case <-w.quit:
		w.drain()
	default:
		return false
	}
	return true
}

// wait runs the job handed over once it comes, unless the worker is let go
// first.
func (w *Worker) wait() {
	select {
	case job := <-w.jobs:
		job()
	case <-w.quit:
		w.drain()
	}
}

// drain runs a job handed over before the worker was let go.
func (w *Worker) drain() {
	select {
	case job := <-w.jobs:
		job()
	default:
	}
}

// Go runs f on the worker, or on a new goroutine when there is no worker
// or it was given work already or let go.
func (w *Worker) Go(f func()) {
	if w != nil {
		w.mu.Lock()
		free := !w.given && !w.done
		w.given = true
		w.mu.Unlock()
		if free {
			w.jobs <- f // buffered: never blocks
			return
		}
	}
	go f()
}

// Done lets the worker go; a job already handed over still runs.
func (w *Worker) Done() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.done = true
		close(w.quit)
	}
}

// cpusFree reports whether the tasks the kernel has to run right now (the
// fourth field of /proc/loadavg, running/total) leave a CPU to spare for
// the spin: they count this hook's two, and often a kernel worker or one of
// the Go runtime's threads looking for work, briefly (three or four in a
// third of the setups measured one after the other on 2 CPUs). Hooks run
// in parallel are many more.
func cpusFree() bool {
	data, err := fastio.ReadFile("/proc/loadavg")
	if err != nil {
		return false
	}
	f := strings.Fields(string(data))
	if len(f) < 4 {
		return false
	}
	running, _, ok := strings.Cut(f[3], "/")
	n, err := strconv.Atoi(running)
	return ok && err == nil && n <= runtime.NumCPU()+2
}
