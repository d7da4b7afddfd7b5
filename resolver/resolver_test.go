package resolver

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/netshim/netshim/state"
)

var (
	web    = netip.MustParseAddr("10.1.0.2")
	db     = netip.MustParseAddr("10.1.0.3")
	nobody = netip.MustParseAddr("10.1.0.99")
)

// writeNet writes a network's state file into the state dir dir.
func writeNet(t *testing.T, dir string, n state.Net) {
	t.Helper()
	data, err := json.Marshal(&n)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "networks"), 0o700)
	if err := os.WriteFile(filepath.Join(dir, "networks", n.Name+".json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// server answers for appnet (10.1.0.0/24), with two containers, one of them
// also on othernet.
func server(t *testing.T, internal bool, upstreams ...string) *Server {
	t.Helper()
	dir := t.TempDir()
	writeNet(t, dir, state.Net{Name: "appnet", Subnet: netip.MustParsePrefix("10.1.0.0/24"), DNS: &state.NetDNS{
		Endpoints: map[netip.Addr]state.DNSEntry{
			web: {ID: "aaaa", Names: []string{"Web", "web-alias"}},
			db:  {ID: "bbbb", Names: []string{"db"}},
		},
		Internal: internal, Upstreams: upstreams,
	}})
	writeNet(t, dir, state.Net{Name: "othernet", Subnet: netip.MustParsePrefix("10.2.0.0/24"), DNS: &state.NetDNS{
		Endpoints: map[netip.Addr]state.DNSEntry{
			netip.MustParseAddr("10.2.0.2"): {ID: "aaaa", Names: []string{"Web"}},
			netip.MustParseAddr("10.2.0.3"): {ID: "cccc", Names: []string{"cache"}},
		},
	}})
	return NewServer(dir, "appnet")
}

func query(t testing.TB, name string, typ dnsmessage.Type, extra ...string) []byte {
	return queryWith(t, dnsmessage.Header{ID: 0x4242, RecursionDesired: true}, dnsmessage.ClassINET, nil, name, typ, extra...)
}

// queryWith builds a query; opt, when set, is its OPT record's header.
func queryWith(t testing.TB, h dnsmessage.Header, class dnsmessage.Class, opt *dnsmessage.ResourceHeader, name string, typ dnsmessage.Type, extra ...string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, h)
	b.StartQuestions()
	for _, n := range append([]string{name}, extra...) {
		if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(n), Type: typ, Class: class}); err != nil {
			t.Fatal(err)
		}
	}
	if opt != nil {
		b.StartAdditionals()
		if err := b.OPTResource(*opt, dnsmessage.OPTResource{}); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func parse(t testing.TB, msg []byte) *dnsmessage.Message {
	t.Helper()
	if msg == nil {
		t.Fatal("no answer")
	}
	var m dnsmessage.Message
	if err := m.Unpack(msg); err != nil {
		t.Fatalf("unpack answer: %v", err)
	}
	return &m
}

// opt is the reply's OPT record, if any.
func opt(m *dnsmessage.Message) *dnsmessage.Resource {
	for i := range m.Additionals {
		if m.Additionals[i].Header.Type == dnsmessage.TypeOPT {
			return &m.Additionals[i]
		}
	}
	return nil
}

func TestAnswerOwnNames(t *testing.T) {
	s := server(t, false)
	a := parse(t, s.Answer(query(t, "WEB.", dnsmessage.TypeA), db, false))
	if a.ID != 0x4242 || !a.Response || !a.Authoritative || !a.RecursionDesired || a.RCode != dnsmessage.RCodeSuccess {
		t.Fatalf("header %+v", a.Header)
	}
	if len(a.Questions) != 1 || a.Questions[0].Name.String() != "WEB." {
		t.Fatalf("question %+v", a.Questions)
	}
	if len(a.Answers) != 1 {
		t.Fatalf("answers %+v", a.Answers)
	}
	if r, ok := a.Answers[0].Body.(*dnsmessage.AResource); !ok || r.A != web.As4() || a.Answers[0].Header.TTL != TTL {
		t.Fatalf("answer %+v", a.Answers[0])
	}
	if a := parse(t, s.Answer(query(t, "web-alias.", dnsmessage.TypeALL), db, true)); len(a.Answers) != 1 {
		t.Fatalf("ANY web-alias: %+v", a.Answers)
	}
	// The first name of an address answers its PTR query.
	a = parse(t, s.Answer(query(t, "2.0.1.10.in-addr.arpa.", dnsmessage.TypePTR), db, false))
	if len(a.Answers) != 1 {
		t.Fatalf("PTR: %+v", a.Answers)
	}
	if r, ok := a.Answers[0].Body.(*dnsmessage.PTRResource); !ok || r.PTR.String() != "web." {
		t.Fatalf("PTR answer %+v", a.Answers[0])
	}
}

// Only the network's containers and the host get answers; a container
// attached to several networks gets the names of each, the address on the
// network its query came from first.
func TestScope(t *testing.T) {
	s := server(t, false, "192.0.2.53:53")
	s.fwd.total = 100 * time.Millisecond // db's query for cache below is forwarded
	for _, who := range []netip.Addr{nobody, netip.MustParseAddr("10.2.0.3"), netip.MustParseAddr("198.51.100.2")} {
		for _, name := range []string{"web.", "example.org.", "2.0.1.10.in-addr.arpa."} {
			a := parse(t, s.Answer(query(t, name, dnsmessage.TypeA), who, false))
			if a.RCode != dnsmessage.RCodeRefused || len(a.Answers) != 0 {
				t.Errorf("%s asking %s: %v %+v", who, name, a.RCode, a.Answers)
			}
		}
	}
	// The host (a loopback address, or one of its own).
	for _, host := range []netip.Addr{netip.MustParseAddr("127.0.0.1")} {
		if a := parse(t, s.Answer(query(t, "db.", dnsmessage.TypeA), host, false)); len(a.Answers) != 1 {
			t.Errorf("host %s: %+v", host, a)
		}
	}
	// web (aaaa) is on appnet and othernet: it resolves othernet's cache,
	// and its own name to its appnet address; db (bbbb) does not see cache.
	if a := parse(t, s.Answer(query(t, "cache.", dnsmessage.TypeA), web, false)); len(a.Answers) != 1 ||
		a.Answers[0].Body.(*dnsmessage.AResource).A != [4]byte{10, 2, 0, 3} {
		t.Errorf("web asking cache: %+v", a)
	}
	if a := parse(t, s.Answer(query(t, "web.", dnsmessage.TypeA), web, false)); len(a.Answers) != 1 ||
		a.Answers[0].Body.(*dnsmessage.AResource).A != web.As4() {
		t.Errorf("web asking web: %+v", a)
	}
	if a := parse(t, s.Answer(query(t, "cache.", dnsmessage.TypeA), db, false)); len(a.Answers) != 0 {
		t.Errorf("db sees another network's names: %+v", a)
	}
}

func TestNegativeAnswers(t *testing.T) {
	s := server(t, false)
	soa := func(m *dnsmessage.Message) bool {
		return len(m.Authorities) == 1 && m.Authorities[0].Header.Type == dnsmessage.TypeSOA
	}
	// A name of ours asked for another type: no data, with the SOA.
	if a := parse(t, s.Answer(query(t, "db.", dnsmessage.TypeAAAA), db, false)); a.RCode != dnsmessage.RCodeSuccess || len(a.Answers) != 0 || !a.Authoritative || !soa(a) {
		t.Errorf("AAAA db: %+v", a)
	}
	// An address of our subnet nobody holds: NXDOMAIN, ours to say.
	if a := parse(t, s.Answer(query(t, "99.0.1.10.in-addr.arpa.", dnsmessage.TypePTR), db, false)); a.RCode != dnsmessage.RCodeNameError || !soa(a) {
		t.Errorf("PTR of a free address: %+v", a)
	}
	// No upstream: other names fail at once.
	if a := parse(t, s.Answer(query(t, "example.org.", dnsmessage.TypeA), db, false)); a.RCode != dnsmessage.RCodeServerFailure || a.Authoritative {
		t.Errorf("no upstream: %+v", a.Header)
	}
	// An internal network holds every name it has: NXDOMAIN for the rest.
	in := server(t, true, "192.0.2.53:53")
	start := time.Now()
	a := parse(t, in.Answer(query(t, "example.org.", dnsmessage.TypeA), db, false))
	if a.RCode != dnsmessage.RCodeNameError || !soa(a) || time.Since(start) > 100*time.Millisecond {
		t.Errorf("internal network: %+v after %s", a, time.Since(start))
	}
}

func TestMalformedAndUnsupported(t *testing.T) {
	s := server(t, false)
	if a := parse(t, s.Answer(query(t, "web.", dnsmessage.TypeA, "db."), db, false)); a.RCode != dnsmessage.RCodeFormatError {
		t.Errorf("two questions: %+v", a.Header)
	}
	if got := s.Answer([]byte{1, 2, 3}, db, false); got != nil {
		t.Errorf("garbage answered: %v", got)
	}
	resp := s.Answer(query(t, "web.", dnsmessage.TypeA), db, false)
	if got := s.Answer(resp, db, false); got != nil {
		t.Errorf("a response answered: %v", got)
	}
	// Opcodes other than QUERY are not implemented.
	if a := parse(t, s.Answer(queryWith(t, dnsmessage.Header{ID: 7, OpCode: 2}, dnsmessage.ClassINET, nil, "web.", dnsmessage.TypeA), db, false)); a.RCode != dnsmessage.RCodeNotImplemented {
		t.Errorf("STATUS opcode: %+v", a.Header)
	}
	// Other classes are refused (CH TXT version.bind).
	if a := parse(t, s.Answer(queryWith(t, dnsmessage.Header{ID: 7}, dnsmessage.ClassCHAOS, nil, "web.", dnsmessage.TypeA), db, false)); a.RCode != dnsmessage.RCodeRefused || len(a.Answers) != 0 {
		t.Errorf("class CH: %+v", a)
	}
	os.RemoveAll(s.Dir)
	if !s.Empty() {
		t.Error("not empty without state")
	}
}

func TestEDNS(t *testing.T) {
	s := server(t, false)
	var h dnsmessage.ResourceHeader
	h.SetEDNS0(4096, 0, true)
	a := parse(t, s.Answer(queryWith(t, dnsmessage.Header{ID: 9, RecursionDesired: true}, dnsmessage.ClassINET, &h, "web.", dnsmessage.TypeA), db, false))
	o := opt(a)
	if o == nil || int(o.Header.Class) != ednsUDPSize || !o.Header.DNSSECAllowed() || len(a.Answers) != 1 {
		t.Errorf("EDNS query: OPT %+v, answers %+v", o, a.Answers)
	}
	if a := parse(t, s.Answer(query(t, "web.", dnsmessage.TypeA), db, false)); opt(a) != nil {
		t.Error("OPT in the answer to a query without one")
	}
	// EDNS version 1: BADVERS (extended rcode 16 = 1 in the OPT's high bits).
	h.TTL |= 1 << 16
	a = parse(t, s.Answer(queryWith(t, dnsmessage.Header{ID: 9}, dnsmessage.ClassINET, &h, "web.", dnsmessage.TypeA), db, false))
	if o := opt(a); o == nil || o.Header.ExtendedRCode(a.RCode) != rcodeBadVers {
		t.Errorf("EDNS version 1: %+v", a)
	}
}

// 60 containers sharing an alias: over UDP without EDNS, TC and at most 512
// bytes of whole answers; with EDNS up to the client's size (at most 1232);
// over TCP every address.
func TestTruncation(t *testing.T) {
	dir := t.TempDir()
	eps := map[netip.Addr]state.DNSEntry{}
	for i := 0; i < 60; i++ {
		eps[netip.AddrFrom4([4]byte{10, 1, 0, byte(10 + i)})] = state.DNSEntry{ID: fmt.Sprint(i), Names: []string{fmt.Sprintf("c%d", i), "shared"}}
	}
	writeNet(t, dir, state.Net{Name: "appnet", Subnet: netip.MustParsePrefix("10.1.0.0/24"), DNS: &state.NetDNS{Endpoints: eps}})
	s := NewServer(dir, "appnet")
	client := netip.MustParseAddr("10.1.0.10")
	msg := s.Answer(query(t, "shared.", dnsmessage.TypeA), client, false)
	a := parse(t, msg)
	if !a.Truncated || len(msg) > 512 || len(a.Answers) == 0 || len(a.Answers) >= 60 {
		t.Errorf("UDP: TC %v, %d bytes, %d answers", a.Truncated, len(msg), len(a.Answers))
	}
	var h dnsmessage.ResourceHeader
	h.SetEDNS0(4096, 0, false)
	msg = s.Answer(queryWith(t, dnsmessage.Header{ID: 1}, dnsmessage.ClassINET, &h, "shared.", dnsmessage.TypeA), client, false)
	if a := parse(t, msg); a.Truncated || len(a.Answers) != 60 || len(msg) > ednsUDPSize || opt(a) == nil {
		t.Errorf("UDP with EDNS 4096: TC %v, %d bytes, %d answers", a.Truncated, len(msg), len(a.Answers))
	}
	h.SetEDNS0(600, 0, false)
	msg = s.Answer(queryWith(t, dnsmessage.Header{ID: 1}, dnsmessage.ClassINET, &h, "shared.", dnsmessage.TypeA), client, false)
	if a := parse(t, msg); !a.Truncated || len(msg) > 600 || opt(a) == nil {
		t.Errorf("UDP with EDNS 600: TC %v, %d bytes, OPT %v", a.Truncated, len(msg), opt(a))
	}
	if a := parse(t, s.Answer(query(t, "shared.", dnsmessage.TypeA), client, true)); a.Truncated || len(a.Answers) != 60 {
		t.Errorf("TCP: TC %v, %d answers", a.Truncated, len(a.Answers))
	}
}

// upstream is a UDP DNS server on 127.0.0.1 answering every A query with
// 192.0.2.1 after delay, or never with dead. It returns its address.
func upstream(t *testing.T, delay time.Duration, dead bool) string {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	answer := func(q []byte) []byte {
		var m dnsmessage.Message
		if dead || m.Unpack(q) != nil {
			return nil
		}
		m.Response = true
		m.Answers = aRecordsAsResources(m.Questions[0].Name)
		resp, _ := m.Pack()
		time.Sleep(delay)
		return resp
	}
	// TCP on the same port.
	l, err := net.Listen("tcp4", c.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				for {
					q, err := readTCPMsg(conn)
					if err != nil {
						return
					}
					if resp := answer(q); resp != nil {
						conn.Write(tcpMsg(resp))
					}
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			q := append([]byte(nil), buf[:n]...)
			go func() {
				if resp := answer(q); resp != nil {
					c.WriteTo(resp, from)
				}
			}()
		}
	}()
	return c.LocalAddr().String()
}

func aRecordsAsResources(name dnsmessage.Name) []dnsmessage.Resource {
	return aRecords(name, []netip.Addr{netip.MustParseAddr("192.0.2.1")})
}

func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// A dead first upstream costs the first lookup one hedge, not every
// lookup; a slow upstream still answers when it is the only one.
func TestForwardHedging(t *testing.T) {
	dead, alive := upstream(t, 0, true), upstream(t, 0, false)
	s := server(t, false, dead, alive)
	s.fwd.hedge, s.fwd.total = 100*time.Millisecond, 2*time.Second
	ask := func(s *Server) *dnsmessage.Message {
		return parse(t, s.Answer(query(t, "example.org.", dnsmessage.TypeA), db, false))
	}
	var a *dnsmessage.Message
	if d := timed(func() { a = ask(s) }); len(a.Answers) != 1 || d < 100*time.Millisecond {
		t.Errorf("first lookup: %d answers after %s", len(a.Answers), d)
	}
	for i := 0; i < 5; i++ {
		if d := timed(func() { a = ask(s) }); len(a.Answers) != 1 || d > 50*time.Millisecond {
			t.Errorf("lookup %d after the dead upstream was seen: %d answers after %s", i+2, len(a.Answers), d)
		}
	}
	slow := server(t, false, upstream(t, 300*time.Millisecond, false))
	slow.fwd.hedge, slow.fwd.total = 100*time.Millisecond, 2*time.Second
	if a := ask(slow); len(a.Answers) != 1 {
		t.Errorf("a slow upstream did not get through: %+v", a)
	}
	// All dead: SERVFAIL by the total, well inside glibc's 5 s.
	allDead := server(t, false, upstream(t, 0, true), upstream(t, 0, true), upstream(t, 0, true))
	allDead.fwd.hedge, allDead.fwd.total = 100*time.Millisecond, 500*time.Millisecond
	if d := timed(func() { a = ask(allDead) }); a.RCode != dnsmessage.RCodeServerFailure || d > time.Second {
		t.Errorf("all dead: %v after %s", a.RCode, d)
	}
}

// With no budget left, a forwarded query gets SERVFAIL at once; our own
// names are still answered.
func TestForwardBudget(t *testing.T) {
	s := server(t, false, upstream(t, 0, false))
	s.fwd.budget = func() int { return 0 }
	if a := parse(t, s.Answer(query(t, "example.org.", dnsmessage.TypeA), db, false)); a.RCode != dnsmessage.RCodeServerFailure {
		t.Errorf("over budget: %+v", a.Header)
	}
	if a := parse(t, s.Answer(query(t, "web.", dnsmessage.TypeA), db, false)); len(a.Answers) != 1 {
		t.Errorf("own name over budget: %+v", a)
	}
	if got := fdBudget(); got < 1 || got > maxAttempts {
		t.Errorf("budget %d", got)
	}
}

// Over TCP a slow forwarded query does not hold up the next one.
func TestServeConnPipelining(t *testing.T) {
	s := server(t, false, upstream(t, 300*time.Millisecond, false))
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			s.serveConn(c, func(net.Conn) {})
		}
	}()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// serveConn sees the client as 127.0.0.1: the host.
	c.Write(tcpMsg(queryWith(t, dnsmessage.Header{ID: 1}, dnsmessage.ClassINET, nil, "example.org.", dnsmessage.TypeA)))
	c.Write(tcpMsg(queryWith(t, dnsmessage.Header{ID: 2}, dnsmessage.ClassINET, nil, "web.", dnsmessage.TypeA)))
	c.SetDeadline(time.Now().Add(3 * time.Second))
	var ids []uint16
	for i := 0; i < 2; i++ {
		msg, err := readTCPMsg(c)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, parse(t, msg).ID)
	}
	if ids[0] != 2 || ids[1] != 1 {
		t.Errorf("answers in order %v, want the local one (2) first", ids)
	}
}

// The message handler never panics and answers only with messages that
// parse, at most 512 bytes to a plain UDP query.
func FuzzHandle(f *testing.F) {
	f.Add(query(f, "web.", dnsmessage.TypeA))
	f.Add(query(f, "2.0.1.10.in-addr.arpa.", dnsmessage.TypePTR))
	f.Add(queryWith(f, dnsmessage.Header{ID: 3, OpCode: 5}, dnsmessage.ClassCHAOS, nil, "version.bind.", dnsmessage.TypeTXT))
	var h dnsmessage.ResourceHeader
	h.SetEDNS0(1, 0, true)
	f.Add(queryWith(f, dnsmessage.Header{ID: 4}, dnsmessage.ClassINET, &h, "db.", dnsmessage.TypeAAAA))
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	dir := f.TempDir()
	data, _ := json.Marshal(&state.Net{Name: "appnet", Subnet: netip.MustParsePrefix("10.1.0.0/24"), DNS: &state.NetDNS{
		Endpoints: map[netip.Addr]state.DNSEntry{web: {ID: "aaaa", Names: []string{"web"}}, db: {ID: "bbbb", Names: []string{"db"}}},
		Internal:  true,
	}})
	os.MkdirAll(filepath.Join(dir, "networks"), 0o700)
	os.WriteFile(filepath.Join(dir, "networks", "appnet.json"), data, 0o600)
	s := NewServer(dir, "appnet")
	f.Fuzz(func(t *testing.T, q []byte) {
		for _, tcp := range []bool{false, true} {
			resp, job := s.Handle(q, db, tcp)
			if job != nil {
				t.Fatalf("an internal network forwarded %x", q)
			}
			if resp == nil {
				continue
			}
			var m dnsmessage.Message
			if err := m.Unpack(resp); err != nil {
				t.Fatalf("answer to %x does not parse: %v", q, err)
			}
			if !tcp && len(resp) > ednsUDPSize {
				t.Fatalf("UDP answer of %d bytes", len(resp))
			}
		}
	})
}

// Idle clients beyond the limit make room: the one silent longest goes.
func TestTCPClientsEviction(t *testing.T) {
	clients := &tcpClients{last: map[net.Conn]time.Time{}}
	var conns []net.Conn
	for i := 0; i < maxTCPConns; i++ {
		a, _ := net.Pipe()
		conns = append(conns, a)
		if ev := clients.add(a); ev != nil {
			t.Fatalf("evicted below the limit")
		}
	}
	clients.touch(conns[0]) // the first is active again: the second is the oldest
	extra, _ := net.Pipe()
	if ev := clients.add(extra); ev != conns[1] {
		t.Errorf("evicted %v, want the client silent the longest", ev)
	}
	if len(clients.last) != maxTCPConns {
		t.Errorf("%d clients counted", len(clients.last))
	}
}

// On a dual-stack network a container's names answer AAAA with its IPv6
// address and A with its IPv4 one, a query from its IPv6 address is its
// own, its ip6.arpa name answers PTR, and a name with no address of the
// family asked gets no data.
func TestDualStack(t *testing.T) {
	dir := t.TempDir()
	web6, db6 := netip.MustParseAddr("fd00:1::2"), netip.MustParseAddr("fd00:1::3")
	webEntry := state.DNSEntry{ID: "aaaa", Names: []string{"web"}}
	writeNet(t, dir, state.Net{Name: "dual", Subnet: netip.MustParsePrefix("10.1.0.0/24"), Subnet6: netip.MustParsePrefix("fd00:1::/64"),
		DNS: &state.NetDNS{Endpoints: map[netip.Addr]state.DNSEntry{
			web: webEntry, web6: webEntry,
			db: {ID: "bbbb", Names: []string{"db"}}, db6: {ID: "bbbb", Names: []string{"db"}},
			netip.MustParseAddr("10.1.0.4"): {ID: "cccc", Names: []string{"v4only"}},
		}}})
	s := NewServer(dir, "dual")
	a := parse(t, s.Answer(query(t, "web.", dnsmessage.TypeAAAA), db6, false))
	if len(a.Answers) != 1 || a.RCode != dnsmessage.RCodeSuccess {
		t.Fatalf("AAAA web from db's IPv6 address: %+v", a)
	}
	if r, ok := a.Answers[0].Body.(*dnsmessage.AAAAResource); !ok || r.AAAA != web6.As16() {
		t.Errorf("AAAA answer %+v", a.Answers[0])
	}
	if a := parse(t, s.Answer(query(t, "web.", dnsmessage.TypeA), db6, false)); len(a.Answers) != 1 || a.Answers[0].Body.(*dnsmessage.AResource).A != web.As4() {
		t.Errorf("A web: %+v", a)
	}
	if a := parse(t, s.Answer(query(t, "web.", dnsmessage.TypeALL), db, false)); len(a.Answers) != 2 {
		t.Errorf("ANY web: %+v", a.Answers)
	}
	// A name with only the other family: NOERROR, no answer, the SOA.
	if a := parse(t, s.Answer(query(t, "v4only.", dnsmessage.TypeAAAA), db, false)); a.RCode != dnsmessage.RCodeSuccess || len(a.Answers) != 0 || len(a.Authorities) != 1 {
		t.Errorf("AAAA v4only: %+v", a)
	}
	rev := "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa."
	if reverseName(web6) != rev {
		t.Fatalf("reverse name %s", reverseName(web6))
	}
	if got, ok := reverseAddr(rev); !ok || got != web6 {
		t.Errorf("reverse address %v %v", got, ok)
	}
	a = parse(t, s.Answer(query(t, rev, dnsmessage.TypePTR), db6, false))
	if len(a.Answers) != 1 || a.Answers[0].Body.(*dnsmessage.PTRResource).PTR.String() != "web." {
		t.Errorf("PTR of web's IPv6 address: %+v", a)
	}
	// An address of the IPv6 subnet nobody holds: NXDOMAIN, ours to say.
	free := "9.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa."
	if a := parse(t, s.Answer(query(t, free, dnsmessage.TypePTR), db6, false)); a.RCode != dnsmessage.RCodeNameError {
		t.Errorf("PTR of a free IPv6 address: %+v", a)
	}
	// Strangers are refused, by either family.
	if a := parse(t, s.Answer(query(t, "web.", dnsmessage.TypeAAAA), netip.MustParseAddr("fd00:1::99"), false)); a.RCode != dnsmessage.RCodeRefused {
		t.Errorf("stranger: %+v", a)
	}
}
