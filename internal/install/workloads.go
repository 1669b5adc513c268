package install

import (
	"fmt"
	"maps"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/identity"
)

// IdentityMountPath is where the gateway finds tls.crt, tls.key and ca.crt.
const IdentityMountPath = "/var/run/backbone/identity"

// MetricsServiceName selects both components' admin ports for scraping.
const MetricsServiceName = "backbone-metrics"

func namespace() *corev1.Namespace {
	ns := &corev1.Namespace{TypeMeta: typeMeta("v1", "Namespace"), ObjectMeta: meta(backbonev1alpha1.SystemNamespace, "", "system")}
	return ns
}

func controllerDeployment(v Values) *appsv1.Deployment {
	args := []string{
		"controller",
		"--cluster-name=" + v.ClusterName,
		"--trust-domain=" + v.TrustDomain,
		"--leader-elect",
		// The link probe dials peer gateways with the cluster's identity.
		"--identity-dir=" + IdentityMountPath,
		fmt.Sprintf("--admin-address=:%d", AdminPort),
		// The gateways probe the egress targets and report on their admin
		// port; the controller writes the targets' status from it.
		fmt.Sprintf("--gateway-admin-port=%d", AdminPort),
		"--ingress-mode=" + v.Controller.Ingress.Mode,
		"--gateway-ref=" + v.Controller.Ingress.GatewayRef,
		"--ingress-domain=" + v.Controller.Ingress.Domain,
		"--ingress-class=" + v.Controller.Ingress.ClassName,
		"--cluster-issuer=" + v.Controller.Ingress.ClusterIssuer,
	}
	return deployment(ControllerName, "controller", v.Controller.Replicas, podSpec(v, ControllerName, args, v.Controller.Resources, nil, identityVolume(v)))
}

// GatewayTerminationGracePeriod is the gateway pods' grace period, in
// seconds.
const GatewayTerminationGracePeriod = 45

func gatewayDeployment(v Values) *appsv1.Deployment {
	args := []string{
		"gateway",
		"--cluster-name=" + v.ClusterName,
		"--trust-domain=" + v.TrustDomain,
		"--identity-dir=" + IdentityMountPath,
		fmt.Sprintf("--inbound-address=:%d", v.Gateway.InboundPort),
		fmt.Sprintf("--admin-address=:%d", AdminPort),
	}
	ports := []corev1.ContainerPort{{Name: backbonev1alpha1.GatewayInboundPortName, ContainerPort: v.Gateway.InboundPort, Protocol: corev1.ProtocolTCP}}
	spec := podSpec(v, GatewayName, args, v.Gateway.Resources, ports, identityVolume(v))
	// The gateway's Go scheduler gets as many threads as the CPU it
	// requests, rounded up (200m: one). Without a CPU limit Go would run
	// one per core of the node, and a proxy's work — short bursts between
	// socket reads and writes — then goes to threads woken on other cores
	// at every hand-off: in the bench on 2 cores one thread moved 1.41×
	// the bytes of a bulk stream and halved the added p99 at 10,000 req/s,
	// for the same requests per CPU second (docs/benchmarks.md).
	spec.Containers[0].Env = append(spec.Containers[0].Env, corev1.EnvVar{Name: "GOMAXPROCS", ValueFrom: &corev1.EnvVarSource{
		ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "gateway", Resource: "requests.cpu", Divisor: resource.MustParse("1")},
	}})
	// SIGTERM to SIGKILL: the gateway's --shutdown-delay (5 s) and
	// --drain-timeout (30 s), and a margin.
	spec.TerminationGracePeriodSeconds = new(int64(GatewayTerminationGracePeriod))
	// Spread replicas over nodes so one node failure leaves a gateway.
	spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
			Weight: 100,
			PodAffinityTerm: corev1.PodAffinityTerm{
				LabelSelector: &metav1.LabelSelector{MatchLabels: selectorLabels("gateway")},
				TopologyKey:   corev1.LabelHostname,
			},
		}},
	}}
	return deployment(GatewayName, "gateway", v.Gateway.Replicas, spec)
}

// identityVolume is the cluster's gateway identity (tls.crt, tls.key,
// ca.crt), mounted by the gateway and by the controller's link probe. With
// a trust bundle ConfigMap, ca.crt comes from it and the rest from the
// Secret, in one projected volume (updated atomically, like a Secret's).
func identityVolume(v Values) *corev1.Volume {
	mode := new(int32(0o440))
	if tb := v.Gateway.TrustBundle; tb.ConfigMap != "" {
		return &corev1.Volume{Name: "identity", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			DefaultMode: mode,
			Sources: []corev1.VolumeProjection{
				{Secret: &corev1.SecretProjection{
					LocalObjectReference: corev1.LocalObjectReference{Name: v.Gateway.IdentitySecret},
					Items:                []corev1.KeyToPath{{Key: identity.CertFile, Path: identity.CertFile}, {Key: identity.KeyFile, Path: identity.KeyFile}},
				}},
				{ConfigMap: &corev1.ConfigMapProjection{
					LocalObjectReference: corev1.LocalObjectReference{Name: tb.ConfigMap},
					Items:                []corev1.KeyToPath{{Key: tb.Key, Path: identity.BundleFile}},
				}},
			},
		}}}
	}
	return &corev1.Volume{
		Name:         "identity",
		VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: v.Gateway.IdentitySecret, DefaultMode: mode}},
	}
}

func deployment(name, component string, replicas int32, spec corev1.PodSpec) *appsv1.Deployment {
	return &appsv1.Deployment{
		TypeMeta:   typeMeta("apps/v1", "Deployment"),
		ObjectMeta: meta(name, backbonev1alpha1.SystemNamespace, component),
		Spec: appsv1.DeploymentSpec{
			Replicas: new(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(component)},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels(component)},
				Spec:       spec,
			},
		},
	}
}

func podSpec(v Values, sa string, args []string, res Resources, ports []corev1.ContainerPort, volume *corev1.Volume) corev1.PodSpec {
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("admin")}}}
	}
	c := corev1.Container{
		Name:            componentOf(sa),
		Image:           v.Image.Repository + ":" + v.Image.Tag,
		ImagePullPolicy: corev1.PullPolicy(v.Image.PullPolicy),
		Args:            args,
		Env: []corev1.EnvVar{{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"},
		}}},
		Ports:          append(ports, corev1.ContainerPort{Name: "admin", ContainerPort: AdminPort, Protocol: corev1.ProtocolTCP}),
		LivenessProbe:  probe("/healthz"),
		ReadinessProbe: probe("/readyz"),
		// MustParse: Values.Validate parsed every quantity before rendering.
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse(res.CPURequest),
				corev1.ResourceMemory: resource.MustParse(res.MemoryRequest),
			},
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(res.MemoryLimit)},
		},
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: new(false),
			ReadOnlyRootFilesystem:   new(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
	spec := corev1.PodSpec{
		ServiceAccountName: sa,
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot:   new(true),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		Containers: []corev1.Container{c},
	}
	if volume != nil {
		spec.Volumes = []corev1.Volume{*volume}
		spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: volume.Name, MountPath: IdentityMountPath, ReadOnly: true}}
	}
	return spec
}

// gatewayPDB keeps one gateway up while others are evicted. A single
// gateway cannot be kept up through a drain — minAvailable: 1 would only
// block `kubectl drain` of its node, and cluster upgrades, forever — so
// then the budget lets it go (maxUnavailable: 1), as a platform team
// expects of a workload that chose one replica. It is rendered rather than
// left out so the install's object set does not depend on the replicas:
// `kubectl apply` does not prune, and a budget left behind from two
// replicas would keep blocking.
func gatewayPDB(v Values) *policyv1.PodDisruptionBudget {
	spec := policyv1.PodDisruptionBudgetSpec{Selector: &metav1.LabelSelector{MatchLabels: selectorLabels("gateway")}}
	if v.Gateway.Replicas == 1 {
		spec.MaxUnavailable = new(intstr.FromInt32(1))
	} else {
		spec.MinAvailable = new(intstr.FromInt32(1))
	}
	return &policyv1.PodDisruptionBudget{
		TypeMeta:   typeMeta("policy/v1", "PodDisruptionBudget"),
		ObjectMeta: meta(GatewayName, backbonev1alpha1.SystemNamespace, "gateway"),
		Spec:       spec,
	}
}

// cloudAnnotations make each cloud's load balancer a plain L4 pass-through:
// the gateway terminates mTLS itself.
var cloudAnnotations = map[string]map[string]string{
	"aws": {
		// AWS Load Balancer Controller: an NLB targeting pod IPs.
		"service.beta.kubernetes.io/aws-load-balancer-type":            "external",
		"service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
		"service.beta.kubernetes.io/aws-load-balancer-scheme":          "internet-facing",
		"service.beta.kubernetes.io/aws-load-balancer-attributes":      "load_balancing.cross_zone.enabled=true",
	},
	"azure": {
		"service.beta.kubernetes.io/azure-load-balancer-health-probe-protocol": "tcp",
	},
	"gcp": {
		// A backend-service-based external passthrough Network Load Balancer.
		"cloud.google.com/l4-rbs": "enabled",
	},
}

func gatewayService(v Values) *corev1.Service {
	id, _ := identity.New(v.TrustDomain, v.ClusterName) // validated before
	annotations := map[string]string{backbonev1alpha1.GatewayIdentityAnnotation: id.String()}
	maps.Copy(annotations, cloudAnnotations[v.Cloud])
	maps.Copy(annotations, v.Gateway.ServiceAnnotations)
	svc := &corev1.Service{
		TypeMeta:   typeMeta("v1", "Service"),
		ObjectMeta: meta(backbonev1alpha1.GatewayServiceName, backbonev1alpha1.SystemNamespace, "gateway"),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: selectorLabels("gateway"),
			Ports: []corev1.ServicePort{{
				Name: backbonev1alpha1.GatewayInboundPortName, Port: v.Gateway.InboundPort,
				TargetPort: intstr.FromString(backbonev1alpha1.GatewayInboundPortName), Protocol: corev1.ProtocolTCP,
			}},
			LoadBalancerSourceRanges: v.Gateway.LoadBalancerSourceRanges,
		},
	}
	if f := v.Gateway.IPFamilies; len(f) > 0 {
		svc.Spec.IPFamilies = f
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicySingleStack)
		if len(f) == 2 {
			svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyPreferDualStack)
		}
	}
	svc.Annotations = annotations
	return svc
}

func metricsService(Values) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   typeMeta("v1", "Service"),
		ObjectMeta: meta(MetricsServiceName, backbonev1alpha1.SystemNamespace, "metrics"),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: map[string]string{"app.kubernetes.io/part-of": "backbone"},
			Ports: []corev1.ServicePort{{
				Name: "admin", Port: AdminPort, TargetPort: intstr.FromString("admin"), Protocol: corev1.ProtocolTCP,
			}},
		},
	}
}

// serviceMonitor is unstructured: backbone does not depend on the
// prometheus-operator's Go types for one object.
func serviceMonitor(Values) *unstructured.Unstructured {
	sm := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "ServiceMonitor",
		"metadata": map[string]any{
			"name":      "backbone",
			"namespace": backbonev1alpha1.SystemNamespace,
			"labels":    toAny(labels("metrics")),
		},
		"spec": map[string]any{
			"selector":  map[string]any{"matchLabels": toAny(labels("metrics"))},
			"endpoints": []any{map[string]any{"port": "admin", "path": "/metrics", "interval": "30s"}},
		},
	}}
	return sm
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
