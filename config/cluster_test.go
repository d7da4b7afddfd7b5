package config

import (
	"strings"
	"testing"
	"time"
)

func TestCluster(t *testing.T) {
	c, err := Parse("", []byte("[cluster]\netcd_endpoints = [\"http://192.0.2.10:2379/\", \"https://etcd.example:2379\"]\netcd_ca = \"/etc/etcd/ca.pem\"\nunderlay_interface = \"eth1\"\nprefix = \"/dc1/netshim/\"\nlease_ttl = \"1h\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Cluster
	if !cl.Enabled() || cl.Endpoints[0] != "http://192.0.2.10:2379" || cl.Prefix != "/dc1/netshim" || cl.LeaseTTL != time.Hour ||
		cl.Timeout != DefaultEtcdTimeout || cl.Underlay != "eth1" || cl.CA != "/etc/etcd/ca.pem" {
		t.Fatalf("canonical cluster %+v", cl)
	}
	d, err := Parse("", nil)
	if err != nil || d.Cluster.Enabled() {
		t.Fatalf("no [cluster]: %+v %v", d.Cluster, err)
	}
	cases := []struct{ doc, want string }{
		{"[cluster]\netcd_endpoints = [\"192.0.2.10:2379\"]", `cluster.etcd_endpoints = "192.0.2.10:2379": must be http://HOST:PORT or https://HOST:PORT`},
		{"[cluster]\netcd_endpoints = [\"http://a:1\"]\netcd_ca = \"/ca.pem\"", `cluster.etcd_ca = "/ca.pem": needs https etcd_endpoints`},
		{"[cluster]\netcd_endpoints = [\"https://a:1\"]\netcd_cert = \"/c.pem\"", `cluster.etcd_cert = "/c.pem": etcd_cert and etcd_key go together`},
		{"[cluster]\netcd_endpoints = [\"https://a:1\"]\netcd_key = \"k.pem\"", `cluster.etcd_key = "k.pem": must be an absolute path`},
		{"[cluster]\netcd_endpoints = [\"http://a:1\"]\nlease_ttl = \"2s\"", `cluster.lease_ttl = "2s": must be a duration of at least 5s`},
		{"[cluster]\netcd_endpoints = [\"http://a:1\"]\netcd_timeout = \"soon\"", `cluster.etcd_timeout = "soon": must be a positive duration`},
		{"[cluster]\netcd_endpoints = [\"http://a:1\"]\nprefix = \"netshim\"", `cluster.prefix = "netshim": must start with "/"`},
		{"[cluster]\nunderlay_interface = \"eth0\"", `cluster.etcd_endpoints: required with the other [cluster] keys`},
		{"[cluster]\netcd_endpoint = [\"http://a:1\"]", `cluster.etcd_endpoint: unknown key`},
	}
	for _, tc := range cases {
		_, err := Parse("", []byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %v, want one line with %q", tc.doc, err, tc.want)
		}
	}
}
