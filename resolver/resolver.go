// Package resolver is the DNS responder of a user-defined network: it
// answers A and PTR queries for the containers of the networks its client
// is attached to (names, aliases, short ids) and forwards other names
// upstream. It answers only the network's containers and the host itself.
// It serves from the state dir's network files, re-read whenever a hook
// has replaced one, so a name resolves as soon as its container's setup
// returns and stops with its teardown.
package resolver

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Server answers for one network.
type Server struct {
	// Dir is the state dir's networks/ directory.
	Dir string
	// Network is the network whose gateway the server listens on.
	Network string

	// Remote, when set, returns the names of an overlay network's
	// containers on other hosts (lower-case FQDN -> addresses).
	Remote func(network string) map[string][]netip.Addr

	fwd *forwarder

	mu    sync.Mutex
	stamp dirStamp
	z     *zone

	hostMu    sync.Mutex
	hostAddrs map[netip.Addr]bool
	hostRead  time.Time
}

// NewServer returns the server of network, from the state dir stateDir.
func NewServer(stateDir, network string) *Server {
	return &Server{Dir: filepath.Join(stateDir, "networks"), Network: network, fwd: newForwarder()}
}

// dirStamp identifies a version of the networks directory: every state
// write renames a file into it, which changes its modification time.
type dirStamp struct {
	ino   uint64
	mtime time.Time
}

// current returns the zone, re-read if a network file was replaced.
func (s *Server) current() (*zone, error) {
	fi, err := os.Stat(s.Dir)
	if err != nil {
		return &zone{}, nil // no state: nothing to answer for
	}
	var st dirStamp
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	st.mtime = fi.ModTime()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.z != nil && st == s.stamp {
		return s.z, nil
	}
	z, err := loadZone(s.Dir)
	if err != nil {
		return nil, err
	}
	s.z, s.stamp = z, st
	return z, nil
}

// Empty reports whether no container needs the responder any more.
func (s *Server) Empty() bool {
	z, err := s.current()
	return err == nil && z.empty(s.Network)
}

// isHost reports whether a is an address of the host: its own queries to
// the gateway come from one (the kernel drops, as martians, packets from
// outside that claim one). The addresses are read again, at most once a
// second, when one is not known.
func (s *Server) isHost(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	s.hostMu.Lock()
	defer s.hostMu.Unlock()
	if s.hostAddrs[a] {
		return true
	}
	if time.Since(s.hostRead) < time.Second {
		return false
	}
	s.hostRead = time.Now()
	s.hostAddrs = map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, ia := range addrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			s.hostAddrs[p.Addr().Unmap()] = true
		}
	}
	return s.hostAddrs[a]
}

// forwardJob is a query to ask upstream, with how to answer when that
// fails.
type forwardJob struct {
	req       *request
	q         []byte
	upstreams []string
	tcp       bool
	limit     int
}

// failed is the answer when no upstream answered: SERVFAIL, or TC when
// the answer was too large for UDP.
func (j *forwardJob) failed(err error) []byte {
	if errors.Is(err, errTooLarge) {
		msg, _ := j.req.build(reply{}, 0, true)
		return msg
	}
	return j.req.pack(reply{rcode: dnsmessage.RCodeServerFailure}, j.limit)
}

// Handle answers query q from client, received over TCP or UDP. It returns
// the answer (nil: no answer at all), or a job to forward upstream.
func (s *Server) Handle(q []byte, client netip.Addr, tcp bool) ([]byte, *forwardJob) {
	req, rcode, err := parseRequest(q)
	if err != nil {
		return nil, nil
	}
	limit := req.limit(tcp)
	if rcode != dnsmessage.RCodeSuccess {
		return req.pack(reply{rcode: rcode}, limit), nil
	}
	// Only the Internet class is served; anything else is refused, not
	// malformed.
	if req.q.Class != dnsmessage.ClassINET {
		return req.pack(reply{rcode: dnsmessage.RCodeRefused}, limit), nil
	}
	z, err := s.current()
	if err != nil {
		return req.pack(reply{rcode: dnsmessage.RCodeServerFailure}, limit), nil
	}
	v, ok := z.viewFor(s.Network, client, s.isHost(client))
	if !ok {
		// Not a container of the network, nor the host: no names, no
		// recursion, and an answer no larger than the query.
		return req.pack(reply{rcode: dnsmessage.RCodeRefused}, limit), nil
	}
	qname := req.q.Name
	name := strings.ToLower(qname.String())
	addrs, ours := v.addrs(name)
	if !ours {
		addrs, ours = s.remote(v, name)
	}
	if ours {
		// A name of ours: its addresses of the family asked, or no data
		// (for other types, and for a family it has no address of), so
		// the client does not wait on an upstream that cannot know it.
		var answers []dnsmessage.Resource
		switch req.q.Type {
		case dnsmessage.TypeA:
			answers = aRecords(qname, addrs)
		case dnsmessage.TypeAAAA:
			answers = aaaaRecords(qname, addrs)
		case dnsmessage.TypeALL:
			answers = append(aRecords(qname, addrs), aaaaRecords(qname, addrs)...)
		}
		if len(answers) > 0 {
			return req.pack(reply{auth: true, answers: answers}, limit), nil
		}
		return req.pack(reply{auth: true, soa: soaFor(qname)}, limit), nil
	}
	if target, ours := v.ptrTarget(name); ours {
		if target == "" {
			return req.pack(reply{rcode: dnsmessage.RCodeNameError, auth: true, soa: soaFor(qname)}, limit), nil
		}
		if req.q.Type != dnsmessage.TypePTR && req.q.Type != dnsmessage.TypeALL {
			return req.pack(reply{auth: true, soa: soaFor(qname)}, limit), nil
		}
		ptr, err := dnsmessage.NewName(target)
		if err != nil {
			return req.pack(reply{rcode: dnsmessage.RCodeServerFailure}, limit), nil
		}
		return req.pack(reply{auth: true, answers: []dnsmessage.Resource{{
			Header: dnsmessage.ResourceHeader{Name: qname, Type: dnsmessage.TypePTR, Class: dnsmessage.ClassINET, TTL: TTL},
			Body:   &dnsmessage.PTRResource{PTR: ptr},
		}}}, limit), nil
	}
	switch {
	case v.internal():
		// An internal network holds every name it has: the rest does not
		// exist, for it.
		return req.pack(reply{rcode: dnsmessage.RCodeNameError, auth: true, soa: soaFor(dnsmessage.MustNewName("."))}, limit), nil
	case len(v.upstreams) == 0:
		return req.pack(reply{rcode: dnsmessage.RCodeServerFailure}, limit), nil
	}
	return nil, &forwardJob{req: req, q: q, upstreams: v.upstreams, tcp: tcp, limit: limit}
}

// remote looks name up on the other hosts of the view's overlay networks.
func (s *Server) remote(v *view, name string) ([]netip.Addr, bool) {
	if s.Remote == nil {
		return nil, false
	}
	for _, n := range v.nets() {
		if n.overlay {
			if a, ok := s.Remote(n.name)[name]; ok {
				return a, true
			}
		}
	}
	return nil, false
}

// Answer answers query q from client at once, forwarding on the calling
// goroutine if need be (tests, fuzzing).
func (s *Server) Answer(q []byte, client netip.Addr, tcp bool) []byte {
	resp, job := s.Handle(q, client, tcp)
	if job == nil {
		return resp
	}
	return s.runForward(job)
}

// startForward runs job on a goroutine of its own and hands its answer to
// answer, if the budget has a slot for it (the caller answers SERVFAIL
// otherwise).
func (s *Server) startForward(job *forwardJob, answer func([]byte)) bool {
	if !s.fwd.acquire() {
		return false
	}
	go func() { answer(s.runForwardHeld(job)) }()
	return true
}

// runForward forwards job, taking its first slot.
func (s *Server) runForward(job *forwardJob) []byte {
	if !s.fwd.acquire() {
		return job.failed(errBusy)
	}
	return s.runForwardHeld(job)
}

// runForwardHeld forwards job with its first slot held.
func (s *Server) runForwardHeld(job *forwardJob) []byte {
	resp, err := s.fwd.forward(job.q, job.upstreams, job.tcp, job.limit)
	if err != nil {
		return job.failed(err)
	}
	return resp
}
