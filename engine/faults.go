package engine

import (
	"os"
	"syscall"
)

// FaultEnv names a point at which a hook kills itself with SIGKILL: a
// test-only switch to prove that a hook killed anywhere leaves only what
// gc (or the next setup) undoes. "stop:<point>" stops it there instead
// (SIGSTOP), to race it against other hooks.
const FaultEnv = "NETSHIM_FAULT"

var faultPoint = os.Getenv(FaultEnv)

// fault dies, or stops, at the named point when the switch says so.
func fault(point string) {
	switch faultPoint {
	case "":
	case point:
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously everywhere
	case "stop:" + point:
		syscall.Kill(os.Getpid(), syscall.SIGSTOP)
	}
}
