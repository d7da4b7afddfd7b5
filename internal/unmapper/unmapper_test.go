package unmapper

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// marker is set by the child process and read back through its holder's
// memory.
var marker uint64

// TestMain runs the child side of TestHolder when asked to: start the
// holder (twice: the second call must return the first's), set marker,
// say where it is, and exit when stdin closes.
func TestMain(m *testing.M) {
	if os.Getenv("UNMAPPER_TEST_CHILD") == "1" {
		pid, err := Start()
		again, err2 := Start()
		if err != nil || err2 != nil || again != pid {
			fmt.Printf("error %v %v %d %d\n", err, err2, pid, again)
			os.Exit(1)
		}
		marker = uint64(time.Now().UnixNano())
		fmt.Printf("%d %d %d\n", pid, uintptr(unsafe.Pointer(&marker)), marker)
		bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestHolder(t *testing.T) {
	if !supported {
		t.Skip("no holder on this architecture")
	}
	// Orphans of this test's children come back to this process, so the
	// holder can be reaped here and its exit status read.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("subreaper: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "UNMAPPER_TEST_CHILD=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	var pid int
	var addr uintptr
	var want uint64
	if _, err := fmt.Sscanf(line, "%d %d %d", &pid, &addr, &want); err != nil {
		t.Fatalf("child said %q", line)
	}

	// The holder is the child's child, and shares its memory.
	if ppid := statusField(t, pid, "PPid"); ppid != strconv.Itoa(cmd.Process.Pid) {
		t.Errorf("holder's parent is %s, want the child %d", ppid, cmd.Process.Pid)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	if _, err := mem.ReadAt(b, int64(addr)); err != nil {
		t.Fatalf("read the holder's memory: %v", err)
	}
	mem.Close()
	if got := *(*uint64)(unsafe.Pointer(&b[0])); got != want {
		t.Errorf("holder's memory has %d where the child wrote %d: not shared", got, want)
	}

	// Every signal it can block is blocked, and it holds no descriptor but
	// its pidfd (it closes the others as it starts).
	if blk, _ := strconv.ParseUint(statusField(t, pid, "SigBlk"), 16, 64); blk|1<<(unix.SIGKILL-1)|1<<(unix.SIGSTOP-1) != ^uint64(0) {
		t.Errorf("holder's blocked signals are %x, want all", blk)
	}
	var fds []string
	for i := 0; i < 100; i++ {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		fds = fds[:0]
		for _, e := range ents {
			l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
			fds = append(fds, l)
		}
		if len(fds) == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(fds) != 1 || fds[0] != "anon_inode:[pidfd]" {
		t.Errorf("holder's descriptors are %v, want its pidfd alone", fds)
	}
	// Between its close_range and its poll the holder is running: wait
	// for it to sleep, as it must while the child lives.
	st := statusField(t, pid, "State")
	for i := 0; i < 100 && !strings.HasPrefix(st, "S"); i++ {
		time.Sleep(10 * time.Millisecond)
		st = statusField(t, pid, "State")
	}
	if !strings.HasPrefix(st, "S") {
		t.Errorf("holder is %q while the child lives, want sleeping", st)
	}

	// The child exits; the holder follows, with status 0.
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err == nil && (!ws.Exited() || ws.ExitStatus() != 0) {
			err = fmt.Errorf("status %v", ws)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("holder's exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		unix.Kill(pid, unix.SIGKILL)
		t.Fatal("holder still there 10 s after the child exited")
	}
}

func statusField(t *testing.T, pid int, key string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}
