package mirror

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

func remoteSvc(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "7",
			Labels:      map[string]string{v1alpha1.ExportedLabel: "true", "app": name, "team": "payments"},
			Annotations: map[string]string{"note": "hi", corev1.LastAppliedConfigAnnotation: "{}"}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.9", Ports: ports},
	}
}

func httpPort(n int32) corev1.ServicePort { return corev1.ServicePort{Name: "http", Port: n} }

// state applies a plan to the local state, as the API server would.
type state struct {
	local  map[types.NamespacedName]*corev1.Service
	slices map[types.NamespacedName]*discoveryv1.EndpointSlice
	ports  map[string]int32
	ns     map[string]bool
	rv     int // the last resourceVersion handed out
}

func newState() *state {
	return &state{local: map[types.NamespacedName]*corev1.Service{}, slices: map[types.NamespacedName]*discoveryv1.EndpointSlice{}, ports: map[string]int32{}, ns: map[string]bool{"shop": true, "data": true}}
}

// copyInputs deep-copies what Calculate is given to read.
func copyInputs(remote []RemoteService, s *state) ([]*corev1.Service, map[types.NamespacedName]*corev1.Service, map[types.NamespacedName]*discoveryv1.EndpointSlice) {
	var r []*corev1.Service
	for _, rs := range remote {
		r = append(r, rs.Service.DeepCopy())
	}
	l := map[types.NamespacedName]*corev1.Service{}
	for k, v := range s.local {
		l[k] = v.DeepCopy()
	}
	sl := map[types.NamespacedName]*discoveryv1.EndpointSlice{}
	for k, v := range s.slices {
		sl[k] = v.DeepCopy()
	}
	return r, l, sl
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

func (s *state) apply(p *Plan) {
	for _, ns := range p.Namespaces {
		s.ns[ns] = true
	}
	for _, svc := range p.DeleteServices {
		delete(s.local, key(svc.Namespace, svc.Name))
	}
	for _, sl := range p.DeleteSlices {
		delete(s.slices, key(sl.Namespace, sl.Name))
	}
	for _, svc := range append(p.CreateServices, p.UpdateServices...) {
		c := svc.DeepCopy()
		if c.Spec.ClusterIP == "" {
			c.Spec.ClusterIP = "10.96.0." + string(rune('1'+len(s.local)%9))
		}
		for i := range c.Spec.Ports {
			if c.Spec.Ports[i].TargetPort.IntVal == 0 && c.Spec.Ports[i].TargetPort.StrVal == "" {
				c.Spec.Ports[i].TargetPort.IntVal = c.Spec.Ports[i].Port
			}
		}
		s.rv++
		c.ResourceVersion = fmt.Sprint(s.rv)
		s.local[key(c.Namespace, c.Name)] = c
	}
	news := append(p.CreateSlices, p.UpdateSlices...)
	for _, rp := range p.ReplaceSlices {
		news = append(news, rp.New)
	}
	for _, sl := range news {
		c := sl.DeepCopy()
		s.rv++
		c.ResourceVersion = fmt.Sprint(s.rv)
		s.slices[key(sl.Namespace, sl.Name)] = c
		for _, port := range sl.Ports {
			s.ports[PortKey(sl.Namespace, sl.Name, *port.Name)] = *port.Port
		}
	}
}

func (s *state) input(remote []RemoteService, mutate func(*Input)) Input {
	in := Input{
		Cluster: "east", Remote: remote, Local: s.local, LocalSlices: s.slices,
		Namespaces: s.ns, Gateway: Gateway{Family: corev1.IPv4Protocol, Addresses: []string{"10.213.0.2"}}, Alive: true,
		Ports: NewAllocator(PortRange{20000, 20010}, s.ports),
	}
	if mutate != nil {
		mutate(&in)
	}
	return in
}

func TestCalculate(t *testing.T) {
	tests := map[string]struct {
		before []RemoteService // synced first, then
		// beforeMutate adjusts the input of the passes of before.
		beforeMutate func(*Input)
		remote       []RemoteService
		local        []*corev1.Service // extra local Services
		mutate       func(*Input)
		check        func(t *testing.T, p *Plan, s *state)
		wantEmpty    bool
	}{
		"a new export gets a mirror Service and EndpointSlice on an allocated gateway port": {
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			check: func(t *testing.T, p *Plan, s *state) {
				svc := s.local[key("shop", "cart-east")]
				if svc == nil || svc.Labels[v1alpha1.MirroredFromLabel] != "east" || svc.Labels[v1alpha1.ManagedByLabel] != "backbone" {
					t.Fatalf("mirror: %+v", svc)
				}
				if _, ok := svc.Labels[v1alpha1.ExportedLabel]; ok {
					t.Error("the mirror re-exports itself")
				}
				if svc.Annotations[v1alpha1.RemoteNameAnnotation] != "cart" || svc.Annotations[v1alpha1.RemoteResourceVersionAnnotation] != "7" {
					t.Errorf("annotations: %v", svc.Annotations)
				}
				if _, ok := svc.Annotations[corev1.LastAppliedConfigAnnotation]; ok {
					t.Error("kubectl's last-applied annotation was copied")
				}
				sl := s.slices[key("shop", "cart-east")]
				if sl == nil || *sl.Ports[0].Port != 20000 || sl.Endpoints[0].Addresses[0] != "10.213.0.2" || !*sl.Endpoints[0].Conditions.Ready {
					t.Fatalf("slice: %+v", sl)
				}
			},
		},
		"an unchanged remote gives an empty plan": {
			before:    []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			remote:    []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			wantEmpty: true,
		},
		"a port change updates the mirror and keeps the allocated port": {
			before: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(9090))}},
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.UpdateServices) != 1 || s.local[key("shop", "cart-east")].Spec.Ports[0].Port != 9090 {
					t.Fatalf("plan %+v", p)
				}
				if got := *s.slices[key("shop", "cart-east")].Ports[0].Port; got != 20000 {
					t.Errorf("gateway port moved to %d", got)
				}
			},
		},
		"a second port gets the next free gateway port": {
			before: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080), corev1.ServicePort{Name: "grpc", Port: 9000, AppProtocol: ptrTo("grpc")})}},
			check: func(t *testing.T, p *Plan, s *state) {
				sl := s.slices[key("shop", "cart-east")]
				if len(sl.Ports) != 2 || *sl.Ports[1].Port != 20001 || *sl.Ports[1].AppProtocol != "grpc" {
					t.Fatalf("ports %+v", sl.Ports)
				}
			},
		},
		"excluded labels and annotations are not copied": {
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			mutate: func(in *Input) {
				in.ExcludedLabels = map[string]bool{"team": true}
				in.ExcludedAnnotations = map[string]bool{"note": true}
			},
			check: func(t *testing.T, p *Plan, s *state) {
				svc := s.local[key("shop", "cart-east")]
				if _, ok := svc.Labels["team"]; ok {
					t.Error("excluded label copied")
				}
				if _, ok := svc.Annotations["note"]; ok {
					t.Error("excluded annotation copied")
				}
				if svc.Labels["app"] != "cart" {
					t.Error("other labels must be copied")
				}
			},
		},
		"an unexported service loses its mirror and frees its port": {
			before: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			remote: nil,
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.DeleteServices) != 1 || len(p.DeleteSlices) != 1 || len(s.local) != 0 {
					t.Fatalf("plan %+v", p)
				}
			},
		},
		"a local Service backbone does not own is never touched": {
			wantEmpty: true,
			remote:    []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			local:     []*corev1.Service{{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-east"}}},
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.CreateServices)+len(p.UpdateServices)+len(p.DeleteServices) != 0 {
					t.Fatalf("the user's Service was changed: %+v", p)
				}
				if len(p.Problems) != 1 || !strings.Contains(p.Problems[0], "not managed by backbone") {
					t.Errorf("problems %v", p.Problems)
				}
			},
		},
		"a mirror of another cluster is not deleted": {
			remote: nil,
			local: []*corev1.Service{{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-west",
				Labels: map[string]string{v1alpha1.ManagedByLabel: "backbone", v1alpha1.MirroredFromLabel: "west"}}}},
			wantEmpty: true,
		},
		"a mirror name longer than 63 characters is reported, not created": {
			wantEmpty: true,
			remote:    []RemoteService{{Service: remoteSvc("shop", strings.Repeat("x", 60), httpPort(80))}},
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.CreateServices) != 0 || len(p.Problems) != 1 || !strings.Contains(p.Problems[0], "longer than 63") {
					t.Fatalf("plan %+v", p)
				}
			},
		},
		"an ExternalName service is reported, not mirrored, and an existing mirror of it goes": {
			before: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			remote: []RemoteService{{Service: func() *corev1.Service {
				s := remoteSvc("shop", "cart", httpPort(8080))
				s.Spec.Type, s.Spec.ExternalName = corev1.ServiceTypeExternalName, "cart.example.com"
				return s
			}()}},
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.DeleteServices) != 1 || len(s.local) != 0 || len(p.Problems) != 1 || !strings.Contains(p.Problems[0], "ExternalName") {
					t.Fatalf("plan %+v", p)
				}
			},
		},
		"UDP ports are reported and left out; a Service with no TCP port is not mirrored": {
			remote: []RemoteService{
				{Service: remoteSvc("shop", "dns", corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, corev1.ServicePort{Name: "dns-tcp", Port: 53})},
				{Service: remoteSvc("shop", "syslog", corev1.ServicePort{Name: "syslog", Port: 514, Protocol: corev1.ProtocolUDP})},
			},
			check: func(t *testing.T, p *Plan, s *state) {
				svc, sl := s.local[key("shop", "dns-east")], s.slices[key("shop", "dns-east")]
				if svc == nil || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "dns-tcp" || sl == nil || len(sl.Ports) != 1 || *sl.Ports[0].Protocol != corev1.ProtocolTCP {
					t.Fatalf("mirror %+v, slice %+v: want the TCP port alone", svc, sl)
				}
				if _, ok := s.local[key("shop", "syslog-east")]; ok {
					t.Error("a Service with no TCP port was mirrored")
				}
				if len(p.Problems) != 2 || !strings.Contains(p.Problems[0], "port dns/UDP not mirrored") || !strings.Contains(p.Problems[1], "syslog: not mirrored: no TCP port (syslog/UDP)") {
					t.Errorf("problems %q", p.Problems)
				}
			},
		},
		"no ready gateway address is a problem, not Synced": {
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			mutate: func(in *Input) { in.Gateway.Addresses = nil },
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.Problems) != 1 || !strings.Contains(p.Problems[0], "no ready IPv4 address") {
					t.Errorf("problems %q", p.Problems)
				}
				if s.local[key("shop", "cart-east")] == nil {
					t.Error("the mirror waits for the gateway: it should exist, without endpoints")
				}
			},
		},
		"a missing namespace is reported": {
			wantEmpty: true,
			remote:    []RemoteService{{Service: remoteSvc("billing", "invoices", httpPort(80))}},
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.CreateServices) != 0 || len(p.Namespaces) != 0 || !strings.Contains(p.Problems[0], "namespace billing does not exist") {
					t.Fatalf("plan %+v", p)
				}
			},
		},
		"a missing namespace is created when the Link allows it": {
			remote: []RemoteService{{Service: remoteSvc("billing", "invoices", httpPort(80))}},
			mutate: func(in *Input) { in.CreateNamespaces = true },
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.Namespaces) != 1 || p.Namespaces[0] != "billing" || len(p.CreateServices) != 1 {
					t.Fatalf("plan %+v", p)
				}
			},
		},
		"a dead link marks endpoints not ready and deletes nothing": {
			before: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			mutate: func(in *Input) { in.Alive = false },
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.DeleteServices)+len(p.DeleteSlices) != 0 || len(p.UpdateSlices) != 1 {
					t.Fatalf("plan %+v", p)
				}
				if *s.slices[key("shop", "cart-east")].Endpoints[0].Conditions.Ready {
					t.Error("endpoint still ready")
				}
			},
		},
		"a mirror takes the gateway's family, and one of another is replaced with its slice": {
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			local: []*corev1.Service{{
				ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-east", ResourceVersion: "3",
					Labels: map[string]string{v1alpha1.MirroredFromLabel: "east", v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue}},
				Spec: corev1.ServiceSpec{ClusterIP: "fd00::9", IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}, Ports: []corev1.ServicePort{httpPort(8080)}},
			}},
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.DeleteServices) != 1 || len(p.CreateServices) != 1 {
					t.Fatalf("want the IPv6 mirror replaced: plan %+v", p)
				}
				svc := p.CreateServices[0]
				if !slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) || svc.Spec.IPFamilyPolicy == nil ||
					*svc.Spec.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack {
					t.Errorf("mirror families %v, policy %v; want IPv4 single-stack", svc.Spec.IPFamilies, svc.Spec.IPFamilyPolicy)
				}
				// The gateway moves to IPv6: the mirror and its slice (whose
				// address type cannot change) are made anew.
				in := s.input([]RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}}, func(in *Input) {
					in.Gateway = Gateway{Family: corev1.IPv6Protocol, Addresses: []string{"fd00:213::2"}}
				})
				p = Calculate(in)
				if len(p.DeleteServices) != 1 || len(p.CreateServices) != 1 || len(p.ReplaceSlices) != 1 || len(p.UpdateSlices)+len(p.CreateSlices)+len(p.DeleteSlices) != 0 {
					t.Fatalf("want the mirror and its slice replaced: plan %+v", p)
				}
				if f := p.CreateServices[0].Spec.IPFamilies; !slices.Equal(f, []corev1.IPFamily{corev1.IPv6Protocol}) {
					t.Errorf("mirror families %v, want IPv6", f)
				}
				rp := p.ReplaceSlices[0]
				if rp.Old.AddressType != discoveryv1.AddressTypeIPv4 || rp.New.AddressType != discoveryv1.AddressTypeIPv6 ||
					len(rp.New.Endpoints) != 1 || rp.New.Endpoints[0].Addresses[0] != "fd00:213::2" {
					t.Errorf("replacement %+v -> %+v", rp.Old, rp.New)
				}
			},
		},
		"in an IPv6 gateway's cluster a mirror and its slice are IPv6": {
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			mutate: func(in *Input) { in.Gateway = Gateway{Family: corev1.IPv6Protocol, Addresses: []string{"fd00:213::2"}} },
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.CreateServices) != 1 || len(p.CreateSlices) != 1 {
					t.Fatalf("plan %+v", p)
				}
				if f := p.CreateServices[0].Spec.IPFamilies; !slices.Equal(f, []corev1.IPFamily{corev1.IPv6Protocol}) {
					t.Errorf("mirror families %v, want IPv6", f)
				}
				if sl := p.CreateSlices[0]; sl.AddressType != discoveryv1.AddressTypeIPv6 || sl.Endpoints[0].Addresses[0] != "fd00:213::2" {
					t.Errorf("slice %s %v", sl.AddressType, sl.Endpoints)
				}
			},
		},
		"while the gateway's family is unknown a mirror keeps its own": {
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}, {Service: remoteSvc("shop", "pay", httpPort(8080))}},
			local: []*corev1.Service{{
				ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-east", ResourceVersion: "3",
					Labels: map[string]string{v1alpha1.MirroredFromLabel: "east", v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue}},
				Spec: corev1.ServiceSpec{ClusterIP: "fd00::9", IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}, Ports: []corev1.ServicePort{httpPort(8080)}},
			}},
			mutate: func(in *Input) { in.Gateway = Gateway{} },
			check: func(t *testing.T, p *Plan, s *state) {
				if len(p.DeleteServices) != 0 || len(p.CreateServices) != 1 {
					t.Fatalf("want pay created and cart kept: plan %+v", p)
				}
				if svc := p.CreateServices[0]; svc.Spec.IPFamilies != nil || svc.Spec.IPFamilyPolicy != nil {
					t.Errorf("a new mirror asks for %v %v, want the cluster's default", svc.Spec.IPFamilies, svc.Spec.IPFamilyPolicy)
				}
				if len(p.Problems) != 1 || !strings.Contains(p.Problems[0], "backbone-gateway does not exist") {
					t.Errorf("problems %q", p.Problems)
				}
			},
		},
		"while the gateway's family is unknown an IPv6 slice stays IPv6": {
			// The gateway Service of an IPv6 cluster made anew: gone for a
			// moment, its slices going one at a time.
			before: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			remote: []RemoteService{{Service: remoteSvc("shop", "cart", httpPort(8080))}},
			beforeMutate: func(in *Input) {
				in.Gateway = Gateway{Family: corev1.IPv6Protocol, Addresses: []string{"fd00:213::2"}}
			},
			mutate:    func(in *Input) { in.Gateway = Gateway{other: []string{"fd00:213::2"}} },
			wantEmpty: true,
			check: func(t *testing.T, p *Plan, s *state) {
				if sl := s.slices[key("shop", "cart-east")]; sl.AddressType != discoveryv1.AddressTypeIPv6 || sl.Endpoints[0].Addresses[0] != "fd00:213::2" {
					t.Errorf("slice %s %v", sl.AddressType, sl.Endpoints)
				}
			},
		},
		"a headless service gets per-pod mirrors and a headless mirror pointing at them": {
			wantEmpty: true,
			before:    []RemoteService{{Service: headlessSvc(), Hostnames: []string{"db-1", "db-0"}}},
			remote:    []RemoteService{{Service: headlessSvc(), Hostnames: []string{"db-1", "db-0"}}},
			check: func(t *testing.T, p *Plan, s *state) {
				pod := s.local[key("data", "db-0-db-east")]
				if pod == nil || pod.Annotations[v1alpha1.RemoteHostnameAnnotation] != "db-0" || isHeadless(pod) {
					t.Fatalf("per-pod mirror %+v", pod)
				}
				if s.slices[key("data", "db-0-db-east")] == nil || *s.slices[key("data", "db-1-db-east")].Ports[0].Port == *s.slices[key("data", "db-0-db-east")].Ports[0].Port {
					t.Fatal("per-pod mirrors need their own gateway ports")
				}
				h := s.local[key("data", "db-east")]
				if h == nil || !isHeadless(h) {
					t.Fatalf("headless mirror %+v", h)
				}
				sl := s.slices[key("data", "db-east")]
				if len(sl.Endpoints) != 2 || *sl.Endpoints[0].Hostname != "db-0" || sl.Endpoints[0].Addresses[0] != pod.Spec.ClusterIP {
					t.Fatalf("headless endpoints %+v", sl.Endpoints)
				}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newState()
			for _, l := range tc.local {
				s.local[key(l.Namespace, l.Name)] = l
			}
			if tc.before != nil {
				s.apply(Calculate(s.input(tc.before, tc.beforeMutate)))
				s.apply(Calculate(s.input(tc.before, tc.beforeMutate))) // second pass: per-pod ClusterIPs
			}
			// Calculate reads the caches' own objects in place: it must
			// leave every input as it found it.
			remoteBefore, localBefore, slicesBefore := copyInputs(tc.remote, s)
			p := Calculate(s.input(tc.remote, tc.mutate))
			if r, l, sl := copyInputs(tc.remote, s); !reflect.DeepEqual(r, remoteBefore) || !reflect.DeepEqual(l, localBefore) || !reflect.DeepEqual(sl, slicesBefore) {
				t.Fatal("Calculate modified its input")
			}
			if tc.wantEmpty != p.Empty() {
				t.Fatalf("Empty() = %v, plan %+v", p.Empty(), p)
			}
			s.apply(p)
			if tc.check != nil {
				tc.check(t, p, s)
			}
			if again := Calculate(s.input(tc.remote, tc.mutate)); !again.Empty() && len(p.Problems) == 0 && !strings.Contains(name, "headless") {
				t.Errorf("not converged after one apply: %+v", again)
			}
		})
	}
}

func headlessSvc() *corev1.Service {
	s := remoteSvc("data", "db", corev1.ServicePort{Name: "pg", Port: 5432})
	s.Spec.ClusterIP = corev1.ClusterIPNone
	return s
}

func ptrTo[T any](v T) *T { return &v }

func TestAllocatorIsStableAndUnique(t *testing.T) {
	a := NewAllocator(PortRange{100, 102}, map[string]int32{"a": 101, "dup": 101})
	if p, _ := a.Get("a"); p != 101 {
		t.Fatalf("existing allocation moved to %d", p)
	}
	p1, _ := a.Get("b")
	p2, _ := a.Get("c")
	if p1 == 101 || p2 == 101 || p1 == p2 {
		t.Fatalf("duplicate ports %d %d", p1, p2)
	}
	// Where single changes will look next: after the last port handed out
	// (not from the start of the range, through every port a first sync
	// allocated).
	if a.Next() != p2+1 {
		t.Fatalf("next search starts at %d, want %d", a.Next(), p2+1)
	}
	if _, err := a.Get("d"); err == nil {
		t.Fatal("allocated beyond the range")
	}
	a.Release("b")
	if p, err := a.Get("d"); err != nil || p != p1 {
		t.Fatalf("released port not reused: %d %v", p, err)
	}
}

func TestLazyAllocatorAsksOnlyForNewPorts(t *testing.T) {
	asked := []int32{}
	all := map[int32]bool{100: true, 101: true, 103: true}
	taken := func(p int32) (bool, error) { asked = append(asked, p); return all[p], nil }
	a := NewLazyAllocator(PortRange{100, 104}, map[string]int32{"mine": 100}, taken, 0)
	if p, err := a.Get("mine"); err != nil || p != 100 || len(asked) != 0 {
		t.Fatalf("known port: got %d %v after asking about %v, want 100 without asking", p, err, asked)
	}
	if p, err := a.Get("new"); err != nil || p != 102 {
		t.Fatalf("new port: got %d %v, want 102 (100, 101, 103 are taken)", p, err)
	}
	if p, err := a.Get("new2"); err != nil || p != 104 {
		t.Fatalf("second new port: got %d %v, want 104", p, err)
	}
	// The search goes on from the last port handed out and wraps around.
	b := NewLazyAllocator(PortRange{100, 104}, nil, func(p int32) (bool, error) { return p != 101, nil }, a.Next())
	if p, err := b.Get("x"); err != nil || p != 101 || b.Next() != 102 {
		t.Fatalf("wrapped search: got %d %v (next %d), want 101 and next 102", p, err, b.Next())
	}
	full := NewLazyAllocator(PortRange{100, 101}, nil, func(int32) (bool, error) { return true, nil }, 0)
	if _, err := full.Get("x"); err == nil {
		t.Fatal("a port was handed out from a full range")
	}
	failing := NewLazyAllocator(PortRange{100, 104}, nil, func(int32) (bool, error) { return false, fmt.Errorf("cache gone") }, 0)
	if _, err := failing.Get("x"); err == nil {
		t.Fatal("a new port was handed out without knowing the others")
	}
}

// BenchmarkCalculateSteady10000 is a whole-Link pass over 10,000 mirrored
// services in steady state (nothing to change): what every resync costs.
func BenchmarkCalculateSteady10000(b *testing.B) {
	s := newState()
	var remote []RemoteService
	for i := range 10000 {
		remote = append(remote, RemoteService{Service: remoteSvc("shop", fmt.Sprintf("svc-%05d", i), httpPort(8080))})
	}
	first := Calculate(s.inputWith(remote, PortRange{20000, 39999}))
	s.apply(first)
	if p := Calculate(s.inputWith(remote, PortRange{20000, 39999})); !p.Empty() || len(p.Problems) > 0 {
		b.Fatalf("steady state is not empty: %d creates, %d updates, problems %v", len(p.CreateServices), len(p.UpdateServices)+len(p.UpdateSlices), p.Problems)
	}
	b.Run("compared in full", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if p := Calculate(s.inputWith(remote, PortRange{20000, 39999})); !p.Empty() {
				b.Fatal("not empty")
			}
		}
	})
	b.Run("verified before", func(b *testing.B) {
		verified := Calculate(s.inputWith(remote, PortRange{20000, 39999})).Verified
		if len(verified) != 10000 {
			b.Fatalf("%d mirrors verified, want 10000", len(verified))
		}
		b.ReportAllocs()
		for b.Loop() {
			in := s.inputWith(remote, PortRange{20000, 39999})
			in.Verified = verified
			if p := Calculate(in); !p.Empty() || p.Mirrors != 10000 {
				b.Fatal("not empty")
			}
		}
	})
}

func (s *state) inputWith(remote []RemoteService, r PortRange) Input {
	in := s.input(remote, nil)
	in.Ports = NewAllocator(r, s.ports)
	return in
}

// TestVerifiedMirrorsAreKeptUntilSomethingMoves: a plan given what the
// previous one verified keeps those mirrors without comparing them, and
// compares again — planning the same writes as without the record — as
// soon as the remote Service, the mirror, its slice or the Link-wide
// inputs change.
func TestVerifiedMirrorsAreKeptUntilSomethingMoves(t *testing.T) {
	remote := func(rv string, labels map[string]string) []RemoteService {
		a := remoteSvc("shop", "cart", httpPort(8080))
		a.ResourceVersion = rv
		for k, v := range labels {
			a.Labels[k] = v
		}
		// A headless Service with no pod hostnames has one mirror and one
		// slice like the others, and is kept on the record like them.
		return []RemoteService{{Service: a}, {Service: remoteSvc("shop", "orders", httpPort(80))}, {Service: headlessSvc()}}
	}
	setup := func() (*state, Verified) {
		s := newState()
		s.apply(Calculate(s.input(remote("7", nil), nil)))
		p := Calculate(s.input(remote("7", nil), nil))
		if !p.Empty() || len(p.Verified) != 3 {
			t.Fatalf("steady state: empty %v, %d verified", p.Empty(), len(p.Verified))
		}
		return s, p.Verified
	}
	cart := key("shop", "cart-east")
	// same checks the plan with and without the record plans the same.
	same := func(t *testing.T, s *state, rs []RemoteService, v Verified, mutate func(*Input)) *Plan {
		t.Helper()
		withRecord := Calculate(s.input(rs, func(in *Input) {
			in.Verified = v
			if mutate != nil {
				mutate(in)
			}
		}))
		without := Calculate(s.input(rs, mutate))
		if len(withRecord.UpdateServices) != len(without.UpdateServices) || len(withRecord.UpdateSlices) != len(without.UpdateSlices) ||
			len(withRecord.CreateServices) != len(without.CreateServices) || len(withRecord.DeleteServices) != len(without.DeleteServices) ||
			withRecord.Mirrors != without.Mirrors {
			t.Fatalf("with the record: %d/%d service updates/creates, %d slice updates; without: %d/%d, %d",
				len(withRecord.UpdateServices), len(withRecord.CreateServices), len(withRecord.UpdateSlices),
				len(without.UpdateServices), len(without.CreateServices), len(without.UpdateSlices))
		}
		return withRecord
	}

	t.Run("nothing moved: kept, nothing planned", func(t *testing.T) {
		s, v := setup()
		p := same(t, s, remote("7", nil), v, nil)
		if !p.Empty() || p.Mirrors != 3 || p.Verified[cart] != v[cart] || p.Verified[key("data", "db-east")] != v[key("data", "db-east")] {
			t.Fatalf("plan %+v", p)
		}
	})
	t.Run("the remote Service changed", func(t *testing.T) {
		s, v := setup()
		p := same(t, s, remote("8", map[string]string{"tier": "gold"}), v, nil)
		if len(p.UpdateServices) != 1 || p.UpdateServices[0].Labels["tier"] != "gold" {
			t.Fatalf("the remote label change is not planned: %+v", p.UpdateServices)
		}
		if _, ok := p.Verified[cart]; ok {
			t.Fatal("a mirror about to be updated is recorded as in sync")
		}
	})
	t.Run("the mirror was edited here", func(t *testing.T) {
		s, v := setup()
		s.local[cart].Labels["team"] = "someone-else"
		s.local[cart].ResourceVersion = "999"
		p := same(t, s, remote("7", nil), v, nil)
		if len(p.UpdateServices) != 1 || p.UpdateServices[0].Labels["team"] != "payments" {
			t.Fatalf("the local edit is not undone: %+v", p.UpdateServices)
		}
	})
	t.Run("the slice was edited here", func(t *testing.T) {
		s, v := setup()
		s.slices[cart].Endpoints = nil
		s.slices[cart].ResourceVersion = "999"
		if p := same(t, s, remote("7", nil), v, nil); len(p.UpdateSlices) != 1 {
			t.Fatalf("the slice edit is not undone: %+v", p.UpdateSlices)
		}
	})
	t.Run("the gateway moved", func(t *testing.T) {
		s, v := setup()
		p := same(t, s, remote("7", nil), v, func(in *Input) { in.Gateway.Addresses = []string{"10.213.0.9"} })
		if len(p.UpdateSlices) != 3 {
			t.Fatalf("%d slices updated, want all three", len(p.UpdateSlices))
		}
	})
	t.Run("the remote gateway died", func(t *testing.T) {
		s, v := setup()
		if p := same(t, s, remote("7", nil), v, func(in *Input) { in.Alive = false }); len(p.UpdateSlices) != 3 {
			t.Fatalf("%d slices updated, want all three", len(p.UpdateSlices))
		}
	})
	t.Run("a label is now excluded", func(t *testing.T) {
		s, v := setup()
		p := same(t, s, remote("7", nil), v, func(in *Input) { in.ExcludedLabels = map[string]bool{"team": true} })
		if len(p.UpdateServices) != 3 {
			t.Fatalf("%d mirrors updated, want all three", len(p.UpdateServices))
		}
	})
	t.Run("the remote Service is gone", func(t *testing.T) {
		s, v := setup()
		p := same(t, s, remote("7", nil)[1:], v, nil)
		if len(p.DeleteServices) != 1 || p.DeleteServices[0].Name != "cart-east" || p.Mirrors != 2 {
			t.Fatalf("the mirror of a gone Service is not deleted: %+v", p.DeleteServices)
		}
	})
	// Two plans that each read the ports before the other's slice reached
	// the cache can give one port to two mirrors (of two Links); that moves
	// no resourceVersion of the mirror that loses it.
	t.Run("another mirror holds the same gateway port", func(t *testing.T) {
		s, v := setup()
		port := *s.slices[cart].Ports[0].Port
		s.ports[PortKey("a", "x-west", "http")] = port // sorts first: it keeps the port
		p := same(t, s, remote("7", nil), v, nil)
		if len(p.UpdateSlices) != 1 || p.UpdateSlices[0].Name != "cart-east" || *p.UpdateSlices[0].Ports[0].Port == port {
			t.Fatalf("the mirror that lost its port keeps it: %d slices updated", len(p.UpdateSlices))
		}
	})
	// A headless Service's pods getting hostnames moves no resourceVersion
	// of the Service or of its mirror: the record must not hide it.
	t.Run("the headless Service's pods got hostnames", func(t *testing.T) {
		s, v := setup()
		rs := remote("7", nil)
		rs[2].Hostnames = []string{"db-0", "db-1"}
		p := same(t, s, rs, v, nil)
		if len(p.CreateServices) != 2 || len(p.UpdateSlices) != 1 {
			t.Fatalf("per-pod mirrors not planned: %d created, %d slices updated", len(p.CreateServices), len(p.UpdateSlices))
		}
	})
	t.Run("the headless Service got a cluster IP", func(t *testing.T) {
		s, v := setup()
		rs := remote("7", nil)
		db := headlessSvc()
		db.Spec.ClusterIP, db.ResourceVersion = "10.0.0.7", "9"
		rs[2].Service = db
		if p := same(t, s, rs, v, nil); len(p.DeleteServices) != 1 || len(p.CreateServices) != 1 {
			t.Fatalf("the mirror is not replaced: %d deleted, %d created", len(p.DeleteServices), len(p.CreateServices))
		}
	})
}

// TestAllocatorStartsWhereTheLastPlanEnded: a whole-Link pass builds its
// allocator from the cache, which may not show the slice another plan
// just wrote with port 101; started after that plan's last port, it does
// not hand 101 out again.
func TestAllocatorStartsWhereTheLastPlanEnded(t *testing.T) {
	stale := NewAllocator(PortRange{100, 110}, map[string]int32{"a": 100}) // "b" holds 101, unseen
	stale.StartAt(102)
	if p, _ := stale.Get("c"); p != 102 {
		t.Fatalf("a new port from a stale view: %d, want 102", p)
	}
	wrapped := NewAllocator(PortRange{100, 110}, map[string]int32{"a": 100})
	wrapped.StartAt(111) // past the range: from its start
	if p, _ := wrapped.Get("c"); p != 101 {
		t.Fatalf("after the end of the range: %d, want 101", p)
	}
}
