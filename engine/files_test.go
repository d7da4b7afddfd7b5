package engine

import "testing"

// A container's resolv.conf is built from the host's when it names a
// nameserver the container can reach.
func TestContainerResolvBase(t *testing.T) {
	host := []byte("nameserver 127.0.0.53\nnameserver 198.51.100.53\n")
	if got := containerResolvBase(host); string(got) != string(host) {
		t.Errorf("a usable nameserver: %q", got)
	}
}
