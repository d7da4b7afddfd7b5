package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netshim/netshim/config"
)

// writeCert writes a certificate for tmpl signed by parent (self-signed
// when nil) and its key, as PEM files dir/name.pem and dir/name-key.pem.
func writeCert(t *testing.T, dir, name string, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

// TestTLS: etcd with client certificates required; the client with the
// config's etcd_ca, etcd_cert and etcd_key gets in, one without a
// certificate does not.
func TestTLS(t *testing.T) {
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Fatalf("etcd is not installed (Debian's etcd-server; make test installs it): %v", err)
	}
	dir := t.TempDir()
	now := time.Now()
	ca, caKey := writeCert(t, dir, "ca", &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, nil, nil)
	writeCert(t, dir, "server", &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "etcd"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		// etcd's JSON gateway connects to etcd's gRPC with the server's
		// certificate: it must be good for client authentication too.
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, ca, caKey)
	writeCert(t, dir, "client", &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "netshim"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
	port := func() int {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	client, peer := fmt.Sprintf("https://127.0.0.1:%d", port()), fmt.Sprintf("http://127.0.0.1:%d", port())
	cmd := exec.Command("etcd", "--data-dir", filepath.Join(dir, "data"), "--name", "t", "--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "t="+peer,
		"--cert-file", filepath.Join(dir, "server.pem"), "--key-file", filepath.Join(dir, "server-key.pem"),
		"--trusted-ca-file", filepath.Join(dir, "ca.pem"), "--client-cert-auth")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c, err := New(config.Cluster{Endpoints: []string{client}, Timeout: 2 * time.Second, Prefix: "/tls",
		CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "client.pem"), Key: filepath.Join(dir, "client-key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := c.GetNetwork(ctx, "x")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd over TLS: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := c.CreateNetwork(ctx, Network{Name: "ov", ID: "1", Subnet: netip.MustParsePrefix("10.200.0.0/16"), HostPrefix: 24}); err != nil {
		t.Fatalf("create over TLS: %v", err)
	}
	// Without a client certificate etcd refuses: the handshake reached it,
	// and it answered with a TLS alert (a remote error, not a connection
	// that never got there).
	anon, _ := New(config.Cluster{Endpoints: []string{client}, Timeout: time.Second, Prefix: "/tls", CA: filepath.Join(dir, "ca.pem")})
	_, err = anon.GetNetwork(ctx, "ov")
	var ue *UnreachableError
	var op *net.OpError
	if !errors.As(err, &ue) || !errors.As(err, &op) || op.Op != "remote error" {
		t.Fatalf("no client certificate: want etcd's TLS alert, got %v", err)
	}
	// A CA file that holds no certificate is one clear error.
	os.WriteFile(filepath.Join(dir, "bad.pem"), []byte("not pem"), 0o600)
	if _, err := New(config.Cluster{Endpoints: []string{client}, CA: filepath.Join(dir, "bad.pem")}); err == nil || !strings.Contains(err.Error(), "etcd_ca") {
		t.Fatalf("a CA file without a certificate: want an error naming etcd_ca, got %v", err)
	}
}
