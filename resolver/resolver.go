// Package resolver is the DNS responder of a user-defined network: it
// answers A and PTR queries for the network's containers (names, aliases,
// short ids) and forwards other names upstream. It serves from the
// network's state file, re-read whenever a hook has replaced it, so a name
// resolves as soon as its container's setup returns and stops with its
// teardown.
package resolver

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/netshim/netshim/state"
)

// TTL of our answers: short, since containers come and go.
const TTL = 60

// Server answers for one network.
type Server struct {
	// Path is the network's state file.
	Path string
	// Timeout bounds one upstream exchange.
	Timeout time.Duration

	mu        sync.Mutex
	ino       uint64
	mtime     time.Time
	names     map[string][]netip.Addr // lower-case FQDN
	ptr       map[string]string       // reverse name -> FQDN
	clientUp  map[netip.Addr][]string
	upstreams []string
	internal  bool
	empty     bool
}

// reload re-reads the state file if it was replaced. Each write is an
// atomic rename, so a new inode means new content.
func (s *Server) reload() error {
	fi, err := os.Stat(s.Path)
	if err != nil {
		s.mu.Lock()
		s.names, s.ptr, s.clientUp, s.empty = nil, nil, nil, true
		s.mu.Unlock()
		return nil
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	var ino uint64
	if st != nil {
		ino = st.Ino
	}
	s.mu.Lock()
	unchanged := ino == s.ino && fi.ModTime().Equal(s.mtime) && s.names != nil
	s.mu.Unlock()
	if unchanged {
		return nil
	}
	var n state.Net
	data, err := os.ReadFile(s.Path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("%s: %w", s.Path, err)
	}
	names := map[string][]netip.Addr{}
	ptr := map[string]string{}
	clientUp := map[netip.Addr][]string{}
	var ups []string
	internal := false
	if n.DNS != nil {
		for addr, e := range n.DNS.Endpoints {
			for i, name := range e.Names {
				fq := dns.Fqdn(strings.ToLower(name))
				names[fq] = append(names[fq], addr)
				if i == 0 {
					rev, _ := dns.ReverseAddr(addr.String())
					ptr[rev] = fq
				}
			}
			if len(e.Upstreams) > 0 {
				clientUp[addr] = e.Upstreams
			}
		}
		ups, internal = n.DNS.Upstreams, n.DNS.Internal
	}
	s.mu.Lock()
	s.ino, s.mtime = ino, fi.ModTime()
	s.names, s.ptr, s.clientUp, s.upstreams, s.internal = names, ptr, clientUp, ups, internal
	s.empty = n.DNS == nil || len(n.DNS.Endpoints) == 0
	s.mu.Unlock()
	return nil
}

// Empty reports whether no container needs the responder any more.
func (s *Server) Empty() bool {
	if err := s.reload(); err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.empty
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if err := s.reload(); err != nil {
		fail(w, req, dns.RcodeServerFailure)
		return
	}
	if len(req.Question) != 1 {
		fail(w, req, dns.RcodeFormatError)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	addrs, known := s.names[name]
	target, knownPTR := s.ptr[name]
	var ups []string
	if client, ok := clientAddr(w); ok {
		ups = s.clientUp[client]
	}
	if len(ups) == 0 {
		ups = s.upstreams
	}
	internal := s.internal
	s.mu.Unlock()

	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = true
	switch {
	case known:
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
			for _, a := range addrs {
				resp.Answer = append(resp.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL},
					A:   a.AsSlice(),
				})
			}
		}
		// Other types of a name of ours: no data, so the client does not
		// wait on an upstream that cannot know it.
		w.WriteMsg(resp)
	case knownPTR && q.Qtype == dns.TypePTR:
		resp.Answer = append(resp.Answer, &dns.PTR{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: TTL},
			Ptr: target,
		})
		w.WriteMsg(resp)
	case internal || len(ups) == 0:
		fail(w, req, dns.RcodeServerFailure)
	default:
		s.forward(w, req, ups)
	}
}

func (s *Server) forward(w dns.ResponseWriter, req *dns.Msg, ups []string) {
	network := "udp"
	if _, ok := w.RemoteAddr().(interface{ Network() string }); ok && w.RemoteAddr().Network() == "tcp" {
		network = "tcp"
	}
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	for _, up := range ups {
		c := &dns.Client{Net: network, Timeout: timeout}
		resp, _, err := c.Exchange(req, up)
		if err == nil && resp != nil && resp.Truncated && network == "udp" {
			c.Net = "tcp"
			resp, _, err = c.Exchange(req, up)
		}
		if err != nil || resp == nil {
			continue
		}
		resp.Id = req.Id
		w.WriteMsg(resp)
		return
	}
	fail(w, req, dns.RcodeServerFailure)
}

func fail(w dns.ResponseWriter, req *dns.Msg, rcode int) {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	w.WriteMsg(m)
}

func clientAddr(w dns.ResponseWriter) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(w.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}
