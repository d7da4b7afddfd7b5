package ocihook

import (
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/netshim/netshim/internal/fastio"
)

// Worker is a goroutine a hook starts as it starts, for the pieces of work
// the hook runs beside its own: setup's reading of the bundle, then its
// shared state under the lock; teardown's link removal. It warms the JSON
// codecs first, then stays on its CPU, yielding, until work comes, and
// again after each piece. A goroutine started when the work is ready, or
// one woken for it, runs only once the other CPU's thread is woken:
// 0.15 ms on this kind of VM, twice that or more when the host is busy, on
// the critical path of every setup and teardown.
type Worker struct {
	// jobs holds the job handed over, until the worker starts it.
	jobs chan func()
	quit chan struct{}
	mu   sync.Mutex
	// busy says a job was handed over and has not finished; done says
	// Done let the worker go. Either makes Go run a job on a goroutine of
	// its own: a job can hand over work and wait for it (a setup undoing
	// an earlier one tears it down, which does).
	busy, done bool
	// ended is closed when the worker's goroutine returns.
	ended chan struct{}
}

// workerSpin bounds how long a worker stays on its CPU waiting for work,
// from its start or its last job; after it, the worker blocks like any
// goroutine. A hook hands its work over a fraction of a millisecond after
// it starts, and lets the worker go when it returns (Done).
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
	if s, _ := ResolveStage(stage, ""); s == StageSetup {
		// A process's first LockOSThread starts the runtime's template
		// thread, with a clone that takes 50-90 µs here. Setup's first
		// lock is its step in the container's netns, on the critical
		// path; this one makes that clone here, on the other CPU, while
		// the config loads. Teardown locks no thread.
		runtime.LockOSThread()
		runtime.UnlockOSThread()
	}
	// The codecs first, one type at a time, work first: what is not built
	// by then is built as it is used.
	for _, warm := range codecWarmers(stage) {
		if _, quit := w.poll(); quit {
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
			ran, quit := w.poll()
			if quit {
				return
			}
			now := time.Now()
			if ran {
				deadline, next = now.Add(workerSpin), now
				continue
			}
			if !now.Before(next) {
				if !now.Before(deadline) || !cpusFree() {
					break
				}
				next = now.Add(workerSpin / 10)
			}
		}
	}
	w.wait()
}

// poll runs the job handed over, if there is one, and reports whether it
// ran one, and whether the worker was let go (it then runs a job handed
// over before, if any, first).
func (w *Worker) poll() (ran, quit bool) {
	select {
	case job := <-w.jobs:
		w.run(job)
		return true, false
	case <-w.quit:
		w.drain()
		return false, true
	default:
		return false, false
	}
}

// wait runs the jobs handed over as they come, until the worker is let go.
func (w *Worker) wait() {
	for {
		select {
		case job := <-w.jobs:
			w.run(job)
		case <-w.quit:
			w.drain()
			return
		}
	}
}

// drain runs a job handed over before the worker was let go.
func (w *Worker) drain() {
	select {
	case job := <-w.jobs:
		w.run(job)
	default:
	}
}

// run runs a job handed over, then takes the next.
func (w *Worker) run(job func()) {
	job()
	w.mu.Lock()
	w.busy = false
	w.mu.Unlock()
}

// Go runs f on the worker, or on a new goroutine when there is no worker,
// it was let go, or it has not finished the job handed over before.
func (w *Worker) Go(f func()) {
	if w != nil {
		w.mu.Lock()
		free := !w.busy && !w.done
		if free {
			w.busy = true
			w.jobs <- f // empty when not busy: never blocks
		}
		w.mu.Unlock()
		if free {
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
