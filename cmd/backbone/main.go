// Command backbone connects Kubernetes clusters across clouds: it mirrors
// exported services between linked clusters, tunnels traffic between them
// over pooled mTLS, reaches external resources, exposes services to the
// outside, and measures the links. See `backbone --help`.
package main

import (
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		os.Exit(1)
	}
}
