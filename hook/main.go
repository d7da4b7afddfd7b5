// Command netshim is the OCI hook and its Docker-like command line. It only
// parses and exits; the work is in package cli and below.
package main

import (
	"context"
	"os"

	"github.com/netshim/netshim/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
