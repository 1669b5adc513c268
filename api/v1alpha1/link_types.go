package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// GatewayAddress is one address of a remote cluster's gateway.
type GatewayAddress struct {
	// Host is a DNS name or an IP address.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^(([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?|[0-9a-fA-F:.]+)$`
	Host string `json:"host"`
	// Port of the gateway's inbound (mTLS) listener.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
}

// ProbeSpec tunes the link probe.
type ProbeSpec struct {
	// Period between probes; each is jittered by ±10%.
	// +kubebuilder:default="3s"
	// +optional
	Period *metav1.Duration `json:"period,omitempty"`
	// Timeout of one probe.
	// +kubebuilder:default="2s"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`
	// FailureThreshold is how many consecutive failures mark the link dead.
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	FailureThreshold *int32 `json:"failureThreshold,omitempty"`
}

// LinkSpec describes how to reach a remote cluster whose exported services
// this cluster mirrors.
type LinkSpec struct {
	// TargetClusterName is the remote cluster's name; mirrors are named
	// <service>-<targetClusterName>.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=40
	// Immutable: the mirrors carry it in their names and labels; to link
	// another cluster, create another Link (this one's mirrors go with
	// its deletion).
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="targetClusterName is immutable: create a new Link for another cluster"
	TargetClusterName string `json:"targetClusterName"`

	// CredentialsSecret holds a kubeconfig (key "kubeconfig", Secret type
	// backbone.dev/remote-kubeconfig) for the remote cluster's link-reader
	// ServiceAccount. Only bearer tokens and inline CA data are accepted.
	CredentialsSecret SecretReference `json:"credentialsSecret"`

	// GatewayAddresses of the remote cluster's gateway; traffic is spread
	// over them and fails over between them.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	GatewayAddresses []GatewayAddress `json:"gatewayAddresses"`

	// GatewayIdentity is the SPIFFE ID the remote gateway must present,
	// spiffe://<trust-domain>/cluster/<name>.
	// +kubebuilder:validation:Pattern=`^spiffe://[a-z0-9.-]+/cluster/[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	GatewayIdentity string `json:"gatewayIdentity"`

	// Probe tunes the probe of the remote gateway.
	// +kubebuilder:default={}
	// +optional
	Probe ProbeSpec `json:"probe,omitempty"`

	// ExcludedLabels are label keys not copied from remote Services onto
	// their mirrors.
	// +optional
	// +listType=set
	ExcludedLabels []string `json:"excludedLabels,omitempty"`

	// ExcludedAnnotations are annotation keys not copied onto mirrors.
	// +optional
	// +listType=set
	ExcludedAnnotations []string `json:"excludedAnnotations,omitempty"`

	// CreateNamespaces lets the controller create a namespace that holds an
	// exported Service remotely but does not exist locally. Off by default:
	// the missing namespace is reported instead.
	// +optional
	CreateNamespaces bool `json:"createNamespaces,omitempty"`
}

// LinkProbeStatus is the link probe's latest view of the remote gateway.
type LinkProbeStatus struct {
	// Alive is false once FailureThreshold consecutive probes failed.
	Alive bool `json:"alive"`
	// LastProbeTime is when the latest probe finished.
	// +optional
	LastProbeTime *metav1.Time `json:"lastProbeTime,omitempty"`
	// ConsecutiveFailures counts failed probes since the last success.
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`
	// RecentProbes is how many of the latest probes (up to 100, failed or
	// not) RecentFailures counts from: the link's loss is their ratio.
	// +optional
	RecentProbes int32 `json:"recentProbes,omitempty"`
	// RecentFailures is how many of the RecentProbes failed (timed out,
	// refused, or answered wrongly). The latency percentiles count only
	// the probes that succeeded.
	// +optional
	RecentFailures int32 `json:"recentFailures,omitempty"`
	// LatencyP50 of the latest successful probes (up to 100); cleared
	// when the link dies, so a dead link shows none.
	// +optional
	LatencyP50 *metav1.Duration `json:"latencyP50,omitempty"`
	// LatencyP90 of the latest successful probes (up to 100); cleared
	// when the link dies, so a dead link shows none.
	// +optional
	LatencyP90 *metav1.Duration `json:"latencyP90,omitempty"`
	// LatencyP99 of the latest successful probes (up to 100); cleared
	// when the link dies, so a dead link shows none.
	// +optional
	LatencyP99 *metav1.Duration `json:"latencyP99,omitempty"`
}

// CertificateInfo describes one gateway identity certificate.
type CertificateInfo struct {
	// Identity is the certificate's SPIFFE ID.
	// +optional
	Identity string `json:"identity,omitempty"`
	// Issuer is the distinguished name of the certificate's issuer, the
	// trust anchor (or intermediate) that signed it.
	// +optional
	Issuer string `json:"issuer,omitempty"`
	// NotBefore is when the certificate becomes valid.
	NotBefore metav1.Time `json:"notBefore"`
	// NotAfter is when the certificate expires.
	NotAfter metav1.Time `json:"notAfter"`
}

// LinkCertificatesStatus is what the link probe last saw of the
// certificates on the mTLS path to the remote gateway. The probe makes a
// handshake of its own now and then (pooled connections outlive the
// certificates they were made with), so this describes what a new
// connection meets.
type LinkCertificatesStatus struct {
	// Local is this cluster's gateway identity, which the remote gateway
	// verifies.
	// +optional
	Local *CertificateInfo `json:"local,omitempty"`
	// Peer is the certificate the remote gateway presented in the latest
	// handshake, recorded even when it failed verification.
	// +optional
	Peer *CertificateInfo `json:"peer,omitempty"`
	// LastHandshakeTime is when the latest handshake that reached the
	// remote gateway took place.
	// +optional
	LastHandshakeTime *metav1.Time `json:"lastHandshakeTime,omitempty"`
}

// LinkStatus is the observed state of a Link.
type LinkStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready, GatewayReachable, CertificatesValid.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// MirroredServices is how many mirror Services this Link keeps.
	// +optional
	MirroredServices int32 `json:"mirroredServices,omitempty"`
	// LastSyncTime is when a complete list of the remote cluster last
	// reconciled successfully.
	// +optional
	LastSyncTime *metav1.Time `json:"lastSyncTime,omitempty"`
	// Problems found during the last sync (conflicts, names too long,
	// missing namespaces), at most 20.
	// +optional
	// +kubebuilder:validation:MaxItems=20
	// +listType=atomic
	Problems []string `json:"problems,omitempty"`
	// Probe is the link probe's latest view.
	// +optional
	Probe *LinkProbeStatus `json:"probe,omitempty"`
	// Certificates are the identities on both ends of the mTLS path, as the
	// link probe last saw them.
	// +optional
	Certificates *LinkCertificatesStatus `json:"certificates,omitempty"`
}

// Link lets this cluster mirror the exported services of a remote cluster
// and tunnel traffic to them through the remote gateway. `backbone link`,
// run against the remote cluster, prints one.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=backbone
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.spec.targetClusterName`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Mirrors",type=integer,JSONPath=`.status.mirroredServices`
// +kubebuilder:printcolumn:name="Alive",type=boolean,JSONPath=`.status.probe.alive`
// +kubebuilder:printcolumn:name="Latency",type=string,JSONPath=`.status.probe.latencyP50`
// +kubebuilder:printcolumn:name="Certificates",type=string,JSONPath=`.status.conditions[?(@.type=="CertificatesValid")].reason`
// +kubebuilder:printcolumn:name="Peer Cert Expiry",type=string,JSONPath=`.status.certificates.peer.notAfter`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Link struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   LinkSpec   `json:"spec"`
	Status LinkStatus `json:"status,omitempty"`
}

// LinkList is a list of Links.
//
// +kubebuilder:object:root=true
type LinkList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Link `json:"items"`
}

// Precedes orders two Links to one cluster: the older (then the first by
// name) is the one that mirrors and is probed; the other waits for it to
// go (a Link renamed by creating the new one first).
func (l *Link) Precedes(o *Link) bool {
	if !l.CreationTimestamp.Equal(&o.CreationTimestamp) {
		return l.CreationTimestamp.Before(&o.CreationTimestamp)
	}
	return l.Name < o.Name
}

func init() {
	register(&Link{}, &LinkList{})
}
