package netsetup

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// EnsureSysctl sets a sysctl of the calling process's network namespace (net.*
// sysctls are per netns and /proc/sys shows the opener's) when it differs,
// so an already-right value costs one read and no write. name is dotted, as
// sysctl(8) takes it; a name with an interface in it goes through
// EnsureIfSysctl, as an interface name may hold a dot.
func EnsureSysctl(name, value string) error {
	return ensureAt(strings.ReplaceAll(name, ".", "/"), name, value)
}

// EnsureIfSysctl is EnsureSysctl for net.FAMILY.conf.IFNAME.KEY, family
// ipv4 or ipv6.
func EnsureIfSysctl(family, ifname, key, value string) error {
	return ensureAt(ifSysctlPath(family, ifname, key), "net."+family+".conf."+ifname+"."+key, value)
}

// ifSysctlPath is the /proc/sys path of an interface's sysctl, its name
// as it is.
func ifSysctlPath(family, ifname, key string) string {
	return "net/" + family + "/conf/" + ifname + "/" + key
}

func ensureAt(path, name, value string) error {
	path = "/proc/sys/" + path
	cur, err := os.ReadFile(path)
	if err == nil && string(bytes.TrimSpace(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
