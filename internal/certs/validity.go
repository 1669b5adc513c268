package certs

import (
	"errors"
	"fmt"
	"time"
)

// ErrShortened marks a certificate that would outlive its anchor. Issue
// and IssueCA cap it at the anchor's expiry, so it would expire sooner
// than asked: something to decide on when issuing (rotate the anchor, or
// accept it), not to discover when every link fails on the same day.
var ErrShortened = errors.New("the certificate would expire with its trust anchor, sooner than asked")

// CheckValidity says whether the anchor can issue, now, a certificate
// valid for the whole of validity: an error when validity is not positive
// or the anchor is not valid now; one wrapping ErrShortened, naming the
// anchor's expiry, when the anchor expires first.
func (a *Anchor) CheckValidity(validity time.Duration) error {
	if err := positive(validity); err != nil {
		return err
	}
	now := time.Now()
	if err := a.usable(now); err != nil {
		return err
	}
	if end := now.Add(validity); end.After(a.Cert.NotAfter) {
		return fmt.Errorf("%w: the trust anchor expires at %s, %s before the %s asked for would end",
			ErrShortened, timestamp(a.Cert.NotAfter), days(end.Sub(a.Cert.NotAfter)), days(validity))
	}
	return nil
}

func positive(validity time.Duration) error {
	if validity <= 0 {
		return fmt.Errorf("validity %s: must be positive", validity)
	}
	return nil
}

// usable refuses an anchor outside its own validity: nothing it signs
// would verify anywhere.
func (a *Anchor) usable(now time.Time) error {
	if now.After(a.Cert.NotAfter) {
		return fmt.Errorf("the trust anchor %q expired at %s: create a new one (backbone certs trust-anchor) and rotate every cluster to it (docs/identities.md)",
			a.Cert.Subject.CommonName, timestamp(a.Cert.NotAfter))
	}
	if now.Before(a.Cert.NotBefore) {
		return fmt.Errorf("the trust anchor %q is valid only from %s: is this machine's clock right?",
			a.Cert.Subject.CommonName, timestamp(a.Cert.NotBefore))
	}
	return nil
}

func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// days writes long durations in days, which is how validities are
// thought of, and short ones as Go does.
func days(d time.Duration) string {
	if d < 48*time.Hour {
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%d days", int((d+12*time.Hour).Hours()/24))
}
