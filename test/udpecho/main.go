// Command udpecho answers every UDP datagram with "echo: " and its payload.
// busybox has no UDP server applet; the tests build this statically
// (CGO_ENABLED=0) into container root filesystems.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	addr := ":5353"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	c, err := net.ListenPacket("udp4", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			continue
		}
		c.WriteTo(append([]byte("echo: "), buf[:n]...), from)
	}
}
