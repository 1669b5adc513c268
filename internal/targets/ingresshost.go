package targets

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// tlsSecretName is the Secret cert-manager keeps a host's certificate in:
// the host with its dots turned to dashes, as it always was — a new name
// would make cert-manager order every certificate anew on an upgrade, and
// serve the ingress controller's default one until each is issued. That
// name is not one per host (a-b.bank.example and a.b-bank.example share
// one), and two hosts must never share a Secret: the second would be
// served the first one's certificate, and cert-manager reissue it for each
// in turn. So a target whose usual name is taken in its namespace by an
// older target's other host, or whose usual name is too long, gets
// distinctSecretName instead.
func (r *IngressReconciler) tlsSecretName(ctx context.Context, it *v1alpha1.IngressTarget, host string) (string, error) {
	name := usualSecretName(host)
	if len(name) > validation.DNS1123SubdomainMaxLength {
		return distinctSecretName(host), nil
	}
	var list v1alpha1.IngressTargetList
	if err := r.client.List(ctx, &list); err != nil {
		return "", err
	}
	for i := range list.Items {
		o := &list.Items[i]
		if o.UID == it.UID || !o.DeletionTimestamp.IsZero() || servedFrom(o) != r.opts.ClusterName ||
			o.Spec.Namespace != it.Spec.Namespace || !claimsFirst(o, it) {
			continue
		}
		if oh := Host(o, r.opts.Domain); !strings.EqualFold(oh, host) && usualSecretName(oh) == name {
			return distinctSecretName(host), nil
		}
	}
	return name, nil
}

// usualSecretName is a host's Secret name: its dots turned to dashes.
func usualSecretName(host string) string { return strings.ReplaceAll(host, ".", "-") + "-tls" }

// distinctSecretName is a Secret name no other host has: every dot turned
// to a dash and every dash doubled (labels neither begin nor end with a
// dash, so a single dash is a dot and a run of 2n dashes is n dashes). A
// name over 253 characters is cut and ends in a hash of the whole host
// after a run of three dashes, which no host's readable name holds.
func distinctSecretName(host string) string {
	readable := strings.NewReplacer("-", "--", ".", "-").Replace(host)
	if name := readable + "-tls"; len(name) <= validation.DNS1123SubdomainMaxLength {
		return name
	}
	sum := sha256.Sum256([]byte(host))
	suffix := "---" + hex.EncodeToString(sum[:8]) + "-tls"
	return strings.TrimRight(readable[:validation.DNS1123SubdomainMaxLength-len(suffix)], "-") + suffix
}

// claimsFirst orders two targets' claims on one host: the older target
// first, then by name.
func claimsFirst(a, b *v1alpha1.IngressTarget) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
}

// holdsFirst orders two targets' claims on host: one that serves it now
// (Ready, with the host in its status) before one that does not, then
// the older.
func holdsFirst(a, b *v1alpha1.IngressTarget, host string) bool {
	serving := func(x *v1alpha1.IngressTarget) bool {
		return strings.EqualFold(x.Status.Host, host) && meta.IsStatusConditionTrue(x.Status.Conditions, v1alpha1.ConditionReady)
	}
	if sa, sb := serving(a), serving(b); sa != sb {
		return sa
	}
	return claimsFirst(a, b)
}

// olderClaim is the other target served here on host that holds it
// before it does: the one serving the host now (an edit never takes a
// live host from another target), else the oldest.
func (r *IngressReconciler) olderClaim(ctx context.Context, it *v1alpha1.IngressTarget, host string) (*v1alpha1.IngressTarget, error) {
	var list v1alpha1.IngressTargetList
	if err := r.client.List(ctx, &list); err != nil {
		return nil, err
	}
	var oldest *v1alpha1.IngressTarget
	for i := range list.Items {
		o := &list.Items[i]
		if o.UID == it.UID || !o.DeletionTimestamp.IsZero() || servedFrom(o) != r.opts.ClusterName ||
			!strings.EqualFold(Host(o, r.opts.Domain), host) {
			continue
		}
		if holdsFirst(o, it, host) && (oldest == nil || holdsFirst(o, oldest, host)) {
			oldest = o
		}
	}
	return oldest, nil
}

// sameHost maps a change of one target to the others on its host: the
// younger ones wait for the older one to give the host up.
func (r *IngressReconciler) sameHost(ctx context.Context, obj client.Object) []reconcile.Request {
	it, ok := obj.(*v1alpha1.IngressTarget)
	if !ok {
		return nil
	}
	host := Host(it, r.opts.Domain)
	if host == "" {
		return nil
	}
	var list v1alpha1.IngressTargetList
	if err := r.client.List(ctx, &list); err != nil {
		return nil
	}
	var out []reconcile.Request
	for i := range list.Items {
		if o := &list.Items[i]; o.UID != it.UID && strings.EqualFold(Host(o, r.opts.Domain), host) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: o.Namespace, Name: o.Name}})
		}
	}
	return out
}

// invalidMessage explains the API server's refusal of a target's Ingress
// in the terms of the target's spec where it can.
func invalidMessage(it *v1alpha1.IngressTarget, backend string, err error) string {
	msg := "the API server refused the Ingress: " + err.Error()
	if errs := validation.IsDNS1035Label(backend); len(errs) > 0 {
		if backend == it.Spec.Service {
			msg += fmt.Sprintf("; spec.service %q is no valid backend Service name (%s)", backend, strings.Join(errs, "; "))
		} else {
			msg += fmt.Sprintf("; the backend is the mirror %s (<spec.service>-<spec.cluster>), no valid Service name (%s): shorten spec.service or spec.cluster",
				backend, strings.Join(errs, "; "))
		}
	}
	return msg
}
