package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const runcSpec = `{"ociVersion":"1.0.2","process":{"args":["sh"],"capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}},
"root":{"path":"rootfs"},"hostname":"runc","annotations":{"netshim/ip":"172.17.0.9","keep":"me"},
"hooks":{"createRuntime":[{"path":"/opt/other","args":["other"]},{"path":"/old/netshim","args":["netshim","hook"]}]},
"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}],"futureField":{"x":1}}}`

func run(t *testing.T, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestBundleEdits(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(runcSpec), 0o600)
	code, _, errOut := run(t, "--state-dir", "/tmp/st", "bundle", dir, "--name", "web", "--link", "db:database", "--link", "cache",
		"--dns", "203.0.113.53", "--add-host", "gw:host-gateway", "--cap-add", "net_raw")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	var spec struct {
		Annotations map[string]string
		Hooks       map[string][]struct {
			Path string
			Args []string
		}
		Linux struct {
			Namespaces  []map[string]string
			FutureField map[string]int
		}
		Process struct {
			Capabilities map[string][]string
		}
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	a := spec.Annotations
	if a["netshim/name"] != "web" || a["netshim/links"] != "db:database,cache" || a["netshim/network"] != "bridge" ||
		a["netshim/dns"] != "203.0.113.53" || a["netshim/add-host"] != "gw:host-gateway" || a["keep"] != "me" {
		t.Errorf("annotations %v", a)
	}
	if _, stale := a["netshim/ip"]; stale {
		t.Error("old netshim annotation kept")
	}
	cr := spec.Hooks["createRuntime"]
	if len(cr) != 2 || cr[0].Path != "/opt/other" || !filepath.IsAbs(cr[1].Path) ||
		strings.Join(cr[1].Args, " ") != "netshim --state-dir /tmp/st hook createRuntime" {
		t.Errorf("createRuntime hooks %+v", cr)
	}
	if ps := spec.Hooks["poststop"]; len(ps) != 1 || ps[0].Args[len(ps[0].Args)-1] != "poststop" {
		t.Errorf("poststop hooks %+v", ps)
	}
	nss := spec.Linux.Namespaces
	if len(nss) != 2 || nss[1]["type"] != "network" || nss[1]["path"] != "" {
		t.Errorf("namespaces %v: want a fresh network namespace", nss)
	}
	if spec.Linux.FutureField["x"] != 1 {
		t.Error("unknown field lost")
	}
	if caps := spec.Process.Capabilities["effective"]; len(caps) != 2 || caps[1] != "CAP_NET_RAW" {
		t.Errorf("caps %v", caps)
	}
	// Again, for host mode: no network namespace, hooks not duplicated.
	if code, _, errOut := run(t, "bundle", dir, "--network", "host"); code != 0 {
		t.Fatal(errOut)
	}
	data, _ = os.ReadFile(filepath.Join(dir, "config.json"))
	spec.Hooks, spec.Linux.Namespaces = nil, nil
	json.Unmarshal(data, &spec)
	if len(spec.Hooks["createRuntime"]) != 2 || len(spec.Linux.Namespaces) != 1 {
		t.Errorf("host mode: hooks %v namespaces %v", spec.Hooks, spec.Linux.Namespaces)
	}
}

// Every error a user can provoke from the CLI is one line naming what to fix.
func TestCLIErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(runcSpec), 0o600)
	badToml := filepath.Join(dir, "bad.toml")
	os.WriteFile(badToml, []byte("[bridge]\nmtu = 1\n"), 0o600)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"bundle", dir, "--ip", "1.2.3"}, `--ip "1.2.3": "1.2.3" is not an IPv4 address`},
		{[]string{"bundle", dir, "--link", "a:b:c"}, `--link "a:b:c"`},
		{[]string{"bundle", dir, "--network", "no such"}, `--network "no such"`},
		{[]string{"bundle", dir, "--network", "none", "--link", "db"}, `--link "db": needs a bridge network, not none`},
		{[]string{"bundle", dir, "--add-host", "x"}, `--add-host "x": "x" is not host:ip`},
		{[]string{"bundle", dir, "--dns", "nope"}, `--dns "nope"`},
		{[]string{"bundle", dir, "--frobnicate"}, `unknown flag: --frobnicate`},
		{[]string{"bundle"}, `accepts 1 arg(s), received 0`},
		{[]string{"bundle", filepath.Join(dir, "missing")}, `read bundle config`},
		{[]string{"--config", badToml, "ps"}, `bridge.mtu = "1": must be between 68 and 65535`},
		{[]string{"--config", filepath.Join(dir, "absent.toml"), "ps"}, `absent.toml: cannot read`},
		{[]string{"--state-dir", dir, "inspect", "ghost"}, `no such container: ghost`},
		{[]string{"--state-dir", dir, "hook", "sideways"}, `hook stage "sideways"`},
		{[]string{"nosuchcommand"}, `unknown command "nosuchcommand"`},
	}
	for _, c := range cases {
		code, out, errOut := run(t, c.args...)
		lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
		if code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "netshim: ") || !strings.Contains(lines[0], c.want) {
			t.Errorf("%v: exit %d stdout %q stderr %q, want one line with %q", c.args, code, out, errOut, c.want)
		}
	}
	// A refused bundle edit leaves config.json as it was.
	if data, _ := os.ReadFile(filepath.Join(dir, "config.json")); string(data) != runcSpec {
		t.Error("config.json changed by a refused edit")
	}
}

// The global flags' environment variables: NETSHIM_STATE_DIR picks the
// state dir, NETSHIM_CONFIG names a config that must then exist.
func TestGlobalEnv(t *testing.T) {
	dir := t.TempDir()
	st := filepath.Join(dir, "st")
	t.Setenv(EnvStateDir, st)
	if code, out, errOut := run(t, "ps"); code != 0 || !strings.HasPrefix(out, "CONTAINER") {
		t.Fatalf("ps: %d %q %q", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(st, "containers")); err != nil {
		t.Errorf("NETSHIM_STATE_DIR not used: %v", err)
	}
	t.Setenv(EnvConfig, filepath.Join(dir, "named.toml"))
	if code, _, errOut := run(t, "ps"); code == 0 || !strings.Contains(errOut, "named.toml: cannot read") {
		t.Errorf("named missing config accepted: %q", errOut)
	}
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte("state_dir = \""+filepath.Join(dir, "fromconfig")+"\"\n"), 0o644)
	t.Setenv(EnvConfig, cfg)
	t.Setenv(EnvStateDir, "")
	if code, _, errOut := run(t, "ps"); code != 0 {
		t.Fatalf("ps: %q", errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "fromconfig", "containers")); err != nil {
		t.Errorf("config state_dir not used: %v", err)
	}
}

// make install puts the binary, the config (only if absent) and the Podman
// hooks.d file in place.
func TestMakeInstall(t *testing.T) {
	if _, err := os.Stat("../bin/netshim"); err != nil {
		t.Skip("bin/netshim not built (make test builds it first)")
	}
	dest := t.TempDir()
	os.MkdirAll(filepath.Join(dest, "etc/netshim"), 0o755)
	os.WriteFile(filepath.Join(dest, "etc/netshim/netshim.toml"), []byte("# mine\n"), 0o644)
	out, err := exec.Command("make", "-C", "..", "--no-print-directory", "install", "DESTDIR="+dest).CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{"usr/local/bin/netshim", "usr/share/containers/oci/hooks.d/netshim.json"} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("%s not installed", f)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(dest, "etc/netshim/netshim.toml")); string(data) != "# mine\n" {
		t.Errorf("an existing config was overwritten: %q", data)
	}
	var hook struct {
		Version string
		Hook    struct{ Path string }
		Stages  []string
	}
	data, _ := os.ReadFile(filepath.Join(dest, "usr/share/containers/oci/hooks.d/netshim.json"))
	if err := json.Unmarshal(data, &hook); err != nil || hook.Version != "1.0.0" || hook.Hook.Path != "/usr/local/bin/netshim" || len(hook.Stages) != 2 {
		t.Errorf("hooks.d file: %v %+v", err, hook)
	}
}

// Bad driver options are refused with one line before anything is done.
func TestNetworkCreateOptions(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "none.toml"), []byte("data_dir = \""+filepath.Join(dir, "data")+"\"\n"), 0o600)
	for _, tc := range []struct{ opt, want string }{
		{"gateway_mode=open", `netshim: -o gateway_mode="open": must be nat, nat-unprotected, routed or isolated`},
		{"colour=red", `netshim: -o "colour=red": want KEY=VALUE with KEY gateway_mode`},
		{"com.docker.network.bridge.gateway_mode_ipv4=x", `-o com.docker.network.bridge.gateway_mode_ipv4="x": must be`},
	} {
		code, out, errOut := run(t, "--state-dir", filepath.Join(dir, "state"), "--config", filepath.Join(dir, "none.toml"),
			"network", "create", "-o", tc.opt, "n1")
		if code == 0 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("-o %s: exit %d, %q %q, want %q", tc.opt, code, out, errOut, tc.want)
		}
	}
}
