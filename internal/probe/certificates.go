package probe

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/backbone-mesh/backbone/internal/identity"
)

// Reasons of the CertificatesValid condition.
const (
	ReasonCertificatesValid      = "Valid"
	ReasonCertificateExpiring    = "Expiring"
	ReasonCertificateExpired     = "Expired"
	ReasonCertificateNotYetValid = "NotYetValid"
	// ReasonUnknownAuthority: the remote gateway's certificate does not
	// chain to this cluster's trust bundle — the clusters do not share a
	// trust anchor.
	ReasonUnknownAuthority = "UnknownAuthority"
	// ReasonCertificateRefused: the remote gateway refused this cluster's
	// certificate, valid as far as this cluster knows — its bundle lacks
	// our anchor, or it was issued for another trust domain.
	ReasonCertificateRefused = "Refused"
	ReasonWrongIdentity      = "WrongIdentity"
	ReasonHandshakeFailed    = "HandshakeFailed"
	// ReasonNotChecked: no handshake has reached the gateway yet.
	ReasonNotChecked = "NotChecked"
)

// DefaultExpiryWarning is how long before expiry a certificate is reported
// Expiring; `backbone check` warns from the same point.
const DefaultExpiryWarning = 30 * 24 * time.Hour

// certVerdict is the CertificatesValid condition without its times. Its
// message holds only dates, never durations, so it does not change while
// nothing changes.
type certVerdict struct {
	status  metav1.ConditionStatus
	reason  string
	message string
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// judgeCertificates decides CertificatesValid from this cluster's current
// certificate and the latest handshake that reached the target's gateway
// (nil when none has). Expiry is judged at now, so a certificate crosses
// into Expiring and Expired without a new handshake.
func judgeCertificates(local *x509.Certificate, hs *Inspection, target, expected string, now time.Time, warn time.Duration) certVerdict {
	theirs := target + "'s gateway identity"
	if local != nil {
		switch {
		case now.After(local.NotAfter):
			return certVerdict{metav1.ConditionFalse, ReasonCertificateExpired,
				fmt.Sprintf("this cluster's identity expired at %s: %s's gateway refuses it", stamp(local.NotAfter), target)}
		case now.Before(local.NotBefore):
			return certVerdict{metav1.ConditionFalse, ReasonCertificateNotYetValid,
				fmt.Sprintf("this cluster's identity is valid only from %s", stamp(local.NotBefore))}
		}
	}
	if hs == nil {
		return certVerdict{metav1.ConditionUnknown, ReasonNotChecked, "no handshake with " + target + "'s gateway yet"}
	}
	peer := hs.Peer
	if peer != nil {
		switch {
		case now.After(peer.NotAfter):
			return certVerdict{metav1.ConditionFalse, ReasonCertificateExpired,
				fmt.Sprintf("%s expired at %s: new connections to it fail", theirs, stamp(peer.NotAfter))}
		case now.Before(peer.NotBefore):
			return certVerdict{metav1.ConditionFalse, ReasonCertificateNotYetValid,
				fmt.Sprintf("%s is valid only from %s", theirs, stamp(peer.NotBefore))}
		}
	}
	if err := hs.Err; err != nil {
		var unknown x509.UnknownAuthorityError
		var invalid x509.CertificateInvalidError
		var remote *net.OpError
		switch {
		case errors.As(err, &unknown):
			issuer := "an unknown issuer"
			if peer != nil {
				issuer = peer.Issuer.String()
			}
			return certVerdict{metav1.ConditionFalse, ReasonUnknownAuthority,
				fmt.Sprintf("%s's gateway certificate, issued by %s, does not chain to this cluster's trust bundle: the clusters do not share a trust anchor", target, issuer)}
		case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
			return certVerdict{metav1.ConditionFalse, ReasonCertificateExpired, theirs + " has expired or is not yet valid"}
		case peer != nil && !presents(peer, expected):
			return certVerdict{metav1.ConditionFalse, ReasonWrongIdentity,
				fmt.Sprintf("%s's gateway presents %s, the Link expects %s", target, presented(peer), expected)}
		case errors.As(err, &remote) && remote.Op == "remote error":
			return certVerdict{metav1.ConditionFalse, ReasonCertificateRefused,
				fmt.Sprintf("%s's gateway refused this cluster's certificate (%v): its trust bundle lacks our anchor, or it belongs to another trust domain", target, remote.Err)}
		default:
			return certVerdict{metav1.ConditionFalse, ReasonHandshakeFailed, err.Error()}
		}
	}
	var expiring []string
	if local != nil && local.NotAfter.Sub(now) < warn {
		expiring = append(expiring, "this cluster's identity expires at "+stamp(local.NotAfter))
	}
	if peer != nil && peer.NotAfter.Sub(now) < warn {
		expiring = append(expiring, theirs+" expires at "+stamp(peer.NotAfter))
	}
	if len(expiring) > 0 {
		return certVerdict{metav1.ConditionTrue, ReasonCertificateExpiring, strings.Join(expiring, "; ")}
	}
	var valid []string
	if local != nil {
		valid = append(valid, "this cluster's identity is valid until "+stamp(local.NotAfter))
	}
	if peer != nil {
		valid = append(valid, theirs+" until "+stamp(peer.NotAfter))
	}
	return certVerdict{metav1.ConditionTrue, ReasonCertificatesValid, strings.Join(valid, ", ")}
}

func presents(c *x509.Certificate, expected string) bool {
	id, err := identity.FromCertificate(c)
	return err == nil && id.String() == expected
}

func presented(c *x509.Certificate) string {
	id, err := identity.FromCertificate(c)
	if err != nil {
		return "no valid SPIFFE ID (" + err.Error() + ")"
	}
	return id.String()
}

// certificateInfo is status.certificates.local or .peer, for apply.
func certificateInfo(c *x509.Certificate) map[string]any {
	info := map[string]any{
		"issuer":    c.Issuer.String(),
		"notBefore": stamp(c.NotBefore),
		"notAfter":  stamp(c.NotAfter),
	}
	if id, err := identity.FromCertificate(c); err == nil {
		info["identity"] = id.String()
	}
	return info
}
