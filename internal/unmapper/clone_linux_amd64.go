package unmapper

const supported = true

// clone starts the holder on stack (its top), waiting on pidfd; it returns
// the holder's pid, or a negated errno. Every signal is blocked on the
// calling thread around the clone, so the holder starts with them blocked.
// Implemented in clone_linux_amd64.s.
func clone(stack uintptr, pidfd int32) int64
