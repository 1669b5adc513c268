package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCertsRefusesCertificatesThatWouldNotLastAsAsked: an anchor of no
// validity is refused by flag; an identity or issuing CA that would
// outlive its anchor is refused, naming the anchor's expiry, unless
// --allow-shortened accepts it, and then the warning still says so.
func TestCertsRefusesCertificatesThatWouldNotLastAsAsked(t *testing.T) {
	dir := t.TempDir()
	anchor := filepath.Join(dir, "anchor")
	if _, _, err := run(t, "certs", "trust-anchor", "--trust-domain", "bank.example", "--out", anchor, "--validity", "-1h"); err == nil || !strings.Contains(err.Error(), "--validity must be positive") {
		t.Fatalf("an anchor of negative validity: %v, want it refused by flag", err)
	}
	if _, stderr, err := run(t, "certs", "trust-anchor", "--trust-domain", "bank.example", "--out", anchor, "--validity", "720h"); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, cmd := range [][]string{
		{"certs", "issue", "--ca-dir", anchor, "--cluster-name", "east"},
		{"certs", "issuing-ca", "--ca-dir", anchor, "--name", "east", "--validity", "8760h"},
	} {
		t.Run(cmd[1], func(t *testing.T) {
			out := filepath.Join(dir, cmd[1])
			if _, _, err := run(t, append(cmd, "--out", out, "--validity", "0s")...); err == nil || !strings.Contains(err.Error(), "--validity must be positive") {
				t.Errorf("--validity 0s: %v, want it refused by flag", err)
			}
			_, _, err := run(t, append(cmd, "--out", out)...)
			if err == nil || !strings.Contains(err.Error(), "trust anchor expires at") || !strings.Contains(err.Error(), "--allow-shortened") {
				t.Fatalf("outliving a 30-day anchor: %v, want it refused naming the anchor's expiry and --allow-shortened", err)
			}
			if _, err := os.Stat(filepath.Join(out, "tls.key")); err == nil {
				t.Errorf("a refused certificate was written")
			}
			_, stderr, err := run(t, append(cmd, "--out", out, "--allow-shortened")...)
			if err != nil {
				t.Fatalf("--allow-shortened: %v\n%s", err, stderr)
			}
			if !strings.Contains(stderr, "trust anchor expires at") {
				t.Errorf("--allow-shortened must still warn: %q", stderr)
			}
		})
	}
}
