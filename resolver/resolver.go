// Package resolver is the DNS responder of a user-defined network: it
// answers A and PTR queries for the network's containers (names, aliases,
// short ids) and forwards other names upstream. It serves from the
// network's state file, re-read whenever a hook has replaced it, so a name
// resolves as soon as its container's setup returns and stops with its
// teardown.
package resolver

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"

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
				fq := fqdn(strings.ToLower(name))
				names[fq] = append(names[fq], addr)
				if i == 0 && addr.Is4() {
					ptr[reverseName(addr)] = fq
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

// Answer returns the reply to the query q from client (nil: drop it).
// overTCP says how the query came, and so how to forward it.
func (s *Server) Answer(q []byte, client netip.Addr, overTCP bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil // not a query: no header to answer to
	}
	qs, err := p.AllQuestions()
	if err != nil {
		return reply(h, nil, dnsmessage.RCodeFormatError, nil)
	}
	if err := s.reload(); err != nil {
		return reply(h, qs, dnsmessage.RCodeServerFailure, nil)
	}
	if len(qs) != 1 || h.OpCode != 0 {
		return reply(h, qs, dnsmessage.RCodeFormatError, nil)
	}
	question := qs[0]
	name := strings.ToLower(question.Name.String())
	s.mu.Lock()
	addrs, known := s.names[name]
	target, knownPTR := s.ptr[name]
	ups := s.clientUp[client]
	if len(ups) == 0 {
		ups = s.upstreams
	}
	internal := s.internal
	s.mu.Unlock()

	hdr := dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: TTL}
	switch {
	case known:
		// Other types of a name of ours get no data, so the client does
		// not wait on an upstream that cannot know it.
		return reply(h, qs, dnsmessage.RCodeSuccess, func(b *dnsmessage.Builder) error {
			if question.Type != dnsmessage.TypeA && question.Type != dnsmessage.TypeALL {
				return nil
			}
			for _, a := range addrs {
				if err := b.AResource(hdr, dnsmessage.AResource{A: a.As4()}); err != nil {
					return err
				}
			}
			return nil
		})
	case knownPTR && question.Type == dnsmessage.TypePTR:
		ptr, err := dnsmessage.NewName(target)
		if err != nil {
			return reply(h, qs, dnsmessage.RCodeServerFailure, nil)
		}
		return reply(h, qs, dnsmessage.RCodeSuccess, func(b *dnsmessage.Builder) error {
			return b.PTRResource(hdr, dnsmessage.PTRResource{PTR: ptr})
		})
	case internal || len(ups) == 0:
		return reply(h, qs, dnsmessage.RCodeServerFailure, nil)
	}
	if resp := s.forward(q, ups, overTCP); resp != nil {
		return resp
	}
	return reply(h, qs, dnsmessage.RCodeServerFailure, nil)
}

// reply builds the answer to the query with header h and questions qs;
// answers, when set, adds the records. Only a successful answer is
// authoritative.
func reply(h dnsmessage.Header, qs []dnsmessage.Question, rcode dnsmessage.RCode, answers func(*dnsmessage.Builder) error) []byte {
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), dnsmessage.Header{
		ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired,
		RecursionAvailable: true, Authoritative: answers != nil, RCode: rcode,
	})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	for _, q := range qs {
		if err := b.Question(q); err != nil {
			return nil
		}
	}
	if answers != nil {
		if err := b.StartAnswers(); err != nil {
			return nil
		}
		if err := answers(&b); err != nil {
			return nil
		}
	}
	msg, err := b.Finish()
	if err != nil {
		return nil
	}
	return msg
}

// forward asks the upstreams in turn, the way the query came (a truncated
// answer over UDP is asked again over TCP), and returns the first answer.
func (s *Server) forward(q []byte, ups []string, overTCP bool) []byte {
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	for _, up := range ups {
		resp, err := exchange(q, up, overTCP, timeout)
		if err == nil && !overTCP && truncated(resp) {
			resp, err = exchange(q, up, true, timeout)
		}
		if err == nil {
			return resp
		}
	}
	return nil
}

// exchange sends q to server and waits for the answer with q's id.
func exchange(q []byte, server string, overTCP bool, timeout time.Duration) ([]byte, error) {
	network := "udp"
	if overTCP {
		network = "tcp"
	}
	c, err := net.DialTimeout(network, server, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if overTCP {
		if _, err := c.Write(tcpMsg(q)); err != nil {
			return nil, err
		}
		return readTCPMsg(c)
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		// A late answer to an earlier query on a reused port is skipped.
		if n >= 12 && buf[0] == q[0] && buf[1] == q[1] {
			return buf[:n], nil
		}
	}
}

// truncated reports whether a message has the TC bit.
func truncated(msg []byte) bool {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	return err == nil && h.Truncated
}

// tcpMsg is msg with the length prefix of DNS over TCP.
func tcpMsg(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(msg)), uint16(len(msg))), msg...)
}

// readTCPMsg reads one length-prefixed DNS message.
func readTCPMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

// reverseName is the in-addr.arpa name of an IPv4 address.
func reverseName(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa.", b[3], b[2], b[1], b[0])
}

// fqdn adds the root's dot to a name that lacks it.
func fqdn(name string) string {
	if strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}
