// Package install builds the manifests that run backbone in a cluster —
// CRDs, the backbone-system namespace, least-privilege RBAC, the controller
// and gateway Deployments, the gateway's LoadBalancer Service and metrics —
// as objects, deterministically, for `backbone install`, the Helm chart's
// comparison test and `backbone check`.
package install

import (
	"bytes"
	"fmt"
	"io/fs"
	"sort"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	mcscrd "sigs.k8s.io/mcs-api/config/crd"
	"sigs.k8s.io/yaml"

	"github.com/backbone-mesh/backbone/config/crd"
)

// CRDs returns backbone's embedded CustomResourceDefinitions, by name.
func CRDs() ([]*unstructured.Unstructured, error) {
	files, err := fs.Glob(crd.Bases, "bases/*.yaml")
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []*unstructured.Unstructured
	for _, f := range files {
		raw, err := fs.ReadFile(crd.Bases, f)
		if err != nil {
			return nil, err
		}
		u, err := decode(raw)
		if err != nil {
			return nil, fmt.Errorf("embedded %s: %w", f, err)
		}
		out = append(out, u)
	}
	return out, nil
}

// ServiceExportCRD returns the MCS API's ServiceExport CRD.
func ServiceExportCRD() (*unstructured.Unstructured, error) {
	return decode(mcscrd.ServiceExportCRD)
}

func decode(raw []byte) (*unstructured.Unstructured, error) {
	obj := map[string]any{}
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	return &unstructured.Unstructured{Object: obj}, nil
}

// Objects returns every object of an install, in apply order: CRDs first
// (the API server must know them before anything uses them), then the
// namespace, identities and RBAC, then workloads.
func Objects(v Values) ([]*unstructured.Unstructured, error) {
	if err := v.Validate(); err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	if v.CRDs.Install {
		crds, err := CRDs()
		if err != nil {
			return nil, err
		}
		out = append(out, crds...)
	}
	if v.CRDs.ServiceExport {
		se, err := ServiceExportCRD()
		if err != nil {
			return nil, err
		}
		out = append(out, se)
	}
	var typed []runtime.Object
	if v.CreateNamespace {
		typed = append(typed, namespace())
	}
	for _, sa := range serviceAccounts(v) {
		typed = append(typed, sa)
	}
	for _, r := range clusterRoles(v) {
		typed = append(typed, r)
	}
	for _, b := range clusterRoleBindings(v) {
		typed = append(typed, b)
	}
	role, binding := controllerRole(v)
	typed = append(typed, role, binding)
	if v.AdmissionPolicy.Enabled {
		policy, binding := admissionPolicy(v)
		typed = append(typed, policy, binding)
	}
	typed = append(typed,
		gatewayService(v), metricsService(v),
		controllerDeployment(v), gatewayDeployment(v), gatewayPDB(v))
	for _, o := range typed {
		u, err := ToUnstructured(o)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	if v.Metrics.ServiceMonitor {
		out = append(out, serviceMonitor(v))
	}
	return out, nil
}

// ToUnstructured drops what the API server fills in (creationTimestamp:
// null, empty status) so the output is what a person would write.
func ToUnstructured(o runtime.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	unstructured.RemoveNestedField(m, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(m, "spec", "template", "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(m, "status")
	// Empty structs a person would not write (Deployment strategy,
	// Namespace spec).
	for _, path := range [][]string{{"spec", "strategy"}, {"spec"}} {
		if v, ok, _ := unstructured.NestedMap(m, path...); ok && len(v) == 0 {
			unstructured.RemoveNestedField(m, path...)
		}
	}
	return u, nil
}

// Render prints the objects as one YAML stream. sigs.k8s.io/yaml sorts map
// keys, so the bytes depend only on the values.
func Render(v Values) ([]byte, error) {
	objs, err := Objects(v)
	if err != nil {
		return nil, err
	}
	return MarshalYAML(objs)
}

// MarshalYAML writes objects as a "---"-separated YAML stream.
func MarshalYAML(objs []*unstructured.Unstructured) ([]byte, error) {
	var buf bytes.Buffer
	for _, o := range objs {
		raw, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, err
		}
		buf.WriteString("---\n")
		buf.Write(raw)
	}
	return buf.Bytes(), nil
}

// Access is the part of Objects that grants access — the namespace,
// ServiceAccounts and RBAC — without workloads: what a cluster whose
// controller and gateway run elsewhere (the sandbox, tests) needs.
func Access(v Values) ([]*unstructured.Unstructured, error) {
	all, err := Objects(v)
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, o := range all {
		switch o.GetKind() {
		case "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			out = append(out, o)
		}
	}
	return out, nil
}
