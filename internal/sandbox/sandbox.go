// Package sandbox runs a privileged test inside a network and mount
// namespace of its own, so nothing it does to links, addresses, routes,
// sysctls or firewall rules touches the machine's namespaces, and
// everything it made goes away with it.
package sandbox

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

const envMarker = "NETSHIM_SANDBOX_TEST"

// Enter makes the calling test run in a fresh sandbox. In the outer process
// it re-runs this one test under `unshare --net --mount` and reports its
// outcome; it then returns false and the caller returns. In the sandboxed
// process it prepares the sandbox (lo up, private tmpfs on /run) and
// returns true. Tests that need root are skipped without it.
func Enter(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envMarker) == t.Name() {
		prepare(t)
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	if strings.Contains(t.Name(), "/") {
		t.Fatal("sandbox.Enter works for top-level tests only")
	}
	args := []string{"--net", "--mount", "--propagation", "private", "--", os.Args[0],
		"-test.run", "^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v", "-test.count=1"}
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), envMarker+"="+t.Name())
	cmd.Stdin = nil
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var wg sync.WaitGroup
	wg.Add(1)
	var sawPass, sawSkip bool
	var skipWhy string
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "--- PASS: "+t.Name()+" ") {
				sawPass = true
			}
			if sawSkip && skipWhy == "" {
				skipWhy = strings.TrimSpace(line) // the line after says why
			}
			if strings.HasPrefix(line, "--- SKIP: "+t.Name()+" ") {
				sawSkip = true
			}
			// Indent the child's lines so its PASS/FAIL lines are not
			// taken for the outer run's.
			fmt.Fprintln(os.Stdout, "    | "+line)
		}
	}()
	err := cmd.Run()
	pw.Close()
	wg.Wait()
	switch {
	case err == nil && sawSkip:
		t.Skipf("skipped in its sandbox: %s", skipWhy)
	case err != nil || !sawPass:
		t.Fatalf("sandboxed run failed: %v", err)
	}
	return false
}

func prepare(t *testing.T) {
	// A private /run: runc's and netshim's state, `ip netns` mounts and
	// anything else under it stay in this mount namespace.
	if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=755"); err != nil {
		t.Fatalf("mount tmpfs on /run: %v", err)
	}
	Run(t, "ip", "link", "set", "lo", "up")
}

// Run runs a command and fails the test with its output if it fails.
func Run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Uplink gives the sandbox an "internet": a netns `up` joined by a veth
// pair (sandbox 198.51.100.1/24 on `uplink`, upstream 198.51.100.2/24), with
// 203.0.113.1/32 on the upstream's lo and a route to 203.0.113.0/24 from the
// sandbox. The upstream has no route back to container subnets, so a reply
// proves masquerading. It returns the upstream netns path.
func Uplink(t *testing.T) string {
	t.Helper()
	for _, c := range [][]string{
		{"netns", "add", "up"},
		{"link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", "up"},
		{"addr", "add", "198.51.100.1/24", "dev", "uplink"},
		{"link", "set", "uplink", "up"},
		{"-n", "up", "addr", "add", "198.51.100.2/24", "dev", "eth0"},
		{"-n", "up", "link", "set", "eth0", "up"},
		{"-n", "up", "link", "set", "lo", "up"},
		{"-n", "up", "addr", "add", "203.0.113.1/32", "dev", "lo"},
		{"route", "add", "203.0.113.0/24", "via", "198.51.100.2"},
	} {
		Run(t, "ip", c...)
	}
	return "/run/netns/up"
}
