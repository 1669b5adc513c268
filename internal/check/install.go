package check

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/link"
)

func installFix(o Options) string {
	name := o.ClusterName
	if name == "" {
		name = "<this cluster>"
	}
	return fmt.Sprintf("backbone install --cluster-name %s | kubectl apply --server-side -f -", name)
}

// checkCRDs compares each CRD in the cluster with the one this binary
// embeds: same versions, same schemas. The API server defaults fields
// outside the schemas, so only those are compared.
func checkCRDs(ctx context.Context, c client.Client, o Options) []Result {
	embedded, err := install.CRDs()
	if err != nil {
		return []Result{fail("CRDs", "reading the embedded CRDs: "+err.Error(), "")}
	}
	var out []Result
	for _, u := range embedded {
		var want apiextensionsv1.CustomResourceDefinition
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &want); err != nil {
			return []Result{fail("CRDs", err.Error(), "")}
		}
		name := "CRD " + want.Name
		// Unstructured, so any client works whether or not its scheme
		// knows apiextensions.
		liveU := &unstructured.Unstructured{}
		liveU.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
		if err := c.Get(ctx, client.ObjectKey{Name: want.Name}, liveU); err != nil {
			if apierrors.IsNotFound(err) {
				out = append(out, fail(name, "missing", installFix(o)))
			} else {
				out = append(out, fail(name, err.Error(), ""))
			}
			continue
		}
		var live apiextensionsv1.CustomResourceDefinition
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(liveU.Object, &live); err != nil {
			out = append(out, fail(name, err.Error(), ""))
			continue
		}
		if live.DeletionTimestamp != nil {
			out = append(out, fail(name, "being deleted (and with it every object of its kind)", installFix(o)))
			continue
		}
		if diff := versionsDiffer(want.Spec.Versions, live.Spec.Versions); diff != "" {
			out = append(out, fail(name, "differs from this backbone's: "+diff, installFix(o)))
			continue
		}
		out = append(out, pass(name, "present and current"))
	}
	return out
}

func versionsDiffer(want, live []apiextensionsv1.CustomResourceDefinitionVersion) string {
	liveByName := map[string]apiextensionsv1.CustomResourceDefinitionVersion{}
	for _, v := range live {
		liveByName[v.Name] = v
	}
	for _, w := range want {
		l, ok := liveByName[w.Name]
		switch {
		case !ok:
			return "version " + w.Name + " missing"
		case l.Served != w.Served || l.Storage != w.Storage:
			return "version " + w.Name + " served/storage differ"
		case !sameJSON(l.Schema, w.Schema):
			return "version " + w.Name + " schema differs"
		}
	}
	return ""
}

func sameJSON(a, b any) bool {
	var x, y any
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	_ = json.Unmarshal(ja, &x)
	_ = json.Unmarshal(jb, &y)
	return reflect.DeepEqual(x, y)
}

func checkGatewayService(ctx context.Context, c client.Client, o Options) Result {
	const check = "gateway service"
	ns, name := backbonev1alpha1.SystemNamespace, backbonev1alpha1.GatewayServiceName
	var svc corev1.Service
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &svc); err != nil {
		return fail(check, err.Error(), installFix(o))
	}
	addrs, err := link.ServiceAddresses(&svc)
	if err != nil {
		return fail(check, err.Error(), fmt.Sprintf("kubectl -n %s describe service %s (the cloud load balancer controller's events say why no address)", ns, name))
	}
	id := svc.Annotations[backbonev1alpha1.GatewayIdentityAnnotation]
	if _, err := identity.Parse(id); err != nil {
		return fail(check, fmt.Sprintf("identity annotation %s: %v", backbonev1alpha1.GatewayIdentityAnnotation, err), installFix(o))
	}
	return pass(check, fmt.Sprintf("%s at %s:%d", id, addrs[0].Host, addrs[0].Port))
}
