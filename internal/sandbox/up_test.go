package sandbox

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

func TestGatewayPortRanges(t *testing.T) {
	for name, tc := range map[string]struct {
		network Network
		// wantRanges: each cluster gets its own ranges; otherwise none, and
		// the controllers' defaults apply.
		wantRanges bool
	}{
		"clusters sharing the machine's address get disjoint ranges":        {hostNetwork{ip: "192.0.2.1"}, true},
		"clusters with addresses of their own keep the controller defaults": {netnsNetwork{}, false},
	} {
		t.Run(name, func(t *testing.T) {
			taken := map[int]int{} // port -> cluster
			for i := range maxHostClusters {
				args := gatewayPortRanges(tc.network, i)
				if !tc.wantRanges {
					if args != nil {
						t.Fatalf("cluster %d: %v", i, args)
					}
					continue
				}
				if len(args) != 4 || args[0] != "--gateway-port-range" || args[2] != "--egress-port-range" {
					t.Fatalf("cluster %d: %v", i, args)
				}
				for j, limits := range []struct{ low, high int }{{20000, 29999}, {30000, 30999}} {
					var first, last int
					if _, err := fmt.Sscanf(args[2*j+1], "%d-%d", &first, &last); err != nil {
						t.Fatalf("cluster %d: %s: %v", i, args[2*j+1], err)
					}
					if first < limits.low || last > limits.high || first > last {
						t.Errorf("cluster %d: %s %s is outside %d-%d", i, args[2*j], args[2*j+1], limits.low, limits.high)
					}
					for p := first; p <= last; p++ {
						if other, ok := taken[p]; ok {
							t.Fatalf("port %d is in the ranges of clusters %d and %d", p, other, i)
						}
						taken[p] = i
					}
				}
			}
		})
	}
}

// TestOutsideACheckoutSaysSo: without a checkout the sandbox has neither
// the CRDs nor the script that builds or finds the cluster binaries, even
// with KUBEBUILDER_ASSETS set; it says that, not that nothing is cached.
func TestOutsideACheckoutSaysSo(t *testing.T) {
	t.Setenv("KUBEBUILDER_ASSETS", t.TempDir())
	s := &Sandbox{opts: Options{Progress: io.Discard}}
	_, err := s.clusterBinaries(t.Context())
	if err == nil || !strings.Contains(err.Error(), "no backbone checkout was found") || strings.Contains(err.Error(), "not cached") {
		t.Fatalf("outside a checkout: %v", err)
	}
}

// TestTheSummaryNamesTheCommandAsRun: the commands to try are printed as
// the binary was run (bin/backbone from a checkout, where backbone is not
// on the PATH).
func TestTheSummaryNamesTheCommandAsRun(t *testing.T) {
	defer func(args []string) { os.Args = args }(os.Args)
	os.Args = []string{"bin/backbone", "sandbox", "up"}
	if got := invokedAs(); got != "bin/backbone" {
		t.Errorf("invokedAs() = %q", got)
	}
}
