package targets_test

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/backbone-mesh/backbone/internal/targets"
)

func tlsSecretName(host string) string { return targets.DistinctSecretName(host) }

// label is a DNS label of n characters.
func label(c string, n int) string { return strings.Repeat(c, n) }

// TestTLSSecretNames: the name a target gets when its usual one (dots
// turned to dashes) is taken is one per host.
func TestTLSSecretNames(t *testing.T) {
	long := strings.Join([]string{label("a", 63), label("b", 63), label("c", 63), label("d", 61)}, ".") // 253
	// forged is a host without dashes whose name, were dots and dashes
	// one and the same, would be the given secret name.
	forged := func(name string) string {
		base := strings.TrimSuffix(name, "-tls")
		for strings.Contains(base, "--") {
			base = strings.ReplaceAll(base, "--", "-")
		}
		return strings.ReplaceAll(base, "-", ".")
	}
	tests := map[string]struct {
		hosts []string
		want  string // of the first host, when it matters
	}{
		"gives a host without dashes its usual name": {
			hosts: []string{"ledger.platform.bank.example"}, want: "ledger-platform-bank-example-tls",
		},
		"tells a dash from a dot": {
			hosts: []string{"a-b.bank.example", "a.b-bank.example", "a.b.bank.example", "a--b.bank.example"},
		},
		"tells apart the longest hosts that differ only where the name is cut": {
			hosts: []string{long, long[:252] + "e", strings.ReplaceAll(long, "a.b", "a-b")},
		},
		"tells apart a cut host from one written to take its secret name": {
			hosts: []string{long, forged(tlsSecretName(long)), "a-b.bank.example", forged(tlsSecretName("a-b.bank.example"))},
		},
		"tells apart punycode labels": {
			hosts: []string{"xn--bcher-kva.example", "xn-bcher-kva.example", "xn.bcher-kva.example"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			seen := map[string]string{}
			for _, h := range tc.hosts {
				n := tlsSecretName(h)
				if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
					t.Errorf("%s: secret name %q: %v", h, n, errs)
				}
				if other, ok := seen[n]; ok {
					t.Errorf("%s and %s share the secret name %q", other, h, n)
				}
				seen[n] = h
			}
			if tc.want != "" {
				if got := tlsSecretName(tc.hosts[0]); got != tc.want {
					t.Errorf("%s: secret name %q, want %q", tc.hosts[0], got, tc.want)
				}
			}
		})
	}
}
