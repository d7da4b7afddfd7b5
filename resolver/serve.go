package resolver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// tcpIdle is how long a TCP client may stay silent between queries.
const tcpIdle = 8 * time.Second

// Serve answers on the given sockets (the gateway's, one pair per family)
// until the network has no container left, or SIGTERM/SIGINT. The sockets
// were bound by the hook that started this process, so queries sent before
// it runs wait in them. Nothing a client does ends it: errors reading or
// accepting (a descriptor limit reached, say) are retried after a pause.
func Serve(ctx context.Context, stateDir, network string, udps []net.PacketConn, tcps []net.Listener, remote func(string) map[string][]netip.Addr) error {
	s := NewServer(stateDir, network)
	s.Remote = remote
	if _, err := s.current(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, udp := range udps {
		wg.Add(1)
		go func() { defer wg.Done(); s.serveUDP(ctx, udp) }()
	}
	for _, tcp := range tcps {
		wg.Add(1)
		go func() { defer wg.Done(); s.serveTCP(ctx, tcp) }()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-sig:
			break loop
		case <-tick.C:
			if s.Empty() {
				break loop
			}
		}
	}
	cancel()
	for _, udp := range udps {
		udp.Close()
	}
	for _, tcp := range tcps {
		tcp.Close()
	}
	wg.Wait()
	return nil
}

// pause is the wait before retrying a failed read or accept: doubling from
// 5 ms to 1 s while the errors last.
type pause struct{ d time.Duration }

func (p *pause) wait(ctx context.Context) {
	p.d = min(max(2*p.d, 5*time.Millisecond), time.Second)
	select {
	case <-ctx.Done():
	case <-time.After(p.d):
	}
}

func (p *pause) reset() { p.d = 0 }

// serveUDP answers datagrams. Our own names are answered on this
// goroutine; forwarded queries each take a goroutine and a socket from the
// forwarder's budget, or are answered SERVFAIL when it has none.
func (s *Server) serveUDP(ctx context.Context, c net.PacketConn) {
	buf := make([]byte, tcpSize)
	var p pause
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			p.wait(ctx)
			continue
		}
		p.reset()
		q := append([]byte(nil), buf[:n]...)
		resp, job := s.Handle(q, clientAddr(from), false)
		if job != nil && !s.startForward(job, func(resp []byte) {
			if resp != nil {
				c.WriteTo(resp, from)
			}
		}) {
			resp = job.failed(errBusy)
		}
		if resp != nil {
			c.WriteTo(resp, from)
		}
	}
}

// serveTCP serves at most maxTCPConns clients at a time: one more makes
// the one silent the longest go, so neither idle clients nor the
// listener's backlog keep a new client out.
func (s *Server) serveTCP(ctx context.Context, l net.Listener) {
	clients := &tcpClients{last: map[net.Conn]time.Time{}}
	var p pause
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			p.wait(ctx) // EMFILE, ENFILE, ECONNABORTED...
			continue
		}
		p.reset()
		if old := clients.add(c); old != nil {
			old.Close()
		}
		go func() {
			defer clients.remove(c)
			s.serveConn(c, clients.touch)
		}()
	}
}

// tcpClients are the TCP clients served, with when each last asked.
type tcpClients struct {
	mu   sync.Mutex
	last map[net.Conn]time.Time
}

// add counts c in, and returns the client to close to make room, if any.
func (t *tcpClients) add(c net.Conn) (evicted net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.last) >= maxTCPConns {
		for o, at := range t.last {
			if evicted == nil || at.Before(t.last[evicted]) {
				evicted = o
			}
		}
		delete(t.last, evicted)
	}
	t.last[c] = time.Now()
	return evicted
}

func (t *tcpClients) touch(c net.Conn) {
	t.mu.Lock()
	if _, ok := t.last[c]; ok {
		t.last[c] = time.Now()
	}
	t.mu.Unlock()
}

func (t *tcpClients) remove(c net.Conn) {
	t.mu.Lock()
	delete(t.last, c)
	t.mu.Unlock()
}

// serveConn answers the queries of one TCP client. Each is answered as soon
// as it is ready (RFC 7766): a forwarded query does not hold up the next
// one; at most maxPerTCPCon are in flight.
func (s *Server) serveConn(c net.Conn, asked func(net.Conn)) {
	var wmu sync.Mutex
	var inflight sync.WaitGroup
	defer func() {
		inflight.Wait()
		c.Close()
	}()
	write := func(resp []byte) {
		if resp == nil {
			return
		}
		wmu.Lock()
		defer wmu.Unlock()
		c.SetWriteDeadline(time.Now().Add(tcpIdle))
		c.Write(tcpMsg(resp))
	}
	client := clientAddr(c.RemoteAddr())
	var pending atomic.Int32
	for {
		c.SetReadDeadline(time.Now().Add(tcpIdle))
		q, err := readTCPMsg(c)
		if err != nil {
			return
		}
		asked(c)
		resp, job := s.Handle(q, client, true)
		if job == nil {
			if resp == nil {
				return // not DNS: the client goes
			}
			write(resp)
			continue
		}
		if pending.Add(1) > maxPerTCPCon {
			pending.Add(-1)
			write(job.failed(errBusy))
			continue
		}
		inflight.Add(1)
		if !s.startForward(job, func(resp []byte) {
			defer inflight.Done()
			defer pending.Add(-1)
			write(resp)
		}) {
			inflight.Done()
			pending.Add(-1)
			write(job.failed(errBusy))
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
