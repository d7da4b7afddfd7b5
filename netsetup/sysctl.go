package netsetup

import (
	"bytes"
	"fmt"
	"os"
)

// EnsureSysctl sets a sysctl of the calling process's network namespace (net.*
// sysctls are per netns and /proc/sys shows the opener's) when it differs,
// so an already-right value costs one read and no write.
func EnsureSysctl(name, value string) error {
	path := "/proc/sys/" + sysctlPath(name)
	cur, err := os.ReadFile(path)
	if err == nil && string(bytes.TrimSpace(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

func sysctlPath(name string) string {
	b := []byte(name)
	for i, c := range b {
		if c == '.' {
			b[i] = '/'
		}
	}
	return string(b)
}
