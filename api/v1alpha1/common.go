package v1alpha1

// Names that users, manifests and the other clusters rely on.
const (
	// SystemNamespace is where Links, credentials and backbone's own
	// workloads live.
	SystemNamespace = "backbone-system"

	// ExportedLabel marks a Service as exported to linked clusters.
	ExportedLabel = "backbone.dev/exported"
	// MirroredFromLabel names the cluster a mirror Service comes from.
	MirroredFromLabel = "backbone.dev/mirrored-from"
	// ManagedByLabel is the well-known label; backbone sets it to ManagedByValue
	// on everything it creates, and deletes only objects that carry it.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedByValue is backbone's value of ManagedByLabel.
	ManagedByValue = "backbone"
	// SquadLabel names the squad that declared an EgressTarget or IngressTarget.
	SquadLabel = "backbone.dev/squad"
	// AllowedClustersAnnotation restricts which linked clusters may reach an
	// exported Service through the gateway: a comma-separated list of names.
	AllowedClustersAnnotation = "backbone.dev/allowed-clusters"
	// RemoteResourceVersionAnnotation records the resourceVersion of the
	// remote Service a mirror was last synced from.
	RemoteResourceVersionAnnotation = "backbone.dev/remote-resource-version"

	// RemoteKubeconfigSecretType is the type of the Secret that holds a Link's
	// credentials, in the key KubeconfigKey.
	RemoteKubeconfigSecretType = "backbone.dev/remote-kubeconfig"
	// KubeconfigKey is the Secret key holding the remote kubeconfig.
	KubeconfigKey = "kubeconfig"

	// ConditionReady is the summary condition of every backbone object.
	ConditionReady = "Ready"
	// ConditionGatewayReachable reports the link probe's view of the remote
	// gateway.
	ConditionGatewayReachable = "GatewayReachable"
	// ConditionCertificatesValid reports, on a Link, whether the identity
	// certificates on both ends of the mTLS path to the remote gateway are
	// trusted and valid: False once either has expired or the clusters do
	// not trust each other's anchor, True with reason Expiring while one
	// expires within the controller's warning window.
	ConditionCertificatesValid = "CertificatesValid"
)

// SecretReference names a Secret in the Link's own namespace.
type SecretReference struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// The contract between the mirror controller, which writes mirrors, and the
// gateway, which serves them.
const (
	// GatewayServiceName is the Service (in SystemNamespace) of the local
	// gateway. Its ready endpoints become the endpoints of every mirror; its
	// port named GatewayInboundPortName is the tunnel endpoint peers dial;
	// its GatewayIdentityAnnotation names the gateway's SPIFFE ID.
	GatewayServiceName = "backbone-gateway"
	// GatewayInboundPortName names the gateway Service's mTLS port.
	GatewayInboundPortName = "inbound"
	// GatewayIdentityAnnotation on the gateway Service holds its SPIFFE ID.
	GatewayIdentityAnnotation = "backbone.dev/gateway-identity"

	// EndpointSliceManagedBy is backbone's value of the
	// endpointslice.kubernetes.io/managed-by label on mirror EndpointSlices.
	EndpointSliceManagedBy = "backbone.dev"

	// RemoteNameAnnotation on a mirror names the remote Service it mirrors.
	RemoteNameAnnotation = "backbone.dev/remote-name"
	// RemoteHostnameAnnotation on a per-pod mirror names the pod hostname
	// (of a headless remote Service) it stands for.
	RemoteHostnameAnnotation = "backbone.dev/remote-hostname"
)

// The mirror's EndpointSlice carries one port per mirror Service port, with
// the same name, whose number is the gateway port allocated to it. The
// gateway listens on every such port and tunnels each connection to
// "[<remote-hostname>.]<remote-name>.<namespace>.svc.cluster.local:<mirror
// Service port>" in the cluster named by MirroredFromLabel.

// HeadlessMirrorLabel marks the EndpointSlice of a headless mirror, whose
// endpoints are per-pod mirrors' ClusterIPs rather than the gateway; the
// gateway does not listen for it.
const HeadlessMirrorLabel = "backbone.dev/headless-mirror"
