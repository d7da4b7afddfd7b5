package config

import (
	"net/url"
	"strings"
	"time"
)

// ClusterFile is the [cluster] section: how this host reaches the etcd
// cluster that overlay networks keep their state in.
type ClusterFile struct {
	EtcdEndpoints     []string `toml:"etcd_endpoints"`
	EtcdCA            string   `toml:"etcd_ca"`
	EtcdCert          string   `toml:"etcd_cert"`
	EtcdKey           string   `toml:"etcd_key"`
	UnderlayInterface string   `toml:"underlay_interface"`
	Prefix            string   `toml:"prefix"`
	LeaseTTL          string   `toml:"lease_ttl"`
	EtcdTimeout       string   `toml:"etcd_timeout"`
}

// Cluster is the canonical [cluster] section. Without endpoints there is
// no cluster: overlay networks are refused.
type Cluster struct {
	Endpoints []string
	// CA, Cert and Key are PEM files for TLS to etcd (https endpoints).
	CA, Cert, Key string
	// Underlay is the interface VXLAN traffic leaves by; "" means the one
	// with the default route.
	Underlay string
	// Prefix is the etcd key prefix, without a trailing slash.
	Prefix string
	// LeaseTTL is how long this host's subnet leases live unless renewed.
	LeaseTTL time.Duration
	// Timeout bounds every etcd request.
	Timeout time.Duration
}

// Cluster defaults: flannel's lease lifetime; a timeout short enough that
// a container start does not hang on an unreachable etcd.
const (
	DefaultClusterPrefix = "/netshim"
	DefaultLeaseTTL      = 24 * time.Hour
	DefaultEtcdTimeout   = 2 * time.Second
	// MinLeaseTTL is below what etcd grants (it rounds short TTLs up).
	MinLeaseTTL = 5 * time.Second
)

// Enabled says the host belongs to a cluster.
func (c *Cluster) Enabled() bool { return len(c.Endpoints) > 0 }

func canonCluster(f *ClusterFile) (Cluster, error) {
	c := Cluster{CA: f.EtcdCA, Cert: f.EtcdCert, Key: f.EtcdKey, Underlay: f.UnderlayInterface,
		Prefix: f.Prefix, LeaseTTL: DefaultLeaseTTL, Timeout: DefaultEtcdTimeout}
	tls := false
	for _, e := range f.EtcdEndpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return Cluster{}, &Error{Key: "cluster.etcd_endpoints", Value: e, Reason: "must be http://HOST:PORT or https://HOST:PORT"}
		}
		tls = tls || u.Scheme == "https"
		c.Endpoints = append(c.Endpoints, u.Scheme+"://"+u.Host)
	}
	for key, path := range map[string]string{"cluster.etcd_ca": c.CA, "cluster.etcd_cert": c.Cert, "cluster.etcd_key": c.Key} {
		if path != "" && !strings.HasPrefix(path, "/") {
			return Cluster{}, &Error{Key: key, Value: path, Reason: "must be an absolute path"}
		}
		if path != "" && !tls {
			return Cluster{}, &Error{Key: key, Value: path, Reason: "needs https etcd_endpoints"}
		}
	}
	if (c.Cert == "") != (c.Key == "") {
		return Cluster{}, &Error{Key: "cluster.etcd_cert", Value: c.Cert, Reason: "etcd_cert and etcd_key go together"}
	}
	if c.Underlay != "" {
		if err := checkIfName("cluster.underlay_interface", c.Underlay); err != nil {
			return Cluster{}, err
		}
	}
	if c.Prefix == "" {
		c.Prefix = DefaultClusterPrefix
	}
	c.Prefix = strings.TrimRight(c.Prefix, "/")
	if !strings.HasPrefix(c.Prefix, "/") || c.Prefix == "" {
		return Cluster{}, &Error{Key: "cluster.prefix", Value: f.Prefix, Reason: `must start with "/" and name a key below the root`}
	}
	if f.LeaseTTL != "" {
		d, err := time.ParseDuration(f.LeaseTTL)
		if err != nil || d < MinLeaseTTL {
			return Cluster{}, &Error{Key: "cluster.lease_ttl", Value: f.LeaseTTL, Reason: "must be a duration of at least " + MinLeaseTTL.String()}
		}
		c.LeaseTTL = d
	}
	if f.EtcdTimeout != "" {
		d, err := time.ParseDuration(f.EtcdTimeout)
		if err != nil || d <= 0 {
			return Cluster{}, &Error{Key: "cluster.etcd_timeout", Value: f.EtcdTimeout, Reason: "must be a positive duration"}
		}
		c.Timeout = d
	}
	if !c.Enabled() && (c.CA != "" || c.Underlay != "" || f.Prefix != "" || f.LeaseTTL != "") {
		return Cluster{}, &Error{Key: "cluster.etcd_endpoints", Reason: "required with the other [cluster] keys"}
	}
	return c, nil
}
