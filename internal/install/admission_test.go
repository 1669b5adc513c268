package install

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/targets"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestAdmissionPolicyKeepsRoutingLabelsToTheController applies the
// install to a real API server and writes as a tenant who may write
// Services and EndpointSlices in its namespace, as the controller, and as
// an extra writer named in the values.
func TestAdmissionPolicyKeepsRoutingLabelsToTheController(t *testing.T) {
	ctx := context.Background()
	c := installedWithTenant(t, []string{"gitops"}, "alice", "gitops")
	const ns = tenantNamespace
	alice, gitops := impersonate(t, c, "alice"), impersonate(t, c, "gitops")
	controller := impersonate(t, c, "system:serviceaccount:backbone-system:"+ControllerName, "system:serviceaccounts", "system:serviceaccounts:backbone-system")

	service := func(name string, labels map[string]string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 80}}}}
	}
	mirrorSlice := func(name string, port int32) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
				discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy, v1alpha1.MirroredFromLabel: "west"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.2.3"}}},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("tcp"), Port: ptr.To(port)}},
		}
	}
	awaitPolicy(t, c, alice, mirrorSlice("forged", 20001))

	// Ordinary writes are the tenant's business.
	web := service("web", map[string]string{"app": "web"})
	if err := alice.Create(ctx, web); err != nil {
		t.Fatalf("a plain Service: %v", err)
	}
	for name, labels := range map[string]map[string]string{
		"a mirror":           {v1alpha1.MirroredFromLabel: "west"},
		"a headless mirror":  {v1alpha1.HeadlessMirrorLabel: "true"},
		"an egress target's": {targets.EgressTargetLabel: "bank-db"},
	} {
		if err := alice.Create(ctx, service("forged", labels)); !refused(err) {
			t.Errorf("a Service labelled as %s: want refused, got %v", name, err)
		}
	}
	web.Labels[targets.EgressTargetLabel] = "bank-db"
	if err := alice.Update(ctx, web); !refused(err) {
		t.Errorf("labelling a plain Service as an egress target's: want refused, got %v", err)
	}

	// The controller writes mirrors; the tenant may not change them, nor
	// strip the labels that make them mirrors, but may delete them.
	if err := controller.Create(ctx, service("ledger-west", map[string]string{v1alpha1.MirroredFromLabel: "west"})); err != nil {
		t.Fatalf("the controller's mirror: %v", err)
	}
	if err := controller.Create(ctx, mirrorSlice("ledger-west", 20002)); err != nil {
		t.Fatalf("the controller's slice: %v", err)
	}
	var sl discoveryv1.EndpointSlice
	if err := alice.Get(ctx, client.ObjectKey{Namespace: ns, Name: "ledger-west"}, &sl); err != nil {
		t.Fatal(err)
	}
	moved := sl.DeepCopy()
	moved.Ports[0].Port = ptr.To[int32](20001)
	if err := alice.Update(ctx, moved); !refused(err) {
		t.Errorf("moving a mirror's port: want refused, got %v", err)
	}
	stripped := sl.DeepCopy()
	stripped.Labels = map[string]string{discoveryv1.LabelServiceName: "ledger-west"}
	if err := alice.Update(ctx, stripped); !refused(err) {
		t.Errorf("stripping a mirror's labels: want refused, got %v", err)
	}
	if err := alice.Delete(ctx, &sl); err != nil {
		t.Errorf("deleting a mirror slice (the controller writes it again): %v", err)
	}

	// A writer named in the values, and system:masters.
	if err := gitops.Create(ctx, mirrorSlice("from-git", 20003)); err != nil {
		t.Errorf("an extra writer: %v", err)
	}
	if err := c.Client.Create(ctx, mirrorSlice("by-admin", 20004)); err != nil {
		t.Errorf("system:masters: %v", err)
	}
}

// TestAdmissionPolicyLetsTheGarbageCollectorWork writes as the garbage
// collector does for `kubectl delete --cascade=orphan|foreground|background`
// on a controller-made Service and EndpointSlice (an egress target's, owned
// by its EgressTarget) and on a mirror Service itself: it may remove owner
// references and finalizers and delete, and nothing more.
func TestAdmissionPolicyLetsTheGarbageCollectorWork(t *testing.T) {
	ctx := context.Background()
	c := installedWithTenant(t, nil, "alice")
	const ns = tenantNamespace
	alice := impersonate(t, c, "alice")
	controller := impersonate(t, c, "system:serviceaccount:backbone-system:"+ControllerName, "system:serviceaccounts", "system:serviceaccounts:backbone-system")
	// kube-controller-manager's garbage collector, with the
	// --use-service-account-credentials that kubeadm and the managed
	// clouds set; the API server's bootstrap RBAC grants it its role.
	gc := impersonate(t, c, GarbageCollectorUser, "system:serviceaccounts", "system:serviceaccounts:kube-system")

	forged := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "forged", Namespace: ns, Labels: map[string]string{v1alpha1.MirroredFromLabel: "west"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 80}}}}
	awaitPolicy(t, c, alice, forged)

	// An egress target's Service and slice, owned by the EgressTarget as
	// the controller makes them.
	et := &v1alpha1.EgressTarget{ObjectMeta: metav1.ObjectMeta{Name: "bank-db", Namespace: ns},
		Spec: v1alpha1.EgressTargetSpec{HostName: "bank-db", DNSName: "db.bank.example", Environment: "east", Squad: "payments"}}
	if err := c.Client.Create(ctx, et); err != nil {
		t.Fatal(err)
	}
	owned := func(o client.Object) client.Object {
		if err := controllerutil.SetControllerReference(et, o, c.Client.Scheme()); err != nil {
			t.Fatal(err)
		}
		if err := controller.Create(ctx, o); err != nil {
			t.Fatalf("the controller's %T: %v", o, err)
		}
		return o
	}
	svc := owned(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "bank-db", Namespace: ns, Labels: map[string]string{targets.EgressTargetLabel: et.Name}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tls", Port: 443}}}})
	slice := owned(&discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "bank-db", Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: "bank-db", discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy, targets.EgressTargetLabel: et.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.9"}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("tls"), Port: ptr.To[int32](20010)}},
	})

	// The garbage collector's own patches (garbagecollector/patch.go): a
	// JSON merge patch with the resourceVersion it read.
	mergePatch := func(o client.Object, metadata map[string]any) error {
		metadata["resourceVersion"] = o.GetResourceVersion()
		raw, err := json.Marshal(map[string]any{"metadata": metadata})
		if err != nil {
			t.Fatal(err)
		}
		return gc.Patch(ctx, o, client.RawPatch(types.MergePatchType, raw))
	}

	// Its changes beyond owner references and finalizers are refused.
	if err := mergePatch(svc, map[string]any{"labels": map[string]any{targets.EgressTargetLabel: nil}}); !refused(err) {
		t.Errorf("the garbage collector's identity stripping a routing label: want refused, got %v", err)
	}
	moved := slice.(*discoveryv1.EndpointSlice).DeepCopy()
	moved.Ports[0].Port = ptr.To[int32](20011)
	if err := gc.Update(ctx, moved); !refused(err) {
		t.Errorf("the garbage collector's identity moving a slice's port: want refused, got %v", err)
	}

	// kubectl delete egresstarget --cascade=orphan: the collector removes
	// the owner references from the dependents.
	for _, o := range []client.Object{svc, slice} {
		if err := mergePatch(o, map[string]any{"uid": o.GetUID(), "ownerReferences": nil}); err != nil {
			t.Errorf("the garbage collector orphaning %T %s: %v", o, o.GetName(), err)
			continue
		}
		if err := c.Client.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatal(err)
		}
		if len(o.GetOwnerReferences()) != 0 || o.GetLabels()[targets.EgressTargetLabel] != et.Name {
			t.Errorf("orphaned %T: owner references %v, labels %v", o, o.GetOwnerReferences(), o.GetLabels())
		}
	}

	// A cascading delete: the collector deletes the dependents.
	if err := gc.Delete(ctx, slice); err != nil {
		t.Errorf("the garbage collector deleting a dependent slice: %v", err)
	}

	// kubectl delete service --cascade=orphan|foreground on a mirror: the
	// API server adds the finalizer, the collector removes it once done.
	for _, propagation := range []metav1.DeletionPropagation{metav1.DeletePropagationOrphan, metav1.DeletePropagationForeground} {
		mirror := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ledger-" + strings.ToLower(string(propagation)), Namespace: ns, Labels: map[string]string{v1alpha1.MirroredFromLabel: "west"}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 80}}}}
		if err := controller.Create(ctx, mirror); err != nil {
			t.Fatalf("the controller's mirror: %v", err)
		}
		if err := alice.Delete(ctx, mirror, client.PropagationPolicy(propagation)); err != nil {
			t.Fatalf("deleting a mirror with %s propagation: %v", propagation, err)
		}
		if err := c.Client.Get(ctx, client.ObjectKeyFromObject(mirror), mirror); err != nil {
			t.Fatal(err)
		}
		if len(mirror.Finalizers) != 1 {
			t.Fatalf("a mirror deleted with %s propagation has finalizers %v, want the garbage collector's", propagation, mirror.Finalizers)
		}
		if err := mergePatch(mirror, map[string]any{"finalizers": nil}); err != nil {
			t.Errorf("the garbage collector removing %s from a mirror: %v", mirror.Finalizers[0], err)
			continue
		}
		if err := c.Client.Get(ctx, client.ObjectKeyFromObject(mirror), mirror); !apierrors.IsNotFound(err) {
			t.Errorf("a mirror deleted with %s propagation, its finalizer removed: want it gone, got %v", propagation, err)
		}
	}
}

// impersonate is a client acting as user, authenticated, in groups.
func impersonate(t *testing.T, c *testenv.Cluster, user string, groups ...string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
	cl, err := client.New(cfg, client.Options{Scheme: c.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// refused tells the policy's refusal from RBAC's and other errors.
func refused(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), AdmissionPolicyName)
}

// awaitPolicy returns once the policy refuses tenant's creating forged.
// The policy takes effect once the API server has read it: until then,
// what got through is deleted and tried again.
func awaitPolicy(t *testing.T, c *testenv.Cluster, tenant client.Client, forged client.Object) {
	t.Helper()
	ctx := context.Background()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		o := forged.DeepCopyObject().(client.Object)
		err := tenant.Create(ctx, o)
		if refused(err) {
			return
		}
		if err != nil {
			t.Fatalf("a forged %T: want the policy's refusal, got %v", o, err)
		}
		if err := c.Client.Delete(ctx, o); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("a forged %T is still accepted after 20 s", o)
		}
	}
}

// tenantNamespace is where installedWithTenant's writers may write
// Services and EndpointSlices.
const tenantNamespace = "tenant"

// installedWithTenant is a cluster with backbone installed (extraWriters
// in its admission policy) and a namespace whose Services and
// EndpointSlices writers may write as RBAC allows.
func installedWithTenant(t *testing.T, extraWriters []string, writers ...string) *testenv.Cluster {
	t.Helper()
	ctx := context.Background()
	c := testenv.Start(t, "east")["east"]
	v := DefaultValues()
	v.ClusterName = "east"
	v.AdmissionPolicy.ExtraWriters = extraWriters
	objs, err := Objects(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, c.Client, objs); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateNamespace(tenantNamespace); err != nil {
		t.Fatal(err)
	}
	var subjects []rbacv1.Subject
	for _, w := range writers {
		subjects = append(subjects, rbacv1.Subject{Kind: rbacv1.UserKind, Name: w})
	}
	for _, o := range []client.Object{
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "writer", Namespace: tenantNamespace}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"*"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"*"}},
		}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "writer", Namespace: tenantNamespace},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "writer"},
			Subjects: subjects},
	} {
		if err := c.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	return c
}
