package check

import (
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/probe"
)

// anchorFix is what to do when two clusters do not trust each other's
// anchor.
func anchorFix(target string) string {
	return fmt.Sprintf("compare the anchors with backbone check --contexts <this cluster>,%s; each cluster's ca.crt (Secret %s/%s) must hold the other's root: put both roots in one bundle and give it to both (backbone certs issue --bundle both-roots.pem, or cert-manager's trust bundle), then drop the old root once every identity is reissued",
		target, backbonev1alpha1.SystemNamespace, IdentitySecret)
}

func renewFix(target string) string {
	return fmt.Sprintf("issue a new identity for the cluster whose certificate expires (backbone certs issue --cluster-name <it> ..., or let cert-manager renew it) and update its Secret %s/%s; gateways reload it without dropping streams; kubectl get link %s -n %s -o jsonpath='{.status.certificates}' shows both ends",
		backbonev1alpha1.SystemNamespace, IdentitySecret, target, backbonev1alpha1.SystemNamespace)
}

// checkLinkCertificates reports what the link probe's own handshake with
// the peer gateway found: both identities' expiry (judged here against
// check's warning window, which may be wider than the controller's) and
// whether each side trusts the other's anchor.
func checkLinkCertificates(l *backbonev1alpha1.Link, o Options) Result {
	target := l.Spec.TargetClusterName
	name := "link " + target + " certificates"
	cond := meta.FindStatusCondition(l.Status.Conditions, backbonev1alpha1.ConditionCertificatesValid)
	if cond == nil {
		return pass(name, "not reported: the controller reads them only with --identity-dir, from this version on")
	}
	if cond.Status == metav1.ConditionFalse {
		msg := cond.Reason + ": " + cond.Message
		switch cond.Reason {
		case probe.ReasonUnknownAuthority:
			return fail(name, target+" does not share our trust anchor: "+cond.Message, anchorFix(target))
		case probe.ReasonCertificateRefused:
			return fail(name, target+" does not trust our anchor: "+cond.Message, anchorFix(target))
		case probe.ReasonCertificateExpired, probe.ReasonCertificateNotYetValid:
			return fail(name, msg, renewFix(target))
		case probe.ReasonWrongIdentity:
			return fail(name, msg, fmt.Sprintf("spec.gatewayIdentity of Link %s must be %s's identity: relink with %s", l.Name, target, relinkFix(target)))
		}
		return fail(name, msg, fmt.Sprintf("kubectl -n %s logs deploy/backbone-controller | grep %s", backbonev1alpha1.SystemNamespace, target))
	}
	var ends []string
	var expiring []string
	if c := l.Status.Certificates; c != nil {
		for _, e := range []struct {
			who  string
			cert *backbonev1alpha1.CertificateInfo
		}{{"ours", c.Local}, {target + "'s", c.Peer}} {
			if e.cert == nil {
				continue
			}
			at := e.cert.NotAfter.UTC().Format(time.RFC3339)
			ends = append(ends, e.who+" until "+at)
			if left := e.cert.NotAfter.Sub(o.Now); left < o.ExpiryWarning {
				expiring = append(expiring, fmt.Sprintf("%s expires at %s, in %s", e.who, at, left.Round(time.Hour)))
			}
		}
	}
	if len(expiring) > 0 {
		return fail(name, strings.Join(expiring, "; "), renewFix(target))
	}
	if cond.Status == metav1.ConditionUnknown {
		return pass(name, "not seen yet: "+cond.Message)
	}
	if len(ends) == 0 {
		return pass(name, cond.Message)
	}
	return pass(name, "valid: "+strings.Join(ends, ", "))
}
