package state

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A state file of any content is decoded or refused with a CorruptError
// naming it; other records stay readable.
func FuzzStateFiles(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","name":"web","mode":"bridge","phase":"ready","ip":"172.17.0.2","subnet":"172.17.0.0/16","ports":[{"proto":"tcp","host_port":8080,"container_port":80}]}`,
		`{"id":"a","ip":"300.1.1.1"}`, `{"id":`, "", "garbage", `{"allocated":{"172.17.0.2":"a"},"subnet":"172.17.0.0/16"}`, `{"allocated":{"x":"a"}}`,
		`{"reserved":{"tcp/80":[{"id":"a","host_ip":"bad"}]}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		dir := t.TempDir()
		st, err := New(dir)
		if err != nil {
			t.Fatal(err)
		}
		st.Put(&Record{ID: "good"})
		for _, p := range []string{filepath.Join(dir, "containers", "x.json"), filepath.Join(dir, "networks", "n.json"), filepath.Join(dir, "ports", "tcp-80")} {
			os.MkdirAll(filepath.Dir(p), 0o700)
			os.WriteFile(p, []byte(s), 0o600)
		}
		check := func(err error) {
			var ce *CorruptError
			if err != nil && (!errors.As(err, &ce) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), dir)) {
				t.Fatalf("not a one-line CorruptError naming the file: %v", err)
			}
		}
		_, _, err = st.Get("x")
		check(err)
		_, err = st.GetNet("n")
		check(err)
		idx, _ := st.GetPorts()
		_, _, err = idx.Holder("tcp", 80, netip.Addr{}, "")
		check(err)
		recs, _ := st.List()
		found := false
		for _, r := range recs {
			found = found || r.ID == "good"
		}
		if !found {
			t.Fatal("a corrupt record hid a good one")
		}
	})
}
