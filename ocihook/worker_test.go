package ocihook

import (
	"sync/atomic"
	"testing"
	"time"
)

// runs hands f to w with Go and reports whether it ran, exactly once,
// within a second.
func runs(t *testing.T, w *Worker) bool {
	t.Helper()
	var n atomic.Int32
	done := make(chan struct{})
	w.Go(func() {
		n.Add(1)
		close(done)
	})
	select {
	case <-done:
	case <-time.After(time.Second):
		return false
	}
	time.Sleep(10 * time.Millisecond) // a second run would show by now
	return n.Load() == 1
}

func TestWorkerRunsWhatItIsHanded(t *testing.T) {
	for _, stage := range []string{StageSetup, StageTeardown} {
		w := StartWorker(stage)
		if !runs(t, w) {
			t.Errorf("%s: the job handed over did not run once", stage)
		}
		// A second job runs too, on a goroutine of its own.
		if !runs(t, w) {
			t.Errorf("%s: the second job did not run once", stage)
		}
		w.Done()
		w.Done() // let go twice: no panic
	}
}

func TestWorkerAfterItsSpin(t *testing.T) {
	w := StartWorker(StageSetup)
	defer w.Done()
	time.Sleep(workerSpin + 20*time.Millisecond) // blocked, no longer spinning
	if !runs(t, w) {
		t.Error("a job handed to a blocked worker did not run once")
	}
}

func TestWorkerLetGo(t *testing.T) {
	w := StartWorker(StageSetup)
	w.Done()
	if !runs(t, w) {
		t.Error("a job handed after Done did not run once")
	}
	var none *Worker
	if !runs(t, none) {
		t.Error("a job handed to no worker did not run once")
	}
}

// A worker let go while it warms up or spins ends.
func TestWorkerEndsWhenLetGo(t *testing.T) {
	for _, stage := range []string{StageSetup, StageTeardown} {
		w := StartWorker(stage)
		w.Done()
		select {
		case <-w.ended:
		case <-time.After(time.Second):
			t.Fatalf("%s: the worker did not end once let go", stage)
		}
	}
}

// A job handed over just before the worker is let go still runs, whichever
// of the two the worker sees first.
func TestWorkerRunsAJobHandedBeforeDone(t *testing.T) {
	for i := range 64 {
		w := newWorker()
		ran := false
		w.Go(func() { ran = true })
		w.Done()
		w.wait()
		if !ran {
			t.Fatalf("try %d: the job handed over before Done did not run", i)
		}
	}
}
