package resolver

import (
	"context"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Serve answers on the given sockets until the network has no container
// left, or SIGTERM/SIGINT. The sockets were bound by the hook that started
// this process, so queries sent before it runs wait in them.
func Serve(ctx context.Context, path string, udp net.PacketConn, tcp net.Listener) error {
	s := &Server{Path: path}
	if err := s.reload(); err != nil {
		return err
	}
	servers := []*dns.Server{
		{PacketConn: udp, Handler: s},
		{Listener: tcp, Handler: s},
	}
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-sig:
			break loop
		case err = <-errc:
			break loop
		case <-tick.C:
			if s.Empty() {
				break loop
			}
		}
	}
	for _, srv := range servers {
		srv.Shutdown()
	}
	return err
}
