package state

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func newNet() *Net {
	return &Net{Name: "bridge", Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1")}
}

func TestAllocateLowestFree(t *testing.T) {
	n := newNet()
	a, _ := n.Allocate("a", netip.Addr{}, netip.Prefix{})
	b, _ := n.Allocate("b", netip.Addr{}, netip.Prefix{})
	c, _ := n.Allocate("c", netip.Addr{}, netip.Prefix{})
	if a.String() != "172.17.0.2" || b.String() != "172.17.0.3" || c.String() != "172.17.0.4" {
		t.Fatalf("got %v %v %v", a, b, c)
	}
	n.Release("b", b)
	d, _ := n.Allocate("d", netip.Addr{}, netip.Prefix{})
	if d != b {
		t.Fatalf("lowest free: got %v want %v", d, b)
	}
	n.Release("x", a) // not the holder: no effect
	if h, _ := n.Holder(a); h != "a" {
		t.Fatal("released by a stranger")
	}
}

func TestAllocateRangeAndStatic(t *testing.T) {
	n := newNet()
	rng := netip.MustParsePrefix("172.17.5.0/24")
	a, err := n.Allocate("a", netip.Addr{}, rng)
	if err != nil || a.String() != "172.17.5.0" {
		// 172.17.5.0 is a valid host address inside a /16.
		t.Fatalf("got %v %v", a, err)
	}
	s, err := n.Allocate("s", netip.MustParseAddr("172.17.9.9"), rng)
	if err != nil || s.String() != "172.17.9.9" {
		t.Fatalf("static: %v %v", s, err)
	}
	_, err = n.Allocate("t", netip.MustParseAddr("172.17.9.9"), rng)
	var ae *AddressError
	if !errors.As(err, &ae) || !errors.Is(err, ErrAddressInUse) || ae.Holder != "s" {
		t.Fatalf("taken static: %v", err)
	}
	for _, bad := range []string{"10.0.0.1", "172.17.0.0", "172.17.255.255", "172.17.0.1"} {
		if _, err := n.Allocate("u", netip.MustParseAddr(bad), rng); err == nil {
			t.Errorf("static %s accepted", bad)
		}
	}
	small := &Net{Name: "s", Subnet: netip.MustParsePrefix("10.1.1.0/30"), Gateway: netip.MustParseAddr("10.1.1.1")}
	if a, err := small.Allocate("a", netip.Addr{}, netip.Prefix{}); err != nil || a.String() != "10.1.1.2" {
		t.Fatalf("/30: %v %v", a, err)
	}
	if _, err := small.Allocate("b", netip.Addr{}, netip.Prefix{}); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("exhausted: %v", err)
	}
}

func TestAllocateReservedExtra(t *testing.T) {
	n := newNet()
	a, _ := n.Allocate("a", netip.Addr{}, netip.Prefix{}, netip.MustParseAddr("172.17.0.2"))
	if a.String() != "172.17.0.3" {
		t.Fatalf("got %v", a)
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &Record{ID: "abc", Name: "web", Mode: "bridge", Created: time.Now(), Attachments: []Attachment{{
		Network: "bridge", Driver: "bridge", Addrs: []netip.Prefix{netip.MustParsePrefix("172.17.0.2/16")},
		Ports: []Port{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}},
	}}}
	if err := s.Put(r); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.Get("abc")
	if err != nil || !ok || got.Bridged().Addr() != netip.MustParseAddr("172.17.0.2") || got.Name != "web" || got.Attachments[0].Ports[0].HostPort != 8080 {
		t.Fatalf("%v %v %+v", err, ok, got)
	}
	if f, err := s.Find("web"); err != nil || f.ID != "abc" {
		t.Fatalf("find by name: %v", err)
	}
	if f, err := s.Find("ab"); err != nil || f.ID != "abc" {
		t.Fatalf("find by prefix: %v", err)
	}
	if err := s.Delete("abc"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("abc"); err != nil {
		t.Fatal("second delete:", err)
	}
	if _, ok, _ := s.Get("abc"); ok {
		t.Fatal("still there")
	}
	if _, _, err := s.Get("../etc/passwd"); err == nil {
		t.Fatal("path traversal id accepted")
	}
}

// Progress reads a setup's owner and cancellation as Get would, and
// nothing for a record that is not there.
func TestProgress(t *testing.T) {
	s, _ := New(t.TempDir())
	if _, _, ok, err := s.Progress("abc"); ok || err != nil {
		t.Fatalf("no record: ok %v, %v", ok, err)
	}
	r := &Record{ID: "abc", Phase: PhaseCreating, Owner: &Process{PID: 42, Start: 7}}
	if err := s.Put(r); err != nil {
		t.Fatal(err)
	}
	if owner, cancelled, ok, err := s.Progress("abc"); err != nil || !ok || cancelled || owner == nil || *owner != *r.Owner {
		t.Fatalf("in flight: %+v %v %v %v", owner, cancelled, ok, err)
	}
	r.Cancelled = true
	s.Put(r)
	if _, cancelled, _, _ := s.Progress("abc"); !cancelled {
		t.Fatal("cancellation not read")
	}
	r.Phase, r.Owner, r.Cancelled = PhaseReady, nil, false
	s.Put(r)
	if owner, _, ok, _ := s.Progress("abc"); !ok || owner != nil {
		t.Fatalf("ready: owner %+v", owner)
	}
	if _, _, _, err := s.Progress("../x"); err == nil {
		t.Fatal("path traversal id accepted")
	}
}

func TestCorruptFiles(t *testing.T) {
	s, _ := New(t.TempDir())
	good := &Record{ID: "good", Created: time.Now()}
	s.Put(good)
	os.WriteFile(filepath.Join(s.Dir, "containers", "bad.json"), []byte(`{"id": "bad", "ip": `), 0o600)
	_, _, err := s.Get("bad")
	var ce *CorruptError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "bad.json") || !strings.Contains(err.Error(), "netshim gc") {
		t.Fatalf("corrupt record: %v", err)
	}
	recs, errs := s.List()
	if len(recs) != 1 || recs[0].ID != "good" || len(errs) != 1 {
		t.Fatalf("list: %v %v", recs, errs)
	}
	os.WriteFile(s.netPath("bridge"), []byte("garbage"), 0o600)
	if _, err := s.GetNet("bridge"); !errors.As(err, &ce) {
		t.Fatalf("corrupt net: %v", err)
	}
}

func TestLockTimeoutAndExclusion(t *testing.T) {
	s, _ := New(t.TempDir())
	l, err := s.Lock(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lock(50 * time.Millisecond); !errors.Is(err, ErrLockTimeout) || !strings.Contains(err.Error(), "lock") {
		t.Fatalf("want timeout, got %v", err)
	}
	l.Unlock()
	// Many goroutines incrementing a counter under the lock never overlap.
	var wg sync.WaitGroup
	var mu sync.Mutex
	inside := 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := s.Lock(5 * time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside++
			if inside != 1 {
				t.Error("two holders at once")
			}
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			l.Unlock()
		}()
	}
	wg.Wait()
}

// Allocations persist as one file per address, written by PutNet: a later
// GetNet sees them without reading the others, and a release removes it.
func TestAllocationFiles(t *testing.T) {
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	n := s.NewNet("bridge")
	n.Subnet, n.Gateway = netip.MustParsePrefix("10.9.0.0/24"), netip.MustParseAddr("10.9.0.1")
	a, _ := n.Allocate("a", netip.Addr{}, netip.Prefix{})
	b, _ := n.Allocate("b", netip.Addr{}, netip.Prefix{})
	if err := s.PutNet(n); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(s.Dir, "networks", "bridge.addrs", b.String())); string(data) != "b" {
		t.Fatalf("allocation file of %s: %q", b, data)
	}
	m, _ := s.GetNet("bridge")
	if h, _ := m.Holder(a); h != "a" {
		t.Fatalf("holder of %s after reload: %q", a, h)
	}
	if c, _ := m.Allocate("c", netip.Addr{}, netip.Prefix{}); c.String() != "10.9.0.4" {
		t.Fatalf("next after reload: %v", c)
	}
	m.Release("a", a)
	m.Release("b", b)
	if inUse, _ := m.InUse(); !inUse {
		t.Fatal("c still holds an address")
	}
	m.Release("c", netip.MustParseAddr("10.9.0.4"))
	if inUse, _ := m.InUse(); inUse {
		t.Fatal("in use after every release (before PutNet)")
	}
	s.PutNet(m)
	all, _ := m.Allocations()
	if left, _ := os.ReadDir(filepath.Join(s.Dir, "networks", "bridge.addrs")); len(left) != 0 || len(all) != 0 {
		t.Fatalf("left: %v %v", left, all)
	}
	// A hook killed while writing an allocation leaves an empty file: held
	// by nobody known, not handed out, and released by the teardown of
	// the record that names the address.
	torn := netip.MustParseAddr("10.9.0.9")
	os.WriteFile(filepath.Join(s.Dir, "networks", "bridge.addrs", torn.String()), nil, 0o600)
	k, _ := s.GetNet("bridge")
	if h, _ := k.Holder(torn); h != "?" {
		t.Fatalf("holder of a torn allocation: %q", h)
	}
	if err := k.Release("crashed", torn); err != nil {
		t.Fatal(err)
	}
	s.PutNet(k)
	if _, err := os.Stat(filepath.Join(s.Dir, "networks", "bridge.addrs", torn.String())); err == nil {
		t.Fatal("torn allocation left after its release")
	}
}

// A hook killed in the middle of a write leaves a temporary file: those of
// the shared indexes go, those of records only for dead ids (a live setup
// may be writing its record without the lock).
func TestRemoveTemps(t *testing.T) {
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]bool{ // path under the state dir: removed?
		"names/.web.123":               true,
		"networks/.bridge.json.456":    true,
		"ports/.tcp-8080.789":          true,
		"containers/.dead.json.111":    true,
		"containers/.alive.json.222":   false,
		"creating/.dead.333":           true,
		"containers/dead.json":         false,
		"names/web":                    false,
		"networks/bridge.json":         false,
		"networks/bridge.addrs/.x.444": false, // not a state write's
	}
	for p := range files {
		full := filepath.Join(s.Dir, p)
		os.MkdirAll(filepath.Dir(full), 0o700)
		if err := os.WriteFile(full, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RemoveTemps(func(id string) bool { return id == "dead" }); err != nil {
		t.Fatal(err)
	}
	for p, removed := range files {
		_, err := os.Stat(filepath.Join(s.Dir, p))
		if gone := err != nil; gone != removed {
			t.Errorf("%s: removed %v, want %v", p, gone, removed)
		}
	}
}

// Ids: what runc accepts fits, within a file name; the rest is refused
// with a reason.
func TestCheckID(t *testing.T) {
	for _, id := range []string{"x", "x,y", "_under", "a+b.c-d", strings.Repeat("a", MaxIDLen)} {
		if err := CheckID(id); err != nil {
			t.Errorf("%q refused: %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", ".hidden", "a/b", "a b", strings.Repeat("a", MaxIDLen+1)} {
		if err := CheckID(id); err == nil {
			t.Errorf("%q accepted", id)
		}
	}
}

// A state dir is refused when someone else could change it, or when an
// older netshim wrote it.
func TestStateDirChecks(t *testing.T) {
	open := t.TempDir()
	os.Chmod(open, 0o777)
	var ue *UnsafeDirError
	if _, err := New(open); !errors.As(err, &ue) {
		t.Errorf("a world-writable state dir: %v", err)
	}
	old := t.TempDir()
	os.WriteFile(filepath.Join(old, "ports.json"), []byte("{}"), 0o600)
	var oe *OldStateError
	if _, err := New(old); !errors.As(err, &oe) || !strings.Contains(err.Error(), "remove "+old) {
		t.Errorf("an older state dir: %v", err)
	}
	fresh := t.TempDir()
	os.WriteFile(filepath.Join(fresh, "notes.txt"), []byte("mine"), 0o600)
	if _, err := New(fresh); err != nil {
		t.Errorf("a new state dir with a file of someone's: %v", err)
	}
	if _, err := New(fresh); err != nil {
		t.Errorf("the same dir again: %v", err)
	}
}

func TestAllocate6(t *testing.T) {
	n := newNet()
	n.Subnet6, n.Gateway6 = netip.MustParsePrefix("fd00:9::/64"), netip.MustParseAddr("fd00:9::1")
	a4, _ := n.Allocate("a", netip.Addr{}, netip.Prefix{})
	a6, err := n.Allocate6("a", netip.Addr{}, netip.Prefix{})
	b6, _ := n.Allocate6("b", netip.Addr{}, netip.Prefix{})
	if err != nil || a4.String() != "172.17.0.2" || a6.String() != "fd00:9::2" || b6.String() != "fd00:9::3" {
		t.Fatalf("got %v %v %v (%v)", a4, a6, b6, err)
	}
	n.Release("a", a6)
	if c6, _ := n.Allocate6("c", netip.Addr{}, netip.Prefix{}); c6 != a6 {
		t.Fatalf("lowest free: got %v want %v", c6, a6)
	}
	if c4, _ := n.Allocate("c", netip.Addr{}, netip.Prefix{}); c4.String() != "172.17.0.3" {
		t.Fatalf("the families share a hint: %v", c4)
	}
	for _, bad := range []string{"fd00:8::5", "fd00:9::", "fd00:9::1"} {
		if _, err := n.Allocate6("u", netip.MustParseAddr(bad), netip.Prefix{}); err == nil {
			t.Errorf("static %s accepted", bad)
		}
	}
	if _, err := n.Allocate6("u", b6, netip.Prefix{}); !errors.Is(err, ErrAddressInUse) {
		t.Errorf("taken static: %v", err)
	}
	r, _ := n.Allocate6("r", netip.Addr{}, netip.MustParsePrefix("fd00:9::100/120"))
	if r.String() != "fd00:9::100" {
		t.Errorf("range: %v", r)
	}
}

func TestPortOverlap(t *testing.T) {
	a := netip.MustParseAddr
	for _, c := range []struct {
		x, y netip.Addr
		want bool
	}{
		{netip.Addr{}, a("::"), true}, {netip.Addr{}, a("127.0.0.1"), true},
		{a("0.0.0.0"), a("127.0.0.1"), true}, {a("0.0.0.0"), a("::"), false}, {a("0.0.0.0"), a("2001:db8::2"), false},
		{a("::"), a("2001:db8::2"), true}, {a("2001:db8::2"), a("2001:db8::3"), false}, {a("127.0.0.1"), a("127.0.0.1"), true},
	} {
		if got := Overlap(c.x, c.y); got != c.want || Overlap(c.y, c.x) != c.want {
			t.Errorf("Overlap(%v, %v) = %v", c.x, c.y, got)
		}
	}
}
