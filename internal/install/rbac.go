package install

import (
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
)

// ServiceAccount names. LinkReaderServiceAccount is the identity other
// clusters use (through `backbone link`) to read this cluster's exports.
const (
	ControllerName           = "backbone-controller"
	GatewayName              = "backbone-gateway"
	LinkReaderServiceAccount = "backbone-link-reader"
)

var (
	read  = []string{"get", "list", "watch"}
	write = []string{"get", "list", "watch", "create", "update", "patch", "delete"}
)

const (
	mcsGroup       = "multicluster.x-k8s.io"
	discoveryGroup = "discovery.k8s.io"
)

func serviceAccounts(v Values) []*corev1.ServiceAccount {
	var out []*corev1.ServiceAccount
	for _, name := range []string{ControllerName, GatewayName, LinkReaderServiceAccount} {
		out = append(out, &corev1.ServiceAccount{
			TypeMeta:   typeMeta("v1", "ServiceAccount"),
			ObjectMeta: meta(name, backbonev1alpha1.SystemNamespace, componentOf(name)),
			// Only the controller and gateway talk to the API from a pod;
			// the link reader's tokens are requested explicitly.
			AutomountServiceAccountToken: new(name != LinkReaderServiceAccount),
		})
	}
	return out
}

func componentOf(name string) string {
	switch name {
	case ControllerName:
		return "controller"
	case GatewayName:
		return "gateway"
	default:
		return "link-reader"
	}
}

// clusterRoles grant, cluster-wide, only what each identity needs:
//   - the controller writes mirrors (Services, EndpointSlices) and the
//     objects IngressTargets become, and the status of backbone's kinds;
//   - the gateway reads what it routes to;
//   - the link reader reads exports: no Secrets, no writes.
func clusterRoles(v Values) []*rbacv1.ClusterRole {
	controllerRules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: write},
		{APIGroups: []string{discoveryGroup}, Resources: []string{"endpointslices"}, Verbs: write},
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: read},
		{APIGroups: []string{backbonev1alpha1.GroupVersion.Group}, Resources: []string{"egresstargets"}, Verbs: read},
		// Links and IngressTargets carry the controller's finalizers.
		{APIGroups: []string{backbonev1alpha1.GroupVersion.Group}, Resources: []string{"links", "ingresstargets"}, Verbs: []string{"get", "list", "watch", "update", "patch"}},
		{APIGroups: []string{backbonev1alpha1.GroupVersion.Group}, Resources: []string{"links/status", "egresstargets/status", "ingresstargets/status"}, Verbs: []string{"get", "update", "patch"}},
		{APIGroups: []string{backbonev1alpha1.GroupVersion.Group}, Resources: []string{"links/finalizers", "egresstargets/finalizers", "ingresstargets/finalizers"}, Verbs: []string{"update"}},
		{APIGroups: []string{mcsGroup}, Resources: []string{"serviceexports"}, Verbs: read},
		{APIGroups: []string{mcsGroup}, Resources: []string{"serviceexports/status"}, Verbs: []string{"get", "update", "patch"}},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses"}, Verbs: write},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes"}, Verbs: write},
		// With --ingress-mode httproute, the Gateway's published address
		// goes into IngressTarget status: read one by name, never listed.
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways"}, Verbs: []string{"get"}},
		{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
	if v.Controller.CreateNamespaces {
		controllerRules[2].Verbs = []string{"get", "list", "watch", "create"}
	}
	return []*rbacv1.ClusterRole{
		{
			TypeMeta:   typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"),
			ObjectMeta: meta(ControllerName, "", "controller"),
			Rules:      controllerRules,
		},
		{
			TypeMeta:   typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"),
			ObjectMeta: meta(GatewayName, "", "gateway"),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: read},
				{APIGroups: []string{discoveryGroup}, Resources: []string{"endpointslices"}, Verbs: read},
				{APIGroups: []string{mcsGroup}, Resources: []string{"serviceexports"}, Verbs: read},
				{APIGroups: []string{backbonev1alpha1.GroupVersion.Group}, Resources: []string{"links", "egresstargets"}, Verbs: read},
			},
		},
		{
			TypeMeta:   typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"),
			ObjectMeta: meta(LinkReaderServiceAccount, "", "link-reader"),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: read},
				{APIGroups: []string{discoveryGroup}, Resources: []string{"endpointslices"}, Verbs: read},
				{APIGroups: []string{mcsGroup}, Resources: []string{"serviceexports"}, Verbs: read},
			},
		},
	}
}

func clusterRoleBindings(Values) []*rbacv1.ClusterRoleBinding {
	var out []*rbacv1.ClusterRoleBinding
	for _, name := range []string{ControllerName, GatewayName, LinkReaderServiceAccount} {
		out = append(out, &rbacv1.ClusterRoleBinding{
			TypeMeta:   typeMeta("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
			ObjectMeta: meta(name, "", componentOf(name)),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: backbonev1alpha1.SystemNamespace}},
		})
	}
	return out
}

// controllerRole is the controller's namespaced access in backbone-system:
// Link credentials (read only, and nowhere else), and its leader-election
// Lease.
func controllerRole(Values) (*rbacv1.Role, *rbacv1.RoleBinding) {
	role := &rbacv1.Role{
		TypeMeta:   typeMeta("rbac.authorization.k8s.io/v1", "Role"),
		ObjectMeta: meta(ControllerName, backbonev1alpha1.SystemNamespace, "controller"),
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: read},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch"}},
		},
	}
	binding := &rbacv1.RoleBinding{
		TypeMeta:   typeMeta("rbac.authorization.k8s.io/v1", "RoleBinding"),
		ObjectMeta: meta(ControllerName, backbonev1alpha1.SystemNamespace, "controller"),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: ControllerName},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: ControllerName, Namespace: backbonev1alpha1.SystemNamespace}},
	}
	return role, binding
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}

// meta gives every installed object the same recommended labels. They do
// not carry app.kubernetes.io/managed-by=backbone: that label marks objects
// the controller created and may delete.
func meta(name, namespace, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels(component)}
}

func labels(component string) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":      "backbone",
		"app.kubernetes.io/component": component,
		"app.kubernetes.io/part-of":   "backbone",
	}
}

func selectorLabels(component string) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":      "backbone",
		"app.kubernetes.io/component": component,
	}
}
