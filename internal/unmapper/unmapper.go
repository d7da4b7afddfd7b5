// Package unmapper moves the freeing of a short-lived process's memory
// after its exit, out of the time its parent waits for it.
//
// When a process exits, the kernel frees its address space (every page it
// touched, its page tables, the mappings of its binary) before the parent
// is told: for a hook, whose parent is a container runtime waiting for it
// to return, that is part of the hook's time. A process that shares the
// address space (clone with CLONE_VM, without CLONE_THREAD: a process of
// its own, not a thread) keeps it alive past that exit, and the freeing
// happens when that process exits in turn, after the parent has been told.
//
// Start makes such a process, the holder. It runs no Go code: it closes
// every descriptor it inherited (so it never keeps the hook's pipes open
// for the runtime reading them), waits on a pidfd for this process to be
// gone (every thread), and exits. Its exit signal is none: this process is
// never told of it, and once reparented (its parent gone) it is reaped as
// any orphan. It starts with every signal blocked, since a Go handler it
// would inherit must never run on it.
package unmapper

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	once      sync.Once
	holderPID int
	holderErr error

	// stack is the holder's stack, where it keeps the pollfd it waits on:
	// a global, so it never moves and is never freed, and nothing else in
	// this process uses it.
	stack [256]byte
)

// Start starts this process's holder, once per process; later calls
// return the first's result. It returns the holder's pid. An error means
// there is no holder (a kernel without pidfd_open, an architecture without
// support): this process exits as any other.
func Start() (int, error) {
	once.Do(func() { holderPID, holderErr = start() })
	return holderPID, holderErr
}

func start() (int, error) {
	if !supported {
		return 0, fmt.Errorf("start unmapper: %w", errors.ErrUnsupported)
	}
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return 0, fmt.Errorf("start unmapper: pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)
	top := (uintptr(unsafe.Pointer(&stack[0])) + uintptr(len(stack))) &^ 15
	r := clone(top, int32(pidfd))
	if r < 0 {
		return 0, fmt.Errorf("start unmapper: clone: %w", syscall.Errno(-r))
	}
	return int(r), nil
}
