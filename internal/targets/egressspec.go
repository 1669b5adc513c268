package targets

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// invalidSpec says what is wrong with a target the CRD's schema let
// through, or "" when nothing is; an EgressTarget applied by hand has only
// this check.
//
// Nothing is changed for such a target: no Service is made, and one made
// for an earlier, valid spec is left as it was rather than removed. The
// gateway reads the spec itself and refuses to originate with a bundle it
// cannot parse (origin never falls back to the system roots), so the kept
// Service leads nowhere unverified; removing it would also remove every
// linked cluster's mirror and free its gateway port, for a mistake that
// fixing one field undoes.
func invalidSpec(et *v1alpha1.EgressTarget) string {
	if et.Spec.CABundle != "" && et.Spec.Protocol != v1alpha1.EgressProtocolTCP {
		if err := checkCABundle(et.Spec.CABundle); err != nil {
			return fmt.Sprintf("spec.caBundle %v: the target is not served until it is fixed; its Service, if any, is left as it was", err)
		}
	}
	return ""
}

// checkCABundle refuses exactly what the gateway cannot use: a bundle from
// which no certificate loads (origin then refuses to originate). Anything
// stricter would stop serving, on an upgrade, a target that works: a
// bundle with a stray line or one certificate Go cannot parse still
// verifies with the others. `backbone render` is stricter with a squad's
// file, where nothing is served yet.
func checkCABundle(s string) error {
	if !x509.NewCertPool().AppendCertsFromPEM([]byte(s)) {
		return errors.New("holds no PEM certificate the gateway can load")
	}
	return nil
}
