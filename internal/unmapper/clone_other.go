//go:build !(linux && amd64)

package unmapper

const supported = false

func clone(stack uintptr, pidfd int32) int64 { return 0 }
