package targets

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// invalidSpec says what is wrong with a target the CRD's schema let
// through, or "" when nothing is. `backbone render` checks the same before
// it writes a target; an EgressTarget applied by hand has only this check.
//
// Nothing is changed for such a target: no Service is made, and one made
// for an earlier, valid spec is left as it was rather than removed. The
// gateway reads the spec itself and refuses to originate with a bundle it
// cannot parse (origin never falls back to the system roots), so the kept
// Service leads nowhere unverified; removing it would also remove every
// linked cluster's mirror and free its gateway port, for a mistake that
// fixing one field undoes.
func invalidSpec(et *v1alpha1.EgressTarget) string {
	if et.Spec.CABundle != "" {
		if err := checkCABundle(et.Spec.CABundle); err != nil {
			return fmt.Sprintf("spec.caBundle %v: the target is not served until it is fixed; its Service, if any, is left as it was", err)
		}
	}
	return ""
}

// checkCABundle accepts PEM CERTIFICATE blocks, at least one, each a
// certificate, and nothing else: the rule internal/config applies to a
// squad's file, so that render and the controller agree.
func checkCABundle(s string) error {
	rest := []byte(s)
	n := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("holds a %q PEM block; only CERTIFICATE blocks belong in a CA bundle", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %v", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("holds no PEM certificate")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return errors.New("has text after its last certificate")
	}
	return nil
}
