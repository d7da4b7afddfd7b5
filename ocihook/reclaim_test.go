package ocihook

import (
	"encoding/json"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// Hooks do not wait for the reclaimer to answer: one that is stopping
// must still take every handoff the kernel queued for it, and refuse new
// ones (the hook then starts another reclaimer).
func TestReclaimerTakesQueuedHandoffs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("handoffs are taken from root only")
	}
	addr := reclaimerAddr(t.TempDir())
	l, err := net.ListenUnix("unixpacket", addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []int{5301, 5302} {
		fd, err := dialReclaimer(addr)
		if err != nil {
			t.Fatal(err)
		}
		work, _ := json.Marshal(&Reclaim{UDPPorts: []int{port}})
		if err := send(fd, work, nil); err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
	}
	// Stopped before it accepted anything: both wait in the backlog.
	stop := make(chan struct{})
	close(stop)
	msgs := make(chan handoff)
	go acceptHandoffs(l, stop, msgs)
	var got []int
	for h := range msgs {
		got = append(got, h.work.UDPPorts...)
	}
	if len(got) != 2 || got[0]+got[1] != 5301+5302 {
		t.Errorf("handoffs taken: %v, want ports 5301 and 5302", got)
	}
	if c, err := net.DialUnix("unixpacket", nil, addr); err == nil {
		c.Close()
		t.Error("a stopped reclaimer still accepts connections")
	}
}
