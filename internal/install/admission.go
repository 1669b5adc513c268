package install

import (
	"fmt"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/targets"
)

// AdmissionPolicyName names the ValidatingAdmissionPolicy and its binding.
const AdmissionPolicyName = "backbone-routing-labels"

// GarbageCollectorUser is kube-controller-manager's garbage collector, run
// with --use-service-account-credentials (kubeadm's and the managed
// clouds' default).
const GarbageCollectorUser = "system:serviceaccount:kube-system:generic-garbage-collector"

// routingLabels are the labels the gateway routes by: a Service or
// EndpointSlice carrying one is a mirror or an egress target's Service,
// and the gateway opens a listener for it. EndpointSlices are also marked
// by endpointslice.kubernetes.io/managed-by=backbone.dev.
var routingLabels = []string{backbonev1alpha1.MirroredFromLabel, backbonev1alpha1.HeadlessMirrorLabel, targets.EgressTargetLabel}

// admissionPolicy keeps the objects the gateway routes by to the
// controller. RBAC cannot: whoever may write Services or EndpointSlices
// in a namespace may write any labels on them, and a slice that looks
// like a mirror opens a gateway port leading to that namespace's remote
// services (and would take another mirror's port if the gateway did not
// keep it with its holder). The policy refuses creating such an object,
// changing one, or removing the labels that make it one, to anyone but
// the controller, the extra writers named in the values, and
// system:masters (who may delete the policy anyway). Deleting stays with
// RBAC: the controller writes a deleted mirror again.
//
// Kubernetes' garbage collector must get through too, or `kubectl delete
// --cascade=orphan` of an EgressTarget (whose Service and slice it owns)
// and of a mirror itself, and --cascade=foreground of a mirror, never
// finish: it removes owner references from the dependents and its
// finalizer from the deleted object, both updates (deleting dependents is
// a delete, not matched). It may do exactly that — an update that keeps
// labels, annotations and everything outside metadata — and no more.
func admissionPolicy(v Values) (*admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding) {
	writers := append([]string{"system:serviceaccount:" + backbonev1alpha1.SystemNamespace + ":" + ControllerName}, v.AdmissionPolicy.ExtraWriters...)
	quote := func(ss []string) string {
		q := make([]string, len(ss))
		for i, s := range ss {
			q[i] = "'" + s + "'"
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	fail := admissionregistrationv1.Fail
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		TypeMeta:   typeMeta("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
		ObjectMeta: meta(AdmissionPolicyName, "", "controller"),
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionregistrationv1.MatchResources{
				ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{
					{RuleWithOperations: rule("", "services")},
					{RuleWithOperations: rule(discoveryGroup, "endpointslices")},
				},
			},
			Variables: []admissionregistrationv1.Variable{
				{Name: "routing", Expression: fmt.Sprintf("[object, oldObject].exists(o, o != null && has(o.metadata.labels) && (%s.exists(k, k in o.metadata.labels) || ('endpointslice.kubernetes.io/managed-by' in o.metadata.labels && o.metadata.labels['endpointslice.kubernetes.io/managed-by'] == '%s')))",
					quote(routingLabels), backbonev1alpha1.EndpointSliceManagedBy)},
				{Name: "writer", Expression: fmt.Sprintf("request.userInfo.username in %s || 'system:masters' in request.userInfo.groups", quote(writers))},
				// Outside metadata, a Service is its spec and a slice its
				// addressType, endpoints and ports; dyn() because each
				// field is in only one of the two kinds' schemas.
				{Name: "garbageCollection", Expression: fmt.Sprintf("request.userInfo.username == '%s' && oldObject != null"+
					" && object.metadata.?labels == oldObject.metadata.?labels && object.metadata.?annotations == oldObject.metadata.?annotations"+
					" && ['spec', 'addressType', 'endpoints', 'ports'].all(f, dyn(object)[?f] == dyn(oldObject)[?f])", GarbageCollectorUser)},
			},
			Validations: []admissionregistrationv1.Validation{{
				Expression: "!variables.routing || variables.writer || variables.garbageCollection",
				Message: fmt.Sprintf("only backbone's controller writes Services and EndpointSlices labelled %s or endpointslice.kubernetes.io/managed-by=%s: the gateway routes by them (policy %s)",
					strings.Join(routingLabels, ", "), backbonev1alpha1.EndpointSliceManagedBy, AdmissionPolicyName),
				Reason: new(metav1.StatusReasonForbidden),
			}},
		},
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		TypeMeta:   typeMeta("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"),
		ObjectMeta: meta(AdmissionPolicyName, "", "controller"),
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        AdmissionPolicyName,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}
	return policy, binding
}

func rule(group, resource string) admissionregistrationv1.RuleWithOperations {
	return admissionregistrationv1.RuleWithOperations{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
		Rule:       admissionregistrationv1.Rule{APIGroups: []string{group}, APIVersions: []string{"v1"}, Resources: []string{resource}},
	}
}
