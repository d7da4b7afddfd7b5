package ocihook

import (
	"strings"
	"testing"
)

// Every parser of untrusted input: no panic, and every rejection is one
// line that says something.
func checkErr(t *testing.T, err error) {
	t.Helper()
	if err != nil && (err.Error() == "" || strings.Contains(err.Error(), "\n")) {
		t.Fatalf("error is not one line: %q", err)
	}
}

func FuzzReadState(f *testing.F) {
	for _, s := range []string{
		`{"ociVersion":"1.0.2","id":"x","status":"creating","pid":42,"bundle":"/b"}`,
		`{"id":"x","status":"stopped"}`, `{"id":"../x"}`, `{"pid":"1"}`, `[]`, ``, `{`, `{"id":"` + strings.Repeat("a", 200) + `"}`,
		`{"ociVersion":"1.0.2","id":"x","status":"created","pid":-1,"bundle":"rel","annotations":{"a":"b"}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ReadState(strings.NewReader(s))
		checkErr(t, err)
		if err == nil && (st.ID == "" || st.Pid < 0) {
			t.Fatalf("accepted %+v", st)
		}
	})
}

func FuzzParseAnnotations(f *testing.F) {
	f.Add("bridge", "web", "172.17.0.9", "db:database,cache", "8080:80,127.0.0.1::53/udp", "80,443/tcp", "true", "gw:host-gateway", "203.0.113.53", "alias1")
	f.Add("none", "", "", "", "", "", "", "", "", "")
	f.Add("wp-net", "-x", "1.2.3", "a:b:c", "0:0", "70000", "yes", "nohost", "x", "a b")
	f.Fuzz(func(t *testing.T, network, name, ip, links, publish, expose, all, addHost, dns, aliases string) {
		o, err := ParseAnnotations(map[string]string{
			AnnNetwork: network, AnnName: name, AnnIP: ip, AnnLinks: links, AnnPublish: publish, AnnExpose: expose,
			AnnPublishAll: all, AnnAddHost: addHost, AnnDNS: dns, AnnAliases: aliases,
		})
		checkErr(t, err)
		if err != nil {
			return
		}
		for _, p := range o.Ports() {
			if p.ContainerPort < 1 || p.ContainerPort > 65535 || p.HostHi < p.HostLo || p.HostHi > 65535 || (p.Proto != "tcp" && p.Proto != "udp") {
				t.Fatalf("bad port accepted: %+v", p)
			}
		}
	})
}

func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{"80", "8080:80", "8080:80/udp", "127.0.0.1:8080:80", "127.0.0.1::80", "8000-8002:80-82", "8000-8002:80", "[::1]:80:80", "1:2:3:4", "-1", "80-", "65535-1:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		reqs, err := ParsePublish(s)
		checkErr(t, err)
		for _, r := range reqs {
			if r.ContainerPort < 1 || r.ContainerPort > 65535 || r.HostLo < 0 || r.HostHi < r.HostLo || r.HostHi > 65535 {
				t.Fatalf("%q gave %+v", s, r)
			}
		}
	})
}

func FuzzParseLinkAddHostIP(f *testing.F) {
	for _, s := range []string{"db", "db:database", "a:b:c", ":x", "gw:host-gateway", "h:198.51.100.1", "h=::1", "300.1.1.1", "172.17.0.2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, err := ParseLink(s)
		checkErr(t, err)
		_, err = ParseAddHost(s)
		checkErr(t, err)
		_, err = ParseIP(s)
		checkErr(t, err)
		_, err = ParseExpose(s)
		checkErr(t, err)
	})
}
