package certs

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

// expiredAnchor is an anchor whose certificate expired an hour ago, as one
// left in a drawer for ten years would be.
func expiredAnchor(t *testing.T) *Anchor {
	t.Helper()
	a, err := NewAnchor("bank.example", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := *a.Cert
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &a.Key.PublicKey, a.Key)
	if err != nil {
		t.Fatal(err)
	}
	if a.Cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestNothingIsIssuedThatIsBornExpired(t *testing.T) {
	expired := expiredAnchor(t)
	expiry := expired.Cert.NotAfter.UTC().Format(time.RFC3339)
	tests := map[string]struct {
		do      func() error
		wantErr string
	}{
		"an anchor of negative validity is refused": {
			do:      func() error { _, err := NewAnchor("bank.example", -time.Hour); return err },
			wantErr: "must be positive",
		},
		"an anchor of no validity is refused": {
			do:      func() error { _, err := NewAnchor("bank.example", 0); return err },
			wantErr: "must be positive",
		},
		"an expired anchor is not loaded, and its expiry is named": {
			do: func() error {
				dir := t.TempDir()
				if err := expired.Save(dir); err != nil {
					t.Fatal(err)
				}
				_, err := LoadAnchor(dir)
				return err
			},
			wantErr: "expired at " + expiry,
		},
		"an expired anchor issues no identity": {
			do:      func() error { _, _, err := expired.Issue("east", time.Hour); return err },
			wantErr: "expired at " + expiry,
		},
		"an expired anchor issues no issuing CA": {
			do:      func() error { _, _, err := expired.IssueCA("east", time.Hour); return err },
			wantErr: "expired at " + expiry,
		},
		"an issuing CA of no validity is refused": {
			do: func() error {
				a, err := NewAnchor("bank.example", time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				_, _, err = a.IssueCA("east", 0)
				return err
			},
			wantErr: "must be positive",
		},
		"an identity that would expire before it is valid is refused": {
			do: func() error {
				a, err := NewAnchor("bank.example", time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				_, _, err = a.Issue("east", -time.Hour)
				return err
			},
			wantErr: "expires before it is valid",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.do()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error saying %q", err, tc.wantErr)
			}
		})
	}
}

func TestCheckValidityTellsWhenTheAnchorShortensACertificate(t *testing.T) {
	anchor, err := NewAnchor("bank.example", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		validity      time.Duration
		wantShortened bool
		wantErr       string
	}{
		"a validity within the anchor's is fine": {validity: time.Hour},
		"a validity past the anchor's expiry is shortened, and the error names the expiry": {
			validity: 90 * 24 * time.Hour, wantShortened: true, wantErr: anchor.Cert.NotAfter.UTC().Format(time.RFC3339),
		},
		"a negative validity is refused, not shortened": {validity: -time.Hour, wantErr: "must be positive"},
		"no validity is refused, not shortened":         {validity: 0, wantErr: "must be positive"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := anchor.CheckValidity(tc.validity)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("got %v, want an error saying %q", err, tc.wantErr)
			}
			if got := errors.Is(err, ErrShortened); got != tc.wantShortened {
				t.Errorf("errors.Is(%v, ErrShortened) = %v, want %v", err, got, tc.wantShortened)
			}
		})
	}
	if err := expiredAnchor(t).CheckValidity(time.Hour); err == nil || errors.Is(err, ErrShortened) || !strings.Contains(err.Error(), "expired at") {
		t.Errorf("an expired anchor: %v, want it refused as expired, not as shortened", err)
	}
}
