package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EgressProtocol is how the gateway talks to an egress target.
// +kubebuilder:validation:Enum=https;tls;tcp
type EgressProtocol string

const (
	// EgressProtocolHTTPS: the gateway originates TLS and sets SNI and the
	// HTTP Host header to the target's dnsName (App Service routes by Host).
	EgressProtocolHTTPS EgressProtocol = "https"
	// EgressProtocolTLS: the gateway originates TLS with SNI = dnsName and
	// passes the byte stream through.
	EgressProtocolTLS EgressProtocol = "tls"
	// EgressProtocolTCP: the gateway forwards plain TCP.
	EgressProtocolTCP EgressProtocol = "tcp"
)

// EgressTargetSpec is an external resource (outside any cluster) that this
// cluster's gateway reaches on behalf of the mesh. The Service named
// hostName, backed by the gateway, is exported so linked clusters see it as
// <hostName>-<environment>.
type EgressTargetSpec struct {
	// HostName is the name of the Service that stands for the target.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	HostName string `json:"hostName"`
	// DNSName of the external resource, e.g. resource-a.azurewebsites.net.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	DNSName string `json:"dnsName"`
	// Environment is the cluster whose gateway originates the traffic.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=40
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Environment string `json:"environment"`
	// Squad that owns the target.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Squad string `json:"squad"`
	// Port of the external resource.
	// +kubebuilder:default=443
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`
	// Protocol the gateway speaks to the target.
	// +kubebuilder:default=https
	// +optional
	Protocol EgressProtocol `json:"protocol,omitempty"`
	// CABundle (PEM) verifies the target's certificate instead of the
	// system roots.
	// +optional
	CABundle string `json:"caBundle,omitempty"`
	// ProbePath is requested (HEAD) by the egress probe.
	// +kubebuilder:default="/"
	// +kubebuilder:validation:Pattern=`^/`
	// +optional
	ProbePath string `json:"probePath,omitempty"`
}

// EgressTargetStatus is the observed state of an EgressTarget.
type EgressTargetStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Alive is the egress probe's latest verdict.
	// +optional
	Alive *bool `json:"alive,omitempty"`
	// LastProbeTime is when the latest probe finished.
	// +optional
	LastProbeTime *metav1.Time `json:"lastProbeTime,omitempty"`
}

// EgressTarget makes an external resource reachable from every linked
// cluster through this cluster's gateway.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=backbone
// +kubebuilder:printcolumn:name="Host",type=string,JSONPath=`.spec.hostName`
// +kubebuilder:printcolumn:name="DNS Name",type=string,JSONPath=`.spec.dnsName`
// +kubebuilder:printcolumn:name="Squad",type=string,JSONPath=`.spec.squad`
// +kubebuilder:printcolumn:name="Alive",type=boolean,JSONPath=`.status.alive`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type EgressTarget struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   EgressTargetSpec   `json:"spec"`
	Status EgressTargetStatus `json:"status,omitempty"`
}

// EgressTargetList is a list of EgressTargets.
//
// +kubebuilder:object:root=true
type EgressTargetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []EgressTarget `json:"items"`
}

func init() {
	register(&EgressTarget{}, &EgressTargetList{})
}
