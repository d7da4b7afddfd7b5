package ocihook

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/netsetup"
)

// Reclaim is what a hook leaves to its reclaimer: the slow tail of
// deletions whose effect is already in place when the hook returns (see
// netsetup.RetainNetfilterSockets). Its traffic is stopped: the links are
// down, the map elements gone; what remains costs RCU grace periods.
type Reclaim struct {
	// Links are host veths set down, to delete.
	Links []netsetup.DoomedLink `json:"links,omitempty"`
	// UDPPorts are host ports whose UDP conntrack entries to drop (after
	// the port's map element is gone, so no new flow goes to the old
	// container).
	UDPPorts []int `json:"udp_ports,omitempty"`

	// deleted says firewall objects were deleted: the netfilter sockets
	// must outlive the hook.
	deleted bool
}

func (r *Reclaim) empty() bool { return len(r.Links) == 0 && len(r.UDPPorts) == 0 && !r.deleted }

// DeferReclaim makes this Env's teardowns leave their slow tail to a
// detached reclaimer, started by HandOff. The hook does; commands a user
// waits on (gc) do not.
func (env *Env) DeferReclaim() {
	env.reclaim = &Reclaim{}
	netsetup.RetainNetfilterSockets()
}

// HandOff starts the reclaimer for what this Env's teardowns deferred, in
// its own session with stdio on /dev/null (a runtime that waits for the
// hook's output to end must not wait for it), holding the last references
// to the netfilter sockets. If it cannot be started, the work is done here.
func (env *Env) HandOff() {
	socks := netsetup.RetainedSockets()
	defer func() {
		for _, f := range socks {
			f.Close()
		}
	}()
	if env.reclaim == nil || env.reclaim.empty() {
		return
	}
	work, err := json.Marshal(env.reclaim)
	if err == nil {
		var self string
		if self, err = os.Executable(); err == nil {
			args := []string{"--state-dir", env.Store.Dir, "reclaim", string(work)}
			if env.Debug {
				args = append([]string{"--debug"}, args...)
			}
			cmd := exec.Command(self, args...)
			cmd.Dir = "/"
			cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
			cmd.ExtraFiles = socks
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err = cmd.Start(); err == nil {
				cmd.Process.Release()
				return
			}
		}
	}
	env.logLine("-", "-", "reclaim", 0, fmt.Errorf("start reclaimer: %w; reclaiming in the hook", err))
	if err := env.reclaim.Do(); err != nil {
		env.logLine("-", "-", "reclaim", 0, err)
	}
}

// RunReclaimer is the reclaimer: it does the work a hook handed over and
// exits, which releases the netfilter sockets it inherited. Failures go to
// the hook log: nobody waits for it.
func RunReclaimer(env *Env, arg string) error {
	start := time.Now()
	var r Reclaim
	if err := json.Unmarshal([]byte(arg), &r); err != nil {
		return &InputError{What: "reclaim work", Value: arg, Reason: err.Error()}
	}
	err := r.Do()
	if err != nil || env.Debug {
		env.logLine("-", "-", "reclaim", time.Since(start), err)
	}
	return err
}

// Do deletes the links and drops the conntrack entries.
func (r *Reclaim) Do() error {
	var errs []error
	if len(r.Links) > 0 {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		for _, l := range r.Links {
			if err := netsetup.DeleteDoomed(h, l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, p := range r.UDPPorts {
		if err := netsetup.FlushUDPConntrack(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
