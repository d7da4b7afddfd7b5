package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// connectResult is `netshim network connect` and `disconnect` of running
// containers: each the whole command process.
type connectResult struct {
	connect, disconnect []time.Duration
}

// connectRuns times connect and disconnect of n containers on the default
// network to and from a user network that another container keeps in
// use (its rules and responder in place), round after round until runs
// samples each.
func connectRuns(netshim, work string, n, runs int) (*connectResult, error) {
	dir := filepath.Join(work, "connect")
	os.MkdirAll(dir, 0o755)
	t := &netshimTool{bin: netshim, backend: "nftables"}
	if err := t.prepare(dir); err != nil {
		return nil, err
	}
	defer t.cleanup()
	if err := os.WriteFile(t.config, []byte("firewall = \"nftables\"\n[networks.bench-net]\nsubnet = \"10.99.0.0/16\"\n"), 0o644); err != nil {
		return nil, err
	}
	cs, err := spawn(n+1, dir)
	if err != nil {
		return nil, err
	}
	defer reap(cs)
	keeper := cs[n]
	os.WriteFile(filepath.Join(keeper.dir, "config.json"), []byte(`{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{"netshim/network":"bench-net"}}`), 0o644)
	if err := t.setup(keeper); err != nil {
		return nil, err
	}
	defer t.teardown(keeper)
	for _, c := range cs[:n] {
		if err := t.bundle(c); err != nil {
			return nil, err
		}
		if err := t.setup(c); err != nil {
			return nil, err
		}
		defer t.teardown(c)
	}
	cmd := func(op string, c *container) (time.Duration, error) {
		start := time.Now()
		err := run(netshim, "--config", t.config, "--state-dir", t.state, "network", op, "bench-net", c.id)
		return time.Since(start), err
	}
	r := &connectResult{}
	for len(r.connect) < runs {
		for _, c := range cs[:n] {
			d, err := cmd("connect", c)
			if err != nil {
				return nil, err
			}
			r.connect = append(r.connect, d)
		}
		for _, c := range cs[:n] {
			d, err := cmd("disconnect", c)
			if err != nil {
				return nil, err
			}
			r.disconnect = append(r.disconnect, d)
		}
	}
	return r, nil
}

// connectLine reports connectRuns.
func connectLine(r *connectResult, n int) string {
	return fmt.Sprintf("\n`netshim network connect` / `disconnect` of a running container (one of %d on the default network, to and from a\n"+
		"user network in use; %d each; the whole command; p50 / p90 ms): connect %s / %s, disconnect %s / %s.\n",
		n, len(r.connect), ms(pct(r.connect, .5)), ms(pct(r.connect, .9)), ms(pct(r.disconnect, .5)), ms(pct(r.disconnect, .9)))
}
