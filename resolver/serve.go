package resolver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// tcpIdle is how long a TCP client may stay silent between queries.
const tcpIdle = 8 * time.Second

// Serve answers on the given sockets until the network has no container
// left, or SIGTERM/SIGINT. The sockets were bound by the hook that started
// this process, so queries sent before it runs wait in them.
func Serve(ctx context.Context, path string, udp net.PacketConn, tcp net.Listener) error {
	s := &Server{Path: path}
	if err := s.reload(); err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- s.serveUDP(udp) }()
	go func() { errc <- s.serveTCP(tcp) }()
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
	udp.Close()
	tcp.Close()
	return err
}

// serveUDP answers each datagram on its own goroutine: a forwarded query
// must not hold up the others.
func (s *Server) serveUDP(c net.PacketConn) error {
	buf := make([]byte, 65535)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		q := append([]byte(nil), buf[:n]...)
		go func() {
			if resp := s.Answer(q, clientAddr(from), false); resp != nil {
				c.WriteTo(resp, from)
			}
		}()
	}
}

func (s *Server) serveTCP(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go s.serveConn(c)
	}
}

// serveConn answers the queries of one TCP client in turn.
func (s *Server) serveConn(c net.Conn) {
	defer c.Close()
	client := clientAddr(c.RemoteAddr())
	for {
		c.SetDeadline(time.Now().Add(tcpIdle))
		q, err := readTCPMsg(c)
		if err != nil {
			return
		}
		resp := s.Answer(q, client, true)
		if resp == nil {
			return
		}
		if _, err := c.Write(tcpMsg(resp)); err != nil {
			return
		}
	}
}

// clientAddr is the address a query came from.
func clientAddr(a net.Addr) netip.Addr {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
