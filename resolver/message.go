package resolver

import (
	"errors"
	"net/netip"

	"golang.org/x/net/dns/dnsmessage"
)

// TTL of our answers: short, since containers come and go.
const TTL = 60

// Sizes of DNS messages over UDP.
const (
	// plainUDPSize is what a client without EDNS takes (RFC 1035).
	plainUDPSize = 512
	// ednsUDPSize is the most we send over UDP, whatever a client
	// advertises, and what we advertise: a datagram that large is not
	// fragmented on today's paths (DNS flag day 2020).
	ednsUDPSize = 1232
	// tcpSize is a DNS message's limit over TCP.
	tcpSize = 65535
)

// rcodeBadVers is EDNS's BADVERS, an extended rcode (RFC 6891).
const rcodeBadVers dnsmessage.RCode = 16

// request is a query as the responder needs it.
type request struct {
	hdr dnsmessage.Header
	q   dnsmessage.Question
	// hasQ says q was read (a reply to a malformed query repeats it only
	// then).
	hasQ bool
	// edns says the query had an OPT record, with these fields.
	edns    bool
	udpSize int
	version uint8
	do      bool
}

// errNotQuery marks a message that is no query at all (too short for a
// header, or a response): it gets no answer.
var errNotQuery = errors.New("not a query")

// parseRequest reads a query. A query that can be answered but not served
// comes back with the rcode to answer it with (FORMERR, NOTIMP).
func parseRequest(msg []byte) (*request, dnsmessage.RCode, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.Response {
		return nil, 0, errNotQuery
	}
	r := &request{hdr: h}
	qs, err := p.AllQuestions()
	if err != nil {
		return r, dnsmessage.RCodeFormatError, nil
	}
	if len(qs) > 0 {
		r.q, r.hasQ = qs[0], true
	}
	if h.OpCode != 0 {
		return r, dnsmessage.RCodeNotImplemented, nil
	}
	if len(qs) != 1 {
		return r, dnsmessage.RCodeFormatError, nil
	}
	if err := p.SkipAllAnswers(); err != nil {
		return r, dnsmessage.RCodeFormatError, nil
	}
	if err := p.SkipAllAuthorities(); err != nil {
		return r, dnsmessage.RCodeFormatError, nil
	}
	for {
		rh, err := p.AdditionalHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return r, dnsmessage.RCodeFormatError, nil
		}
		if rh.Type == dnsmessage.TypeOPT {
			if r.edns { // two OPT records (RFC 6891 6.1.1)
				return r, dnsmessage.RCodeFormatError, nil
			}
			r.edns, r.udpSize, r.do = true, int(rh.Class), rh.DNSSECAllowed()
			r.version = uint8(rh.TTL >> 16)
		}
		if err := p.SkipAdditional(); err != nil {
			return r, dnsmessage.RCodeFormatError, nil
		}
	}
	if r.edns && r.version > 0 {
		return r, rcodeBadVers, nil
	}
	return r, dnsmessage.RCodeSuccess, nil
}

// limit is the largest answer the client takes over the transport.
func (r *request) limit(tcp bool) int {
	switch {
	case tcp:
		return tcpSize
	case !r.edns || r.udpSize <= plainUDPSize:
		return plainUDPSize
	}
	return min(r.udpSize, ednsUDPSize)
}

// reply is an answer to a request.
type reply struct {
	rcode dnsmessage.RCode
	// auth: the answer (or its absence) is ours, not forwarded.
	auth    bool
	answers []dnsmessage.Resource
	// soa, when set, goes in the authority section (negative answers).
	soa *dnsmessage.Resource
}

// pack builds the reply to r, at most limit bytes: a reply too large has
// TC set and as many whole answers as fit, no authority section, and the
// OPT record the query had.
func (r *request) pack(rep reply, limit int) []byte {
	msg, err := r.build(rep, len(rep.answers), false)
	if err == nil && len(msg) <= limit {
		return msg
	}
	for n := len(rep.answers) - 1; n >= 0; n-- {
		trunc := reply{rcode: rep.rcode, auth: rep.auth, answers: rep.answers}
		if msg, err := r.build(trunc, n, true); err == nil && len(msg) <= limit {
			return msg
		}
	}
	return nil
}

// build packs rep with its first n answers.
func (r *request) build(rep reply, n int, truncated bool) ([]byte, error) {
	b := dnsmessage.NewBuilder(make([]byte, 0, plainUDPSize), dnsmessage.Header{
		ID: r.hdr.ID, Response: true, OpCode: r.hdr.OpCode, RecursionDesired: r.hdr.RecursionDesired,
		RecursionAvailable: true, Authoritative: rep.auth, Truncated: truncated, RCode: rep.rcode & 0xf,
	})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if r.hasQ {
		if err := b.Question(r.q); err != nil {
			return nil, err
		}
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	for _, a := range rep.answers[:n] {
		if err := addResource(&b, a); err != nil {
			return nil, err
		}
	}
	if err := b.StartAuthorities(); err != nil {
		return nil, err
	}
	if rep.soa != nil && !truncated {
		if err := addResource(&b, *rep.soa); err != nil {
			return nil, err
		}
	}
	if err := b.StartAdditionals(); err != nil {
		return nil, err
	}
	if r.edns {
		var h dnsmessage.ResourceHeader
		if err := h.SetEDNS0(ednsUDPSize, rep.rcode, r.do); err != nil {
			return nil, err
		}
		if err := b.OPTResource(h, dnsmessage.OPTResource{}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

func addResource(b *dnsmessage.Builder, r dnsmessage.Resource) error {
	switch body := r.Body.(type) {
	case *dnsmessage.AResource:
		return b.AResource(r.Header, *body)
	case *dnsmessage.AAAAResource:
		return b.AAAAResource(r.Header, *body)
	case *dnsmessage.PTRResource:
		return b.PTRResource(r.Header, *body)
	case *dnsmessage.SOAResource:
		return b.SOAResource(r.Header, *body)
	}
	return errors.New("unsupported resource")
}

// aRecords are A answers for name, from its IPv4 addresses.
func aRecords(name dnsmessage.Name, addrs []netip.Addr) []dnsmessage.Resource {
	return addrRecords(name, addrs, false)
}

// aaaaRecords are AAAA answers for name, from its IPv6 addresses.
func aaaaRecords(name dnsmessage.Name, addrs []netip.Addr) []dnsmessage.Resource {
	return addrRecords(name, addrs, true)
}

func addrRecords(name dnsmessage.Name, addrs []netip.Addr, v6 bool) []dnsmessage.Resource {
	var out []dnsmessage.Resource
	for _, a := range addrs {
		r := dnsmessage.Resource{Header: dnsmessage.ResourceHeader{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: TTL}}
		switch {
		case a.Is6() != v6:
			continue
		case v6:
			r.Header.Type, r.Body = dnsmessage.TypeAAAA, &dnsmessage.AAAAResource{AAAA: a.As16()}
		default:
			r.Body = &dnsmessage.AResource{A: a.As4()}
		}
		out = append(out, r)
	}
	return out
}

// soaFor is the SOA record that goes with a negative answer about owner
// (a name of ours, or the root for a name an internal network does not
// hold): its TTL and minimum say how long the absence may be cached.
func soaFor(owner dnsmessage.Name) *dnsmessage.Resource {
	return &dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: owner, Type: dnsmessage.TypeSOA, Class: dnsmessage.ClassINET, TTL: TTL},
		Body: &dnsmessage.SOAResource{
			NS: dnsmessage.MustNewName("ns.netshim."), MBox: dnsmessage.MustNewName("hostmaster.netshim."),
			Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, MinTTL: TTL,
		},
	}
}
