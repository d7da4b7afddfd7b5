package resolver

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/netshim/netshim/state"
)

// server answers from a network state file with two containers.
func server(t *testing.T, internal bool) *Server {
	t.Helper()
	n := state.Net{Name: "appnet", DNS: &state.NetDNS{
		Endpoints: map[netip.Addr]state.DNSEntry{
			netip.MustParseAddr("10.1.0.2"): {ID: "aaaa", Names: []string{"Web", "web-alias"}},
			netip.MustParseAddr("10.1.0.3"): {ID: "bbbb", Names: []string{"db"}},
		},
		Internal: internal,
	}}
	data, err := json.Marshal(&n)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "appnet.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return &Server{Path: path}
}

func query(t *testing.T, name string, typ dnsmessage.Type, extra ...string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4242, RecursionDesired: true})
	b.StartQuestions()
	for _, n := range append([]string{name}, extra...) {
		if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(n), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

type answer struct {
	h       dnsmessage.Header
	q       []dnsmessage.Question
	answers []dnsmessage.Resource
}

func parse(t *testing.T, msg []byte) answer {
	t.Helper()
	if msg == nil {
		t.Fatal("no answer")
	}
	var m dnsmessage.Message
	if err := m.Unpack(msg); err != nil {
		t.Fatalf("unpack answer: %v", err)
	}
	return answer{m.Header, m.Questions, m.Answers}
}

func TestAnswerOwnNames(t *testing.T) {
	s := server(t, false)
	client := netip.MustParseAddr("10.1.0.3")

	a := parse(t, s.Answer(query(t, "WEB.", dnsmessage.TypeA), client, false))
	if a.h.ID != 0x4242 || !a.h.Response || !a.h.Authoritative || !a.h.RecursionDesired || a.h.RCode != dnsmessage.RCodeSuccess {
		t.Fatalf("header %+v", a.h)
	}
	if len(a.q) != 1 || a.q[0].Name.String() != "WEB." {
		t.Fatalf("question %+v", a.q)
	}
	if len(a.answers) != 1 {
		t.Fatalf("answers %+v", a.answers)
	}
	if r, ok := a.answers[0].Body.(*dnsmessage.AResource); !ok || r.A != [4]byte{10, 1, 0, 2} || a.answers[0].Header.TTL != TTL {
		t.Fatalf("answer %+v", a.answers[0])
	}
	if a := parse(t, s.Answer(query(t, "web-alias.", dnsmessage.TypeALL), client, true)); len(a.answers) != 1 {
		t.Fatalf("ANY web-alias: %+v", a.answers)
	}
	// A name of ours asked for another type: no data, no forwarding.
	if a := parse(t, s.Answer(query(t, "db.", dnsmessage.TypeAAAA), client, false)); a.h.RCode != dnsmessage.RCodeSuccess || len(a.answers) != 0 {
		t.Fatalf("AAAA db: %+v %+v", a.h, a.answers)
	}
	// The first name of an address answers its PTR query.
	a = parse(t, s.Answer(query(t, "2.0.1.10.in-addr.arpa.", dnsmessage.TypePTR), client, false))
	if len(a.answers) != 1 {
		t.Fatalf("PTR: %+v", a.answers)
	}
	if r, ok := a.answers[0].Body.(*dnsmessage.PTRResource); !ok || r.PTR.String() != "web." {
		t.Fatalf("PTR answer %+v", a.answers[0])
	}
}

func TestAnswerFailures(t *testing.T) {
	client := netip.MustParseAddr("10.1.0.3")
	// No upstream, or an internal network: other names fail at once.
	for _, internal := range []bool{false, true} {
		s := server(t, internal)
		a := parse(t, s.Answer(query(t, "example.org.", dnsmessage.TypeA), client, false))
		if a.h.RCode != dnsmessage.RCodeServerFailure || a.h.Authoritative || len(a.q) != 1 {
			t.Errorf("internal=%v: %+v", internal, a.h)
		}
	}
	s := server(t, false)
	if a := parse(t, s.Answer(query(t, "web.", dnsmessage.TypeA, "db."), client, false)); a.h.RCode != dnsmessage.RCodeFormatError {
		t.Errorf("two questions: %+v", a.h)
	}
	if got := s.Answer([]byte{1, 2, 3}, client, false); got != nil {
		t.Errorf("garbage answered: %v", got)
	}
	// A response is not a query.
	resp := s.Answer(query(t, "web.", dnsmessage.TypeA), client, false)
	if got := s.Answer(resp, client, false); got != nil {
		t.Errorf("response answered: %v", got)
	}
	// The network's state file gone: the responder has nothing to say.
	os.Remove(s.Path)
	if !s.Empty() {
		t.Error("not empty without a state file")
	}
}

// TestServeConn checks DNS-over-TCP framing on an in-memory connection.
func TestServeConn(t *testing.T) {
	s := server(t, false)
	client, srv := net.Pipe()
	done := make(chan struct{})
	go func() { s.serveConn(srv); close(done) }()
	for _, name := range []string{"web.", "db."} {
		if _, err := client.Write(tcpMsg(query(t, name, dnsmessage.TypeA))); err != nil {
			t.Fatal(err)
		}
		msg, err := readTCPMsg(client)
		if err != nil {
			t.Fatal(err)
		}
		if a := parse(t, msg); len(a.answers) != 1 {
			t.Fatalf("%s over TCP: %+v", name, a.answers)
		}
	}
	client.Close()
	<-done
}
