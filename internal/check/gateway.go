package check

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/probe"
)

// IdentitySecret is the Secret holding the cluster's gateway identity, as
// `backbone install` mounts it.
const IdentitySecret = "backbone-gateway-identity"

// checkLinkProbe reports what the controller's link probe — GET /ready to
// the peer gateway over the mTLS path traffic takes — last found.
func checkLinkProbe(l *backbonev1alpha1.Link) Result {
	name := "link " + l.Spec.TargetClusterName + " gateway"
	fix := fmt.Sprintf("the %s gateway does not answer from here: check it (kubectl --context %s -n %s get pods,svc -l app.kubernetes.io/name=backbone), the addresses in Link %s (spec.gatewayAddresses), and that both clusters trust the same anchor; watch with backbone links --all-contexts",
		l.Spec.TargetClusterName, l.Spec.TargetClusterName, backbonev1alpha1.SystemNamespace, l.Name)
	p := l.Status.Probe
	cond := meta.FindStatusCondition(l.Status.Conditions, backbonev1alpha1.ConditionGatewayReachable)
	switch {
	case p == nil:
		return fail(name, "not probed yet: is the controller running with --identity-dir?", "kubectl -n "+backbonev1alpha1.SystemNamespace+" logs deploy/backbone-controller")
	case p.LastProbeTime != nil && time.Since(p.LastProbeTime.Time) > probe.StaleAfter:
		at := time.Since(p.LastProbeTime.Time).Round(time.Second)
		return fail(name, fmt.Sprintf("the probe status is stale (last probe %s ago): no controller measures this link", at), "kubectl -n "+backbonev1alpha1.SystemNamespace+" logs deploy/backbone-controller")
	case !p.Alive:
		msg := fmt.Sprintf("dead: %d probes failed in a row", p.ConsecutiveFailures)
		if cond != nil && cond.Message != "" {
			msg += ": " + cond.Message
		}
		return fail(name, msg, fix)
	}
	msg := "answers"
	if p.LatencyP50 != nil {
		msg += fmt.Sprintf(", p50 %s", p.LatencyP50.Duration.Round(100*time.Microsecond))
	}
	if p.RecentFailures > 0 {
		msg += fmt.Sprintf(", %d of the last %d probes failed", p.RecentFailures, p.RecentProbes)
	}
	return pass(name, msg)
}

// checkIdentityExpiry reads the gateway identity Secret and fails when its
// certificate expires within the warning window (or has expired).
func checkIdentityExpiry(ctx context.Context, c client.Client, o Options) Result {
	const name = "gateway identity certificate"
	var s corev1.Secret
	err := c.Get(ctx, types.NamespacedName{Namespace: backbonev1alpha1.SystemNamespace, Name: IdentitySecret}, &s)
	if apierrors.IsNotFound(err) {
		return pass(name, "no Secret "+IdentitySecret+" here (identities mounted another way are not checked)")
	}
	if err != nil {
		return fail(name, err.Error(), "")
	}
	block, _ := pem.Decode(s.Data[corev1.TLSCertKey])
	if block == nil {
		return fail(name, "Secret "+IdentitySecret+" holds no PEM certificate in tls.crt", "backbone certs issue --cluster-name <this cluster> ... and update the Secret")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fail(name, "tls.crt: "+err.Error(), "")
	}
	left := cert.NotAfter.Sub(o.Now)
	fix := "issue a new identity (backbone certs issue, or let cert-manager renew it) before " + cert.NotAfter.UTC().Format(time.RFC3339) + "; the gateway reloads it without dropping streams"
	switch {
	case left <= 0:
		return fail(name, "expired at "+cert.NotAfter.UTC().Format(time.RFC3339), fix)
	case left < o.ExpiryWarning:
		return fail(name, fmt.Sprintf("expires in %s (%s)", left.Round(time.Hour), cert.NotAfter.UTC().Format(time.RFC3339)), fix)
	}
	return pass(name, "valid until "+cert.NotAfter.UTC().Format(time.RFC3339))
}
