package engine

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"github.com/netshim/netshim/firewall"
	"github.com/netshim/netshim/netsetup"
)

// Reclaim is the slow tail of a teardown, whose effect is already in place
// when the teardown returns: the traffic is stopped (the host veth down,
// the map elements gone); what remains costs RCU grace periods. Deleting a
// link waits for one, holding RTNL; so does closing a netfilter socket
// after a deletion (see firewall.RetainSockets). A teardown hook hands
// them to a reclaimer of its own, a detached child that does them and
// exits, so its runtime does not wait for them. There is no socket to
// reach a reclaimer by: nothing another process binds can hold a hook up.
type Reclaim struct {
	// Links says host veths were set aside (netsetup.DoomedGroup).
	Links bool
	// UDPPorts are host ports whose UDP conntrack entries to drop, after
	// the port's mapping is gone, so no flow sticks to the old container.
	UDPPorts []int
}

func (r *Reclaim) empty() bool { return !r.Links && len(r.UDPPorts) == 0 }

// Do does the work here and now.
func (r *Reclaim) Do() error {
	var errs []error
	if r.Links {
		errs = append(errs, netsetup.DeleteDoomed())
	}
	for _, p := range r.UDPPorts {
		errs = append(errs, netsetup.FlushUDPConntrack(p))
	}
	return errors.Join(errs...)
}

// handOff starts a reclaimer for r with the netfilter sockets this process
// retained, and does not wait for it. Should it not start, the work is done
// here. With nothing to do and no socket, it does nothing.
func (e *Engine) handOff(r *Reclaim) {
	socks := firewall.RetainedSockets()
	defer func() {
		for _, f := range socks {
			f.Close()
		}
	}()
	if r.empty() && len(socks) == 0 {
		return
	}
	args := []string{"--state-dir", e.Store.Dir, "reclaim"}
	if r.Links {
		args = append(args, "--links")
	}
	for _, p := range r.UDPPorts {
		args = append(args, "--udp-port", strconv.Itoa(p))
	}
	if err := startHelper(args, socks...); err != nil {
		e.Log("", "", "reclaim", 0, fmt.Errorf("start a reclaimer: %w; reclaiming in the hook", err))
		if err := r.Do(); err != nil {
			e.Log("", "", "reclaim", 0, err)
		}
	}
}

// startHelper starts this binary with args, detached: its own session,
// stdio on /dev/null (a runtime that waits for the hook's output to end
// must not wait for a helper), a fixed PATH, and files as fds 3 onwards.
// It does not wait for it: the helper is reaped as an orphan.
func startHelper(args []string, files ...*os.File) error {
	p, err := startHelperProcess(args, files...)
	if err != nil {
		return err
	}
	return p.Release()
}

func startHelperProcess(args []string, files ...*os.File) (*os.Process, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary's path: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd.Process, nil
}
