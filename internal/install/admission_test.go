package install

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

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
	c := testenv.Start(t, "east")["east"]
	v := DefaultValues()
	v.ClusterName = "east"
	v.AdmissionPolicy.ExtraWriters = []string{"gitops"}
	objs, err := Objects(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, c.Client, objs); err != nil {
		t.Fatal(err)
	}
	const ns = "tenant"
	if err := c.CreateNamespace(ns); err != nil {
		t.Fatal(err)
	}
	for _, o := range []client.Object{
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "writer", Namespace: ns}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"*"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"*"}},
		}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "writer", Namespace: ns},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "writer"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "alice"}, {Kind: rbacv1.UserKind, Name: "gitops"}}},
	} {
		if err := c.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	as := func(user string, groups ...string) client.Client {
		cfg := rest.CopyConfig(c.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
		cl, err := client.New(cfg, client.Options{Scheme: c.Client.Scheme()})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	alice, gitops := as("alice"), as("gitops")
	controller := as("system:serviceaccount:backbone-system:"+ControllerName, "system:serviceaccounts", "system:serviceaccounts:backbone-system")

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
	refused := func(err error) bool {
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), AdmissionPolicyName)
	}
	// The policy takes effect once the API server has read it: until a
	// forged slice is refused, what got through is deleted and tried again.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		s := mirrorSlice("forged", 20001)
		err := alice.Create(ctx, s)
		if refused(err) {
			break
		}
		if err != nil {
			t.Fatalf("a forged mirror slice: want the policy's refusal, got %v", err)
		}
		if err := c.Client.Delete(ctx, s); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("a forged mirror slice is still accepted after 20 s")
		}
	}

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
