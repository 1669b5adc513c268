package install

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/targets"
)

// Values configure the install manifests. The JSON names are the Helm
// chart's values keys, so `backbone install --set k=v` and
// `helm install --set k=v` take the same keys.
type Values struct {
	// ClusterName is this cluster's name: mirrors elsewhere are called
	// <service>-<clusterName>, and the gateway's identity ends in it.
	ClusterName string `json:"clusterName"`
	// TrustDomain of the gateway identities, spiffe://<trustDomain>/cluster/<clusterName>.
	TrustDomain string `json:"trustDomain"`
	// CreateNamespace renders the backbone-system Namespace. Turn it off
	// when the namespace is made elsewhere (helm --create-namespace).
	CreateNamespace bool        `json:"createNamespace"`
	Image           ImageValues `json:"image"`
	// Cloud selects the gateway Service annotations: "", aws, azure or gcp.
	Cloud      string           `json:"cloud"`
	CRDs       CRDValues        `json:"crds"`
	Controller ControllerValues `json:"controller"`
	Gateway    GatewayValues    `json:"gateway"`
	Metrics    MetricsValues    `json:"metrics"`
	// AdmissionPolicy keeps the labels the gateway routes by to the
	// controller (a ValidatingAdmissionPolicy).
	AdmissionPolicy AdmissionPolicyValues `json:"admissionPolicy"`
}

// AdmissionPolicyValues configure the ValidatingAdmissionPolicy that
// refuses mirrors and egress Services written by anyone but the controller.
type AdmissionPolicyValues struct {
	// Enabled renders the policy and its binding.
	Enabled bool `json:"enabled"`
	// ExtraWriters are usernames that may write such objects as well
	// (system:serviceaccount:<namespace>:<name> for a ServiceAccount).
	ExtraWriters []string `json:"extraWriters"`
}

// ImageValues name the backbone image; controller and gateway share it.
type ImageValues struct {
	Repository string `json:"repository"`
	Tag        string `json:"tag"`
	PullPolicy string `json:"pullPolicy"`
}

// CRDValues choose which CustomResourceDefinitions are installed.
type CRDValues struct {
	// Install backbone's own CRDs (off when a platform team manages CRDs apart).
	Install bool `json:"install"`
	// ServiceExport installs the MCS API ServiceExport CRD, for clusters that
	// have no MCS implementation of their own.
	ServiceExport bool `json:"serviceExport"`
}

// Resources are a container's requests and memory limit. No CPU limit:
// throttling a data plane hurts latency more than it protects neighbours.
type Resources struct {
	CPURequest    string `json:"cpuRequest"`
	MemoryRequest string `json:"memoryRequest"`
	MemoryLimit   string `json:"memoryLimit"`
}

// ControllerValues configure `backbone controller`.
type ControllerValues struct {
	Replicas  int32     `json:"replicas"`
	Resources Resources `json:"resources"`
	// CreateNamespaces grants the controller namespace creation, needed only
	// by Links with spec.createNamespaces.
	CreateNamespaces bool `json:"createNamespaces"`
	// Ingress configures what IngressTargets become.
	Ingress IngressValues `json:"ingress"`
}

// IngressValues are the controller's ingress flags.
type IngressValues struct {
	// Mode is ingress (an Ingress per target) or httproute (a Gateway API
	// HTTPRoute on GatewayRef).
	Mode string `json:"mode"`
	// GatewayRef is namespace/name[/sectionName] of the Gateway, for httproute.
	GatewayRef string `json:"gatewayRef"`
	// Domain makes the default host <service>.<cluster>.<domain>.
	Domain string `json:"domain"`
	// ClassName is the Ingresses' ingressClassName.
	ClassName string `json:"className"`
	// ClusterIssuer is the cert-manager ClusterIssuer annotated on Ingresses
	// (empty: none); unused with httproute, where the Gateway holds TLS.
	ClusterIssuer string `json:"clusterIssuer"`
}

// TrustBundleValues name a ConfigMap key holding the PEM trust bundle.
type TrustBundleValues struct {
	ConfigMap string `json:"configMap"`
	Key       string `json:"key"`
}

// GatewayValues configure `backbone gateway` and its Service.
type GatewayValues struct {
	Replicas  int32     `json:"replicas"`
	Resources Resources `json:"resources"`
	// InboundPort is the mTLS port peers dial.
	InboundPort int32 `json:"inboundPort"`
	// IdentitySecret is the TLS Secret (tls.crt, tls.key, ca.crt) holding the
	// gateway identity, from `backbone certs` or cert-manager.
	IdentitySecret string `json:"identitySecret"`
	// TrustBundle, when its ConfigMap is set, is where ca.crt comes from
	// instead of the identity Secret: a bundle trust-manager (or anything
	// else) keeps, so the anchors can be rotated while cert-manager writes
	// the identity.
	TrustBundle TrustBundleValues `json:"trustBundle"`
	// ServiceAnnotations are added to the LoadBalancer Service, over the
	// cloud's defaults.
	ServiceAnnotations map[string]string `json:"serviceAnnotations"`
	// LoadBalancerSourceRanges restrict who may reach the gateway.
	LoadBalancerSourceRanges []string `json:"loadBalancerSourceRanges"`
	// IPFamilies are the gateway Service's IP families (IPv4, IPv6). The
	// first is the one mirrors and egress targets' Services take; two make
	// the Service dual-stack where the cluster is. Empty: the cluster's
	// default family.
	IPFamilies []corev1.IPFamily `json:"ipFamilies"`
}

// MetricsValues configure scraping.
type MetricsValues struct {
	// ServiceMonitor renders a prometheus-operator ServiceMonitor (its CRD
	// must exist in the cluster).
	ServiceMonitor bool `json:"serviceMonitor"`
}

// AdminPort serves /metrics, /healthz and /readyz in both components.
const AdminPort = 9090

// DefaultValues are the chart's values.yaml.
func DefaultValues() Values {
	return Values{
		TrustDomain:     "backbone.local",
		CreateNamespace: true,
		Image:           ImageValues{Repository: "ghcr.io/backbone-mesh/backbone", Tag: "latest", PullPolicy: "IfNotPresent"},
		CRDs:            CRDValues{Install: true},
		AdmissionPolicy: AdmissionPolicyValues{Enabled: true},
		Controller: ControllerValues{
			Replicas:  2,
			Resources: Resources{CPURequest: "50m", MemoryRequest: "128Mi", MemoryLimit: "512Mi"},
			Ingress:   IngressValues{Mode: "ingress", ClassName: "nginx", ClusterIssuer: "letsencrypt"},
		},
		Gateway: GatewayValues{
			Replicas:       2,
			Resources:      Resources{CPURequest: "200m", MemoryRequest: "128Mi", MemoryLimit: "1Gi"},
			InboundPort:    4143,
			IdentitySecret: "backbone-gateway-identity",
			TrustBundle:    TrustBundleValues{Key: "ca.crt"},
		},
	}
}

// Validate reports the first value that cannot make a working install.
func (v Values) Validate() error {
	if v.ClusterName == "" {
		return fmt.Errorf("clusterName is required (--cluster-name): mirrors and the gateway identity are named after it")
	}
	if _, err := identity.New(v.TrustDomain, v.ClusterName); err != nil {
		return err
	}
	switch v.Cloud {
	case "", "aws", "azure", "gcp":
	default:
		return fmt.Errorf("cloud %q: must be aws, azure, gcp or empty", v.Cloud)
	}
	if v.Image.Repository == "" || v.Image.Tag == "" {
		return fmt.Errorf("image.repository and image.tag are required")
	}
	if v.Controller.Replicas < 1 || v.Gateway.Replicas < 1 {
		return fmt.Errorf("controller.replicas and gateway.replicas must be at least 1")
	}
	if _, err := targets.ParseIngressMode(v.Controller.Ingress.Mode); err != nil {
		return fmt.Errorf("controller.ingress.mode: %w", err)
	}
	if v.Controller.Ingress.GatewayRef != "" {
		if _, err := targets.ParseGatewayRef(v.Controller.Ingress.GatewayRef); err != nil {
			return fmt.Errorf("controller.ingress.gatewayRef: %w", err)
		}
	} else if v.Controller.Ingress.Mode == string(targets.IngressModeHTTPRoute) {
		return fmt.Errorf("controller.ingress.mode httproute needs controller.ingress.gatewayRef (namespace/name[/sectionName])")
	}
	if v.Gateway.InboundPort < 1 || v.Gateway.InboundPort > 65535 {
		return fmt.Errorf("gateway.inboundPort %d: must be 1-65535", v.Gateway.InboundPort)
	}
	for i, w := range v.AdmissionPolicy.ExtraWriters {
		if w == "" || strings.ContainsAny(w, "'\\\n") {
			return fmt.Errorf("admissionPolicy.extraWriters[%d] %q: want a username, without quotes, backslashes or newlines", i, w)
		}
	}
	if f := v.Gateway.IPFamilies; len(f) > 2 || len(f) == 2 && f[0] == f[1] {
		return fmt.Errorf("gateway.ipFamilies %v: want one family, or two different ones", f)
	}
	for i, f := range v.Gateway.IPFamilies {
		if f != corev1.IPv4Protocol && f != corev1.IPv6Protocol {
			return fmt.Errorf("gateway.ipFamilies[%d] %q: must be IPv4 or IPv6", i, f)
		}
	}
	if v.Gateway.TrustBundle.ConfigMap != "" && v.Gateway.TrustBundle.Key == "" {
		return fmt.Errorf("gateway.trustBundle.key: required with gateway.trustBundle.configMap %q", v.Gateway.TrustBundle.ConfigMap)
	}
	if err := v.Controller.Resources.validate("controller.resources"); err != nil {
		return err
	}
	return v.Gateway.Resources.validate("gateway.resources")
}

// validate parses each quantity as the API server will, so a typo is an
// error naming its key here rather than a panic while rendering.
func (r Resources) validate(key string) error {
	for _, q := range []struct{ name, value string }{
		{"cpuRequest", r.CPURequest}, {"memoryRequest", r.MemoryRequest}, {"memoryLimit", r.MemoryLimit},
	} {
		parsed, err := resource.ParseQuantity(q.value)
		if err != nil {
			return fmt.Errorf("%s.%s %q: want a quantity such as 200m or 128Mi: %w", key, q.name, q.value, err)
		}
		if parsed.Sign() < 0 {
			return fmt.Errorf("%s.%s %q: must not be negative", key, q.name, q.value)
		}
	}
	return nil
}

// Set applies Helm-style "a.b.c=value" assignments. The value's type follows
// the default's type at that key (so image.tag=1.2 stays a string); keys
// with dots, such as annotation names, escape them as "\.". An unknown key
// is an error rather than silently ignored.
func (v *Values) Set(assignments []string) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var tree map[string]any
	if err := json.Unmarshal(raw, &tree); err != nil {
		return err
	}
	for _, a := range assignments {
		key, value, ok := strings.Cut(a, "=")
		if !ok || key == "" {
			return fmt.Errorf("--set %q: want key=value", a)
		}
		if err := setPath(tree, splitKey(key), value); err != nil {
			return fmt.Errorf("--set %q: %w", a, err)
		}
	}
	raw, err = json.Marshal(tree)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var out Values
	if err := dec.Decode(&out); err != nil {
		return fmt.Errorf("--set: %w", err)
	}
	*v = out
	return nil
}

func splitKey(key string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(key); i++ {
		switch {
		case key[i] == '\\' && i+1 < len(key) && key[i+1] == '.':
			cur.WriteByte('.')
			i++
		case key[i] == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(key[i])
		}
	}
	return append(parts, cur.String())
}

func setPath(tree map[string]any, path []string, value string) error {
	for _, p := range path[:len(path)-1] {
		next, ok := tree[p].(map[string]any)
		if !ok {
			if tree[p] != nil {
				return fmt.Errorf("%q is not a map", p)
			}
			next = map[string]any{}
			tree[p] = next
		}
		tree = next
	}
	last := path[len(path)-1]
	switch tree[last].(type) {
	case bool:
		b, err := strconv.ParseBool(value)
		if err != nil {
			return fmt.Errorf("%q wants true or false", last)
		}
		tree[last] = b
	case float64:
		n, err := strconv.ParseInt(value, 10, 32)
		if err != nil {
			return fmt.Errorf("%q wants an integer", last)
		}
		tree[last] = n
	case []any:
		// Helm's list syntax: {a,b}.
		items := strings.Split(strings.TrimSuffix(strings.TrimPrefix(value, "{"), "}"), ",")
		tree[last] = items
	case nil:
		if strings.HasPrefix(value, "{") && strings.HasSuffix(value, "}") {
			tree[last] = strings.Split(value[1:len(value)-1], ",")
		} else {
			tree[last] = value
		}
	default:
		tree[last] = value
	}
	return nil
}
