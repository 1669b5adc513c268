// Package mirror keeps, in the local cluster, a mirror of every Service a
// linked cluster exports: the Service <name>-<cluster> with no selector,
// and an EndpointSlice pointing at the local gateway on a port allocated
// to each service port. The reconciler reads remote and local state; the
// pure function Calculate decides what to create, update and delete.
package mirror

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// RemoteService is one exported Service of the linked cluster.
type RemoteService struct {
	// Service is read, never modified: it is the remote cache's own object.
	Service *corev1.Service
	// Hostnames of the pods behind a headless Service (StatefulSets).
	Hostnames []string
	// NotReady are the hostnames none of whose endpoints is ready in the
	// linked cluster (a pod starting, failing its probe, or terminating;
	// the Service's publishNotReadyAddresses makes them ready there).
	NotReady map[string]bool
}

// Input is everything Calculate needs.
type Input struct {
	Cluster string
	Remote  []RemoteService
	// Local holds the local Services that exist under the names the mirrors
	// would take, and every mirror of Cluster.
	Local map[types.NamespacedName]*corev1.Service
	// LocalSlices holds the mirror EndpointSlices of Cluster by name.
	LocalSlices map[types.NamespacedName]*discoveryv1.EndpointSlice
	// Namespaces that exist locally.
	Namespaces map[string]bool
	// Gateway is the local gateway's IP family and ready addresses.
	Gateway Gateway
	// Alive is false when the link probe declared the remote gateway dead:
	// endpoints are then marked not ready, never removed.
	Alive               bool
	Ports               *Allocator
	ExcludedLabels      map[string]bool
	ExcludedAnnotations map[string]bool
	CreateNamespaces    bool
	// Verified is what the previous plan of this Link found in sync (its
	// Plan.Verified); nil compares every mirror.
	Verified Verified
}

// Replacement is a slice made anew.
type Replacement struct{ Old, New *discoveryv1.EndpointSlice }

// Verified records, for each mirror a plan compared in full and found in
// sync, the versions it compared: the remote Service's resourceVersion,
// the mirror's and its EndpointSlice's, and the Link-wide inputs (the
// cluster, exclusions, gateway addresses, liveness). When all four are
// the same again, nothing the mirror is computed from has changed and the
// plan keeps it without rebuilding it to compare: a resync over 10,000
// unchanged mirrors then costs lookups, not 20,000 objects built and
// compared. Any edit on either side moves a resourceVersion and brings the
// full comparison back.
type Verified map[types.NamespacedName]VerifiedAt

// VerifiedAt are the versions a mirror was found in sync at.
type VerifiedAt struct{ Remote, Service, Slice, Shape string }

// Plan is what to change locally.
type Plan struct {
	Namespaces     []string
	CreateServices []*corev1.Service
	UpdateServices []*corev1.Service
	DeleteServices []*corev1.Service
	CreateSlices   []*discoveryv1.EndpointSlice
	UpdateSlices   []*discoveryv1.EndpointSlice
	DeleteSlices   []*discoveryv1.EndpointSlice
	// ReplaceSlices are slices whose address type must change (the
	// gateway's family did): deleted and made anew.
	ReplaceSlices []Replacement
	// Problems are reported on the Link and as Events.
	Problems []string
	// Mirrors is how many mirror Services the Link keeps.
	Mirrors int
	// CreatesPerPodMirrors: some Service created is a per-pod mirror, whose
	// cluster IP its headless mirror's endpoints need once it exists.
	CreatesPerPodMirrors bool
	// Verified are the mirrors found (or kept) in sync, for the next plan's
	// Input.Verified.
	Verified Verified
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return len(p.Namespaces)+len(p.CreateServices)+len(p.UpdateServices)+len(p.DeleteServices)+
		len(p.CreateSlices)+len(p.UpdateSlices)+len(p.DeleteSlices)+len(p.ReplaceSlices) == 0
}

// MirrorName is the name of the mirror of service from cluster.
func MirrorName(service, cluster string) string { return service + "-" + cluster }

// owned reports whether a local Service is a mirror of cluster that
// backbone manages; nothing else is ever changed or deleted.
func owned(svc *corev1.Service, cluster string) bool {
	return svc.Labels[v1alpha1.ManagedByLabel] == v1alpha1.ManagedByValue && svc.Labels[v1alpha1.MirroredFromLabel] == cluster
}

// desired is one mirror Service with its EndpointSlice. remoteRV is the
// remote Service's resourceVersion for a mirror built from nothing else
// (empty for the per-pod and headless mirrors of a Service with pod
// hostnames, whose endpoints come from elsewhere too); kept marks a
// mirror verified unchanged, not rebuilt.
type desired struct {
	svc      *corev1.Service
	slice    *discoveryv1.EndpointSlice
	remoteRV string
	kept     bool
}

// shapeOf is the Link-wide part of every mirror's inputs, as a string.
func shapeOf(in Input) string {
	var b strings.Builder
	b.WriteString(in.Cluster)
	for _, m := range []map[string]bool{in.ExcludedLabels, in.ExcludedAnnotations} {
		b.WriteByte('|')
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if m[k] {
				b.WriteString(k)
				b.WriteByte(',')
			}
		}
	}
	b.WriteByte('|')
	b.WriteString(string(in.Gateway.Family))
	b.WriteByte('|')
	b.WriteString(strings.Join(in.Gateway.Addresses, ","))
	b.WriteByte('|')
	b.WriteString(strings.Join(in.Gateway.other, ","))
	if in.Alive {
		b.WriteString("|alive")
	}
	return b.String()
}

// Calculate computes the plan. It is pure: same input, same plan.
func Calculate(in Input) *Plan {
	// Sized for one mirror per remote Service: grown from empty, the two
	// maps of a pass over 10,000 would leave as much again behind.
	p := &Plan{Verified: make(Verified, len(in.Remote))}
	shape := shapeOf(in)
	want := make(map[types.NamespacedName]desired, len(in.Remote))
	newNamespaces := map[string]bool{}
	// In a stable order, sorting pointers: the Services themselves are
	// large and the input is not ours to reorder.
	remote := make([]*RemoteService, len(in.Remote))
	for i := range in.Remote {
		remote[i] = &in.Remote[i]
	}
	slices.SortFunc(remote, func(a, b *RemoteService) int {
		return cmp.Or(cmp.Compare(a.Service.Namespace, b.Service.Namespace), cmp.Compare(a.Service.Name, b.Service.Name))
	})
	for _, r := range remote {
		rs := r.Service
		if rs.Spec.Type == corev1.ServiceTypeExternalName {
			// No endpoints to tunnel to: its clients resolve the name themselves.
			p.Problems = append(p.Problems, fmt.Sprintf("%s/%s: an ExternalName Service is not mirrored (it has no endpoints behind the remote gateway); point the local clients at %s directly", rs.Namespace, rs.Name, rs.Spec.ExternalName))
			continue
		}
		if dropped := nonTCPPorts(rs); len(dropped) > 0 {
			// The gateways carry TCP streams: a UDP or SCTP port mirrored
			// would take the packets and deliver none.
			if len(dropped) == len(rs.Spec.Ports) {
				p.Problems = append(p.Problems, fmt.Sprintf("%s/%s: not mirrored: no TCP port (%s), and the gateways carry TCP only", rs.Namespace, rs.Name, strings.Join(dropped, ", ")))
				continue
			}
			p.Problems = append(p.Problems, fmt.Sprintf("%s/%s: port %s not mirrored: the gateways carry TCP only", rs.Namespace, rs.Name, strings.Join(dropped, ", ")))
			tcp := *rs
			tcp.Spec.Ports = slices.DeleteFunc(slices.Clone(rs.Spec.Ports), func(sp corev1.ServicePort) bool { return protocolOf(sp) != corev1.ProtocolTCP })
			withTCP := *r
			withTCP.Service, rs, r = &tcp, &tcp, &withTCP
		}
		if !in.Namespaces[rs.Namespace] && !newNamespaces[rs.Namespace] {
			if !in.CreateNamespaces {
				p.Problems = append(p.Problems, fmt.Sprintf("%s/%s: namespace %s does not exist here (set spec.createNamespaces to create it)", rs.Namespace, rs.Name, rs.Namespace))
				continue
			}
			newNamespaces[rs.Namespace] = true
			p.Namespaces = append(p.Namespaces, rs.Namespace)
		}
		headless := rs.Spec.ClusterIP == corev1.ClusterIPNone
		if headless && len(r.Hostnames) > 0 {
			mirrorHeadless(p, in, r, want)
			continue
		}
		// A headless Service without pod hostnames is mirrored like any
		// other (one mirror, one slice on the gateway), so its mirror is
		// kept on the same record; one with hostnames went above.
		if in.Verified != nil {
			key := types.NamespacedName{Namespace: rs.Namespace, Name: MirrorName(rs.Name, in.Cluster)}
			cur, sl := in.Local[key], in.LocalSlices[key]
			// Its gateway ports must still be its own: a duplicate moves no
			// resourceVersion of this mirror, and only the full comparison
			// gives the loser a new port.
			if cur != nil && sl != nil && holdsPorts(in.Ports, sl) {
				at := VerifiedAt{Remote: rs.ResourceVersion, Service: cur.ResourceVersion, Slice: sl.ResourceVersion, Shape: shape}
				if v, ok := in.Verified[key]; ok && v == at {
					want[key] = desired{kept: true}
					p.Verified[key] = at
					continue
				}
			}
		}
		addMirror(p, in, rs, "", headless, true, want)
	}

	// Creates and updates.
	for _, key := range sortedKeys(want) {
		d := want[key]
		if d.kept {
			continue
		}
		cur, exists := in.Local[key]
		inSync := exists && d.remoteRV != "" && cur.ResourceVersion != ""
		switch {
		case !exists:
			p.CreateServices = append(p.CreateServices, d.svc)
		case isHeadless(cur) != isHeadless(d.svc) || in.Gateway.Misfits(cur):
			// clusterIP and the first IP family are immutable: replace
			// the mirror.
			p.DeleteServices = append(p.DeleteServices, cur)
			p.CreateServices = append(p.CreateServices, d.svc)
		default:
			if up := updatedService(cur, d.svc); up != nil {
				p.UpdateServices = append(p.UpdateServices, up)
				inSync = false
			}
		}
		if d.slice == nil {
			continue
		}
		if sl, ok := in.LocalSlices[key]; ok {
			if sl.AddressType != d.slice.AddressType {
				// The address type is immutable: the slice is made anew.
				p.ReplaceSlices = append(p.ReplaceSlices, Replacement{Old: sl, New: d.slice})
			} else if up := updatedSlice(sl, d.slice); up != nil {
				p.UpdateSlices = append(p.UpdateSlices, up)
			} else if inSync && sl.ResourceVersion != "" && isHeadless(cur) == isHeadless(d.svc) {
				p.Verified[key] = VerifiedAt{Remote: d.remoteRV, Service: cur.ResourceVersion, Slice: sl.ResourceVersion, Shape: shape}
			}
		} else {
			p.CreateSlices = append(p.CreateSlices, d.slice)
		}
	}
	p.Mirrors = len(want)

	// Deletes: mirrors of this cluster no longer wanted.
	for _, key := range sortedKeys(in.Local) {
		svc := in.Local[key]
		if _, ok := want[key]; ok || !owned(svc, in.Cluster) {
			continue
		}
		p.DeleteServices = append(p.DeleteServices, svc)
		for _, port := range svc.Spec.Ports {
			in.Ports.Release(PortKey(svc.Namespace, svc.Name, port.Name))
		}
	}
	for _, key := range sortedKeys(in.LocalSlices) {
		if _, ok := want[key]; !ok {
			p.DeleteSlices = append(p.DeleteSlices, in.LocalSlices[key])
		}
	}
	switch {
	case len(want) == 0:
	case in.Gateway.Family == "":
		// Mirrors keep their family and slices; new ones take the
		// cluster's default. The Link must not say Synced.
		p.Problems = append([]string{fmt.Sprintf("the local gateway Service %s/%s does not exist: mirrors keep their IP family, new ones take the cluster's default",
			v1alpha1.SystemNamespace, v1alpha1.GatewayServiceName)}, p.Problems...)
	case len(in.Gateway.Addresses) == 0:
		// Every mirror's slice is empty: the Link must not say Synced.
		p.Problems = append([]string{fmt.Sprintf("the local gateway (Service %s/%s) has no ready %s address: the mirrors have no endpoints",
			v1alpha1.SystemNamespace, v1alpha1.GatewayServiceName, in.Gateway.Family)}, p.Problems...)
	}
	if len(p.Problems) > 20 {
		n := len(p.Problems)
		p.Problems = append(p.Problems[:19], fmt.Sprintf("... and %d more", n-19))
	}
	for _, c := range p.CreateServices {
		if c.Annotations[v1alpha1.RemoteHostnameAnnotation] != "" {
			p.CreatesPerPodMirrors = true
			break
		}
	}
	return p
}

// holdsPorts reports whether every gateway port of a mirror's slice is
// that mirror's in the allocator.
func holdsPorts(a *Allocator, sl *discoveryv1.EndpointSlice) bool {
	for _, p := range sl.Ports {
		if p.Name == nil || p.Port == nil || !a.Holds(PortKey(sl.Namespace, sl.Name, *p.Name), *p.Port) {
			return false
		}
	}
	return true
}

func isHeadless(s *corev1.Service) bool { return s.Spec.ClusterIP == corev1.ClusterIPNone }

// nonTCPPorts names a Service's ports that are not TCP ("53/UDP").
func nonTCPPorts(s *corev1.Service) []string {
	var out []string
	for _, sp := range s.Spec.Ports {
		if pr := protocolOf(sp); pr != corev1.ProtocolTCP {
			name := sp.Name
			if name == "" {
				name = fmt.Sprint(sp.Port)
			}
			out = append(out, fmt.Sprintf("%s/%s", name, pr))
		}
	}
	return out
}

// addMirror adds the mirror of rs (or of one pod hostname of rs) whose
// endpoints are the gateway on allocated ports. It returns the mirror's key
// or false when it cannot exist.
func addMirror(p *Plan, in Input, rs *corev1.Service, hostname string, headless, ready bool, want map[types.NamespacedName]desired) (types.NamespacedName, bool) {
	name := MirrorName(rs.Name, in.Cluster)
	if hostname != "" {
		name = hostname + "-" + name
	}
	key := types.NamespacedName{Namespace: rs.Namespace, Name: name}
	if len(name) > 63 {
		p.Problems = append(p.Problems, fmt.Sprintf("%s/%s: mirror name %s is longer than 63 characters", rs.Namespace, rs.Name, name))
		return key, false
	}
	if cur, ok := in.Local[key]; ok && !owned(cur, in.Cluster) {
		p.Problems = append(p.Problems, fmt.Sprintf("%s/%s: a Service %s not managed by backbone already exists; it is left alone", rs.Namespace, rs.Name, key))
		return key, false
	}
	svc := mirrorService(in, rs, name, hostname, headless)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: rs.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: name,
				discoveryv1.LabelManagedBy:   v1alpha1.EndpointSliceManagedBy,
				v1alpha1.MirroredFromLabel:   in.Cluster,
			},
			// Which remote Service the slice serves, when its Service is gone.
			Annotations: map[string]string{v1alpha1.RemoteNameAnnotation: rs.Name},
		},
	}
	var gatewayAddrs []string
	slice.AddressType, gatewayAddrs = in.Gateway.SliceFor(in.LocalSlices[key])
	for _, addr := range gatewayAddrs {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{addr},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(in.Alive && ready), Serving: ptr.To(in.Alive && ready), Terminating: ptr.To(false)},
		})
	}
	for _, sp := range svc.Spec.Ports {
		port, err := in.Ports.Get(PortKey(rs.Namespace, name, sp.Name))
		if err != nil {
			p.Problems = append(p.Problems, fmt.Sprintf("%s/%s: %v", rs.Namespace, rs.Name, err))
			return key, false
		}
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{
			Name: ptr.To(sp.Name), Port: ptr.To(port), Protocol: ptr.To(sp.Protocol), AppProtocol: sp.AppProtocol,
		})
	}
	d := desired{svc: svc, slice: slice}
	if hostname == "" {
		d.remoteRV = rs.ResourceVersion
	}
	want[key] = d
	return key, true
}

// mirrorHeadless mirrors a headless Service whose pods have hostnames: a
// ClusterIP mirror per pod hostname (each on its own gateway ports), and a
// headless mirror whose endpoints are those ClusterIPs with the hostnames,
// so <pod>.<svc>-<cluster>.<ns>.svc resolves as it does in the remote
// cluster. The per-pod ClusterIPs are known once the per-pod mirrors
// exist, so the headless mirror's endpoints fill in on the next pass.
func mirrorHeadless(p *Plan, in Input, r *RemoteService, want map[types.NamespacedName]desired) {
	rs := r.Service
	name := MirrorName(rs.Name, in.Cluster)
	key := types.NamespacedName{Namespace: rs.Namespace, Name: name}
	if len(name) > 63 {
		p.Problems = append(p.Problems, fmt.Sprintf("%s/%s: mirror name %s is longer than 63 characters", rs.Namespace, rs.Name, name))
		return
	}
	if cur, ok := in.Local[key]; ok && !owned(cur, in.Cluster) {
		p.Problems = append(p.Problems, fmt.Sprintf("%s/%s: a Service %s not managed by backbone already exists; it is left alone", rs.Namespace, rs.Name, key))
		return
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: rs.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: name,
				discoveryv1.LabelManagedBy:   v1alpha1.EndpointSliceManagedBy,
				v1alpha1.MirroredFromLabel:   in.Cluster,
				v1alpha1.HeadlessMirrorLabel: "true",
			},
			Annotations: map[string]string{v1alpha1.RemoteNameAnnotation: rs.Name},
		},
	}
	// The per-pod mirrors' cluster IPs, of the gateway's family.
	slice.AddressType, _ = in.Gateway.SliceFor(in.LocalSlices[key])
	for _, sp := range rs.Spec.Ports {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr.To(sp.Name), Port: ptr.To(sp.Port), Protocol: ptr.To(protocolOf(sp)), AppProtocol: sp.AppProtocol})
	}
	hostnames := slices.Clone(r.Hostnames)
	slices.Sort(hostnames)
	for _, h := range slices.Compact(hostnames) {
		// A pod not ready there is not ready here: its per-pod mirror
		// and its entry in the headless mirror (what peer discovery
		// reads) say so, as the linked cluster's own DNS does.
		ready := !r.NotReady[h]
		podKey, ok := addMirror(p, in, rs, h, false, ready, want)
		if !ok {
			continue
		}
		// A per-pod mirror being made anew in another family has no
		// cluster IP of the slice's type yet.
		if cur, exists := in.Local[podKey]; exists && ofType(cur.Spec.ClusterIP, slice.AddressType) {
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{cur.Spec.ClusterIP},
				Hostname:   ptr.To(h),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(in.Alive && ready), Serving: ptr.To(in.Alive && ready), Terminating: ptr.To(false)},
			})
		}
	}
	want[key] = desired{svc: mirrorService(in, rs, name, "", true), slice: slice}
}

// ofType says whether addr is an IP address of the slice address type t.
func ofType(addr string, t discoveryv1.AddressType) bool {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return false // "", None
	}
	return ip.Is4() == (t == discoveryv1.AddressTypeIPv4)
}

func protocolOf(sp corev1.ServicePort) corev1.Protocol {
	if sp.Protocol == "" {
		return corev1.ProtocolTCP
	}
	return sp.Protocol
}

// mirrorService builds the mirror Service of rs.
func mirrorService(in Input, rs *corev1.Service, name, hostname string, headless bool) *corev1.Service {
	labels := map[string]string{}
	for k, v := range rs.Labels {
		if !in.ExcludedLabels[k] && k != v1alpha1.ExportedLabel {
			labels[k] = v
		}
	}
	labels[v1alpha1.MirroredFromLabel] = in.Cluster
	labels[v1alpha1.ManagedByLabel] = v1alpha1.ManagedByValue
	annotations := map[string]string{}
	for k, v := range rs.Annotations {
		if !in.ExcludedAnnotations[k] && k != corev1.LastAppliedConfigAnnotation && !strings.HasPrefix(k, "backbone.dev/") {
			annotations[k] = v
		}
	}
	annotations[v1alpha1.RemoteNameAnnotation] = rs.Name
	annotations[v1alpha1.RemoteResourceVersionAnnotation] = rs.ResourceVersion
	if hostname != "" {
		annotations[v1alpha1.RemoteHostnameAnnotation] = hostname
	}
	if v, ok := rs.Annotations[v1alpha1.AllowedClustersAnnotation]; ok {
		annotations[v1alpha1.AllowedClustersAnnotation] = v
	}
	// The gateway's family whatever the cluster's first one: the mirror's
	// slice holds the gateway's addresses, and kube-proxy sends a cluster
	// IP only to endpoints of its own family.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: rs.Namespace, Labels: labels, Annotations: annotations},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP},
	}
	svc.Spec.IPFamilies, svc.Spec.IPFamilyPolicy = in.Gateway.ServiceFamilies()
	if headless {
		svc.Spec.ClusterIP = corev1.ClusterIPNone
	}
	for _, sp := range rs.Spec.Ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name: sp.Name, Protocol: protocolOf(sp), AppProtocol: sp.AppProtocol, Port: sp.Port,
		})
	}
	return svc
}

// updatedService returns cur with the desired labels, annotations and
// ports, or nil when nothing differs. Fields the API server owns
// (clusterIP, targetPort defaults) are kept.
func updatedService(cur, want *corev1.Service) *corev1.Service {
	ports := make([]corev1.ServicePort, len(want.Spec.Ports))
	for i, wp := range want.Spec.Ports {
		ports[i] = wp
		for _, cp := range cur.Spec.Ports {
			if cp.Name == wp.Name && cp.Port == wp.Port {
				ports[i].TargetPort = cp.TargetPort
			}
		}
		if ports[i].TargetPort.IntVal == 0 && ports[i].TargetPort.StrVal == "" {
			ports[i].TargetPort.IntVal = wp.Port
		}
	}
	if maps.Equal(cur.Labels, want.Labels) && maps.Equal(cur.Annotations, want.Annotations) && equality.Semantic.DeepEqual(cur.Spec.Ports, ports) {
		return nil
	}
	up := cur.DeepCopy()
	up.Labels, up.Annotations, up.Spec.Ports = want.Labels, want.Annotations, ports
	return up
}

func updatedSlice(cur, want *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	if maps.Equal(cur.Labels, want.Labels) && equality.Semantic.DeepEqual(cur.Endpoints, want.Endpoints) &&
		equality.Semantic.DeepEqual(cur.Ports, want.Ports) && cur.AddressType == want.AddressType {
		return nil
	}
	up := cur.DeepCopy()
	up.Labels, up.Endpoints, up.Ports, up.AddressType = want.Labels, want.Endpoints, want.Ports, want.AddressType
	return up
}

func sortedKeys[V any](m map[types.NamespacedName]V) []types.NamespacedName {
	keys := make([]types.NamespacedName, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	// By namespace, then name: an order without building a string per
	// comparison (at 10,000 mirrors a pass sorts this three times).
	slices.SortFunc(keys, func(a, b types.NamespacedName) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return keys
}
