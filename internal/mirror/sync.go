package mirror

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// sync reads the local state, calculates the plan for the whole Link and
// applies it.
func (r *Reconciler) sync(ctx context.Context, link *v1alpha1.Link, w *remoteWatch) (*Plan, error) {
	cluster := link.Spec.TargetClusterName
	remote, err := w.exported(ctx)
	if err != nil {
		return nil, err
	}
	in := newInput(link, remote)
	var nss corev1.NamespaceList
	if err := r.client.List(ctx, &nss); err != nil {
		return nil, err
	}
	for _, ns := range nss.Items {
		in.Namespaces[ns.Name] = true
	}
	// Local Services under the names mirrors would take (to detect
	// conflicts), and every mirror of this cluster (to delete stale ones).
	// The cache's objects are read in place, not copied: the plan copies
	// whatever it changes.
	local, err := servicesInPlace(ctx, r.cache)
	if err != nil {
		return nil, err
	}
	byName := make(map[types.NamespacedName]*corev1.Service, len(local))
	for _, s := range local {
		key := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		byName[key] = s
		if owned(s, cluster) {
			in.Local[key] = s
		}
	}
	for _, rs := range remote {
		for _, n := range mirrorNames(rs, cluster) {
			key := types.NamespacedName{Namespace: rs.Service.Namespace, Name: n}
			if s, ok := byName[key]; ok {
				in.Local[key] = s
			}
		}
	}
	if err := r.readSlices(ctx, &in, func(*discoveryv1.EndpointSlice) bool { return true }); err != nil {
		return nil, err
	}
	// The cache may not show yet the slices another Link's pass (or a
	// single change) just wrote: from the range's start this pass would
	// hand out their ports again — a duplicate the next full pass mends,
	// but until then one gateway port leads two mirrors' callers to one
	// of them. New ports go after the last one handed out.
	in.Ports.StartAt(r.nextPort)
	linkKey := types.NamespacedName{Namespace: link.Namespace, Name: link.Name}
	// Every fullCompareEvery-th pass compares every mirror whatever the
	// record says (every 5 minutes at the default resync): a safety net
	// for what no resourceVersion shows.
	if r.passes == nil {
		r.passes = map[types.NamespacedName]*linkPasses{}
	}
	passes := r.passes[linkKey]
	if passes == nil {
		passes = &linkPasses{}
		r.passes[linkKey] = passes
	}
	passes.count++
	if link.Generation == passes.generation && passes.count%fullCompareEvery != 0 {
		in.Verified = passes.verified
	}
	plan := Calculate(in)
	if in.Ports.HandedOut() {
		// Single changes look for new ports after the last one handed
		// out here: from the start of the range, the first one after a
		// first sync of 10,000 mirrors would ask about 10,000 taken ports.
		r.nextPort = in.Ports.Next()
	}
	if err := r.apply(ctx, plan); err != nil {
		passes.verified = nil
		return plan, err
	}
	passes.verified, passes.generation = plan.Verified, link.Generation
	return plan, nil
}

// syncService plans and applies the mirrors of one remote Service only:
// what a single change in the linked cluster (or to one mirror here)
// costs, whatever the number of services the Link mirrors. It reports
// what the Link's status may need: a new mirror count (mirrors created or
// deleted) or the whole Link's problems (this Service has one).
//
// It is called holding syncMu and calls release once the plan is made
// when the plan hands out no new gateway port — its writes then run beside
// other Services' — or else once the writes are done, so that no two
// plans hand out the same port before the cache has seen it.
func (r *Reconciler) syncService(ctx context.Context, link *v1alpha1.Link, w *remoteWatch, namespace, name string, release func()) (statusNeed, error) {
	cluster := link.Spec.TargetClusterName
	rs, exported, err := w.exportedOne(ctx, namespace, name)
	if err != nil {
		return needNothing, err
	}
	var remote []RemoteService
	if exported {
		remote = append(remote, rs)
	}
	in := newInput(link, remote)
	var ns corev1.Namespace
	switch err := r.client.Get(ctx, types.NamespacedName{Name: namespace}, &ns, client.UnsafeDisableDeepCopy); {
	case err == nil:
		in.Namespaces[namespace] = true
	case !apierrors.IsNotFound(err):
		return needNothing, err
	}
	// The mirrors of this remote Service (its per-pod ones included), and
	// whatever Services hold the names its mirrors would take.
	var local corev1.ServiceList
	if err := r.client.List(ctx, &local, client.InNamespace(namespace), client.MatchingFields{mirrorOfIndex: mirrorOf(cluster, name)}, client.UnsafeDisableDeepCopy); err != nil {
		return needNothing, err
	}
	names := map[string]bool{}
	for i := range local.Items {
		s := &local.Items[i]
		in.Local[types.NamespacedName{Namespace: namespace, Name: s.Name}] = s
		names[s.Name] = true
	}
	if exported {
		for _, n := range mirrorNames(rs, cluster) {
			key := types.NamespacedName{Namespace: namespace, Name: n}
			names[n] = true
			if _, ok := in.Local[key]; ok {
				continue
			}
			var s corev1.Service
			switch err := r.client.Get(ctx, key, &s, client.UnsafeDisableDeepCopy); {
			case err == nil:
				in.Local[key] = &s
			case !apierrors.IsNotFound(err):
				return needNothing, err
			}
		}
	}
	if len(names) == 0 {
		return needNothing, nil // neither exported nor mirrored: nothing to do
	}
	// This Service's slices hold its allocations; the others are read only
	// if a new port must be handed out.
	known := map[string]int32{}
	for n := range names {
		var sl discoveryv1.EndpointSlice
		switch err := r.client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: n}, &sl, client.UnsafeDisableDeepCopy); {
		case err == nil:
			if sl.Labels[v1alpha1.MirroredFromLabel] == cluster && sl.Labels[discoveryv1.LabelManagedBy] == v1alpha1.EndpointSliceManagedBy {
				in.LocalSlices[types.NamespacedName{Namespace: namespace, Name: n}] = &sl
				addAllocations(known, &sl)
			}
		case !apierrors.IsNotFound(err):
			return needNothing, err
		}
	}
	in.Ports = NewLazyAllocator(r.opts.Ports, known, func(port int32) (bool, error) {
		var holders discoveryv1.EndpointSliceList
		err := r.client.List(ctx, &holders, client.MatchingFields{gatewayPortIndex: strconv.Itoa(int(port))}, client.UnsafeDisableDeepCopy)
		return len(holders.Items) > 0, err
	}, r.nextPort)
	if in.Gateway, err = LocalGateway(ctx, r.client); err != nil {
		return needNothing, err
	}
	plan := Calculate(in)
	r.nextPort = in.Ports.Next()
	if !in.Ports.HandedOut() {
		release()
	}
	if err := r.apply(ctx, plan); err != nil {
		return needLink, err
	}
	if plan.CreatesPerPodMirrors {
		// The headless mirror points at the per-pod mirrors' cluster IPs,
		// known now that they exist: once more, shortly.
		r.services.AddAfter(serviceKey{Link: types.NamespacedName{Namespace: link.Namespace, Name: link.Name}, Namespace: namespace, Name: name}, 100*time.Millisecond)
	}
	switch {
	case len(plan.Problems) > 0:
		return needLink, nil
	case len(plan.CreateServices) != len(plan.DeleteServices):
		return needCount, nil
	}
	return needNothing, nil
}

// statusNeed is what a single-Service sync leaves the Link's status to do.
type statusNeed int

const (
	needNothing statusNeed = iota
	needCount              // the mirror count moved
	needLink               // a whole-Link pass: problems, or a failed write
)

// fullCompareEvery is how often a whole-Link pass ignores what the
// previous ones verified.
const fullCompareEvery = 10

// mirrorOfIndex indexes the local mirrors by the remote Service they
// mirror (cluster/name; the namespace is the same on both sides).
const mirrorOfIndex = "backbone.dev/mirror-of"

func mirrorOf(cluster, name string) string { return cluster + "/" + name }

func indexMirrorOf(o client.Object) []string {
	s, ok := o.(*corev1.Service)
	if !ok {
		return nil
	}
	cluster, remote := s.Labels[v1alpha1.MirroredFromLabel], s.Annotations[v1alpha1.RemoteNameAnnotation]
	if remote == "" || !owned(s, cluster) {
		return nil
	}
	return []string{mirrorOf(cluster, remote)}
}

// newInput holds what the Link itself says.
func newInput(link *v1alpha1.Link, remote []RemoteService) Input {
	return Input{
		Cluster: link.Spec.TargetClusterName, Remote: remote, Alive: link.Status.Probe == nil || link.Status.Probe.Alive,
		Local: map[types.NamespacedName]*corev1.Service{}, LocalSlices: map[types.NamespacedName]*discoveryv1.EndpointSlice{},
		Namespaces: map[string]bool{}, CreateNamespaces: link.Spec.CreateNamespaces,
		ExcludedLabels: set(link.Spec.ExcludedLabels), ExcludedAnnotations: set(link.Spec.ExcludedAnnotations),
	}
}

// mirrorNames are the names of the mirrors of rs: the mirror itself and,
// for a headless Service, one per pod hostname.
func mirrorNames(rs RemoteService, cluster string) []string {
	names := []string{MirrorName(rs.Service.Name, cluster)}
	for _, h := range rs.Hostnames {
		names = append(names, h+"-"+names[0])
	}
	return names
}

// readSlices fills the port allocator from every mirror slice of every
// Link (the persisted allocations), the Link's slices that mine selects,
// and the gateway's addresses.
func (r *Reconciler) readSlices(ctx context.Context, in *Input, mine func(*discoveryv1.EndpointSlice) bool) error {
	existing, err := r.allocations(ctx, func(sl *discoveryv1.EndpointSlice) {
		if sl.Labels[v1alpha1.MirroredFromLabel] == in.Cluster && mine(sl) {
			in.LocalSlices[types.NamespacedName{Namespace: sl.Namespace, Name: sl.Name}] = sl
		}
	})
	if err != nil {
		return err
	}
	in.Ports = NewAllocator(r.opts.Ports, existing)
	in.Gateway, err = LocalGateway(ctx, r.client)
	return err
}

// allocations reads the gateway port of every mirror port from every
// mirror slice, calling each (if set) on every slice.
func (r *Reconciler) allocations(ctx context.Context, each func(*discoveryv1.EndpointSlice)) (map[string]int32, error) {
	var slices discoveryv1.EndpointSliceList
	if err := r.client.List(ctx, &slices, client.MatchingLabels{discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	existing := make(map[string]int32, len(slices.Items))
	for i := range slices.Items {
		sl := &slices.Items[i]
		if each != nil {
			each(sl)
		}
		addAllocations(existing, sl)
	}
	return existing, nil
}

// gatewayPortIndex indexes the mirror slices by the gateway ports they
// hold, so a new port is found without reading every allocation.
const gatewayPortIndex = "backbone.dev/gateway-port"

func indexGatewayPorts(o client.Object) []string {
	sl, ok := o.(*discoveryv1.EndpointSlice)
	if !ok || sl.Labels[discoveryv1.LabelManagedBy] != v1alpha1.EndpointSliceManagedBy {
		return nil
	}
	m := map[string]int32{}
	addAllocations(m, sl)
	var out []string
	for _, p := range m {
		out = append(out, strconv.Itoa(int(p)))
	}
	return out
}

func addAllocations(m map[string]int32, sl *discoveryv1.EndpointSlice) {
	if sl.Labels[v1alpha1.HeadlessMirrorLabel] == "true" {
		return // a headless mirror's ports are the Service's own
	}
	for _, p := range sl.Ports {
		if p.Name != nil && p.Port != nil {
			m[PortKey(sl.Namespace, sl.Name, *p.Name)] = *p.Port
		}
	}
}

// Gateway is how the local gateway is reached.
type Gateway struct {
	// Family is the first IP family of the gateway Service, which every
	// mirror and egress Service takes: kube-proxy sends a cluster IP only
	// to endpoints of its own family. Empty while the Service is missing
	// (deleted, or made anew): nothing is then replaced for its family.
	Family corev1.IPFamily
	// Addresses are the gateway's ready endpoints of that family (IPv4
	// while it is unknown), sorted.
	Addresses []string
	// other are the ready endpoints of the other address type, for slices
	// that keep theirs while the family is unknown.
	other []string
}

// SliceFor is the address type and endpoints of a slice pointing at the
// gateway, cur being the slice there is (or nil): the gateway's family's;
// while that is unknown, cur's own type, so that a gateway Service
// deleted or made anew (its slices going one at a time) replaces no
// slice of any mirror.
func (g Gateway) SliceFor(cur *discoveryv1.EndpointSlice) (discoveryv1.AddressType, []string) {
	if g.Family != "" || cur == nil || cur.AddressType == g.AddressType() {
		return g.AddressType(), g.Addresses
	}
	return cur.AddressType, g.other
}

// AddressType is the EndpointSlice address type of the gateway's family
// (IPv4 while it is unknown).
func (g Gateway) AddressType() discoveryv1.AddressType {
	if g.Family == corev1.IPv6Protocol {
		return discoveryv1.AddressTypeIPv6
	}
	return discoveryv1.AddressTypeIPv4
}

// ServiceFamilies are the IP families a Service pointing at the gateway
// asks for: the gateway's, single-stack; none (the cluster's default)
// while the gateway's is unknown.
func (g Gateway) ServiceFamilies() ([]corev1.IPFamily, *corev1.IPFamilyPolicy) {
	if g.Family == "" {
		return nil, nil
	}
	return []corev1.IPFamily{g.Family}, ptr.To(corev1.IPFamilyPolicySingleStack)
}

// Misfits says whether svc, a Service pointing at the gateway, has
// another first IP family than the gateway's and must be made anew (a
// Service's first family cannot change). Nothing misfits while the
// gateway's family is unknown.
func (g Gateway) Misfits(svc *corev1.Service) bool {
	return g.Family != "" && len(svc.Spec.IPFamilies) > 0 && svc.Spec.IPFamilies[0] != g.Family
}

// LocalGateway reads the local gateway's family — its Service's first
// IP family — and its ready endpoints: what every mirror's (and egress
// target's) EndpointSlice points at.
func LocalGateway(ctx context.Context, c client.Reader) (Gateway, error) {
	var g Gateway
	var svc corev1.Service
	switch err := c.Get(ctx, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: v1alpha1.GatewayServiceName}, &svc); {
	case err == nil:
		if len(svc.Spec.IPFamilies) > 0 {
			g.Family = svc.Spec.IPFamilies[0]
		}
	case !apierrors.IsNotFound(err):
		return g, err
	}
	var list discoveryv1.EndpointSliceList
	if err := c.List(ctx, &list, client.InNamespace(v1alpha1.SystemNamespace), client.MatchingLabels{discoveryv1.LabelServiceName: v1alpha1.GatewayServiceName}); err != nil {
		return g, err
	}
	ready := map[discoveryv1.AddressType]map[string]bool{}
	for _, sl := range list.Items {
		if ready[sl.AddressType] == nil {
			ready[sl.AddressType] = map[string]bool{}
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				ready[sl.AddressType][a] = true
			}
		}
	}
	g.Addresses = slices.Sorted(maps.Keys(ready[g.AddressType()]))
	otherType := discoveryv1.AddressTypeIPv6
	if g.AddressType() == otherType {
		otherType = discoveryv1.AddressTypeIPv4
	}
	g.other = slices.Sorted(maps.Keys(ready[otherType]))
	return g, nil
}

func (r *Reconciler) write(kind, verb string, err error) error {
	if err == nil {
		r.opts.Metrics.Writes.WithLabelValues(kind, verb).Inc()
	}
	return err
}

// writeOwn creates or updates (verb) o, one of the controller's own
// writes: noted before it is sent so that its event is not taken for
// someone else's change; an event during the write that was someone
// else's is routed once the answer is in.
func (r *Reconciler) writeOwn(ctx context.Context, o client.Object, kind, verb string) error {
	r.ownWrites.begin(o)
	var err error
	if verb == "create" {
		err = r.client.Create(ctx, o)
	} else {
		err = r.client.Update(ctx, o)
	}
	err = r.write(kind, verb, err)
	if r.ownWrites.done(o, err) {
		r.recheck(ctx, o)
	}
	return err
}

// apply executes a plan: namespaces, then Services, then slices; deletes
// last. Within a phase the writes run in parallel (bounded). A write the
// API server rejects for its object (invalid, denied by a quota or a
// webhook, a conflict) fails that object only: the other mirrors'
// writes, and the later phases, go on — one mirror the API server will
// never take must not keep every other mirror of the Link from following
// its gateway's addresses or readiness. Any other error (the API server
// away) stops the plan; the Link is retried either way.
func (r *Reconciler) apply(ctx context.Context, p *Plan) error {
	// A namespace the API server refuses (the controller installed
	// without controller.createNamespaces may not create any) fails the
	// mirrors that go there, not the Link's others.
	var nsRejected []error
	for _, ns := range p.Namespaces {
		err := r.client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue}}})
		err = r.write("Namespace", "create", ignoreExists(err))
		switch {
		case apierrors.IsForbidden(err):
			nsRejected = append(nsRejected, fmt.Errorf("creating namespace %s (spec.createNamespaces needs the controller installed with controller.createNamespaces=true): %w", ns, err))
		case err != nil && rejectedForTheObject(err):
			nsRejected = append(nsRejected, fmt.Errorf("creating namespace %s: %w", ns, err))
		case err != nil:
			return fmt.Errorf("creating namespace %s: %w", ns, err)
		}
	}
	// A Service whose create was refused (a user's Service of that name
	// appeared after the plan was made) gets no slice: a slice names its
	// Service, and would give the user's one the gateway's endpoints.
	var refusedMu sync.Mutex
	refused := map[types.NamespacedName]bool{}
	phases := []func() error{
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.DeleteServices, func(ctx context.Context, s *corev1.Service) error {
				s = s.DeepCopy() // the plan may hold the cache's own object
				return r.write("Service", "delete", client.IgnoreNotFound(r.client.Delete(ctx, s, client.Preconditions{UID: &s.UID})))
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.CreateServices, func(ctx context.Context, s *corev1.Service) error {
				if err := r.writeOwn(ctx, s, "Service", "create"); err != nil {
					refusedMu.Lock()
					refused[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = true
					refusedMu.Unlock()
					return fmt.Errorf("creating mirror %s/%s: %w", s.Namespace, s.Name, err)
				}
				return nil
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.UpdateServices, func(ctx context.Context, s *corev1.Service) error {
				if err := r.writeOwn(ctx, s, "Service", "update"); err != nil {
					return fmt.Errorf("updating mirror %s/%s: %w", s.Namespace, s.Name, err)
				}
				return nil
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.CreateSlices, func(ctx context.Context, s *discoveryv1.EndpointSlice) error {
				if refused[types.NamespacedName{Namespace: s.Namespace, Name: s.Labels[discoveryv1.LabelServiceName]}] {
					return nil
				}
				if err := r.writeOwn(ctx, s, "EndpointSlice", "create"); err != nil {
					return fmt.Errorf("creating EndpointSlice %s/%s: %w", s.Namespace, s.Name, err)
				}
				return nil
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.ReplaceSlices, func(ctx context.Context, rp Replacement) error {
				if refused[types.NamespacedName{Namespace: rp.New.Namespace, Name: rp.New.Labels[discoveryv1.LabelServiceName]}] {
					return nil
				}
				old := rp.Old.DeepCopy() // the plan may hold the cache's own object
				if err := r.write("EndpointSlice", "delete", client.IgnoreNotFound(r.client.Delete(ctx, old, client.Preconditions{UID: &old.UID}))); err != nil {
					return fmt.Errorf("replacing EndpointSlice %s/%s: %w", old.Namespace, old.Name, err)
				}
				if err := r.writeOwn(ctx, rp.New, "EndpointSlice", "create"); err != nil {
					return fmt.Errorf("replacing EndpointSlice %s/%s: %w", rp.New.Namespace, rp.New.Name, err)
				}
				return nil
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.UpdateSlices, func(ctx context.Context, s *discoveryv1.EndpointSlice) error {
				if err := r.writeOwn(ctx, s, "EndpointSlice", "update"); err != nil {
					return fmt.Errorf("updating EndpointSlice %s/%s: %w", s.Namespace, s.Name, err)
				}
				return nil
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.DeleteSlices, func(ctx context.Context, s *discoveryv1.EndpointSlice) error {
				s = s.DeepCopy() // the plan may hold the cache's own object
				return r.write("EndpointSlice", "delete", client.IgnoreNotFound(r.client.Delete(ctx, s)))
			})
		},
	}
	rejected := nsRejected
	for _, phase := range phases {
		err := phase()
		var rej rejectedWrites
		if errors.As(err, &rej) {
			rejected = append(rejected, rej...)
			continue
		}
		if err != nil {
			return err
		}
	}
	if len(rejected) > 0 {
		return rejectedWrites(rejected)
	}
	return nil
}

// rejectedWrites are writes the API server refused for their objects.
type rejectedWrites []error

func (r rejectedWrites) Error() string {
	const shown = 3
	msgs := make([]string, 0, shown+1)
	for i, err := range r {
		if i == shown {
			msgs = append(msgs, fmt.Sprintf("and %d more", len(r)-shown))
			break
		}
		msgs = append(msgs, err.Error())
	}
	return fmt.Sprintf("the API server refused %d mirror writes: %s", len(r), strings.Join(msgs, "; "))
}

// Unwrap lets errors.Is and apierrors' checks (IsConflict) see each
// refusal.
func (r rejectedWrites) Unwrap() []error { return r }

// rejectedForTheObject says whether the API server refused a write for
// what the object is or where it goes, rather than failing to answer.
func rejectedForTheObject(err error) bool {
	return apierrors.IsInvalid(err) || apierrors.IsForbidden(err) || apierrors.IsBadRequest(err) ||
		apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err) ||
		apierrors.IsRequestEntityTooLargeError(err)
}

// parallel runs f on every item with at most n in flight. Items written
// are dropped from items as they go (zeroed), so that a first sync of
// thousands of mirrors does not hold every object it wrote beside the
// cache's own copies until the last write: the plan is spent by apply.
// Writes the API server rejected for their objects are returned as
// rejectedWrites once every item was tried; any other error stops the
// rest at once.
func parallel[T any](ctx context.Context, n int, items []T, f func(context.Context, T) error) error {
	if len(items) == 0 {
		return nil
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	var (
		mu       sync.Mutex
		rejected rejectedWrites
	)
	for i, it := range items {
		g.Go(func() error {
			if err := f(ctx, it); err != nil {
				if !rejectedForTheObject(err) {
					return err
				}
				mu.Lock()
				rejected = append(rejected, err)
				mu.Unlock()
				return nil
			}
			var zero T
			items[i] = zero
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if len(rejected) > 0 {
		return rejected
	}
	return nil
}

func ignoreExists(err error) error {
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// finalize deletes the Link's mirrors, then lets the Link go.
func (r *Reconciler) finalize(ctx context.Context, link *v1alpha1.Link) error {
	r.stopWatch(types.NamespacedName{Namespace: link.Namespace, Name: link.Name})
	// Single changes that read the watch before it stopped write their
	// mirrors before these are listed for deletion.
	r.singles.Lock()
	//lint:ignore SA2001 a barrier, not a critical section
	r.singles.Unlock()
	r.syncMu.Lock()
	delete(r.passes, types.NamespacedName{Namespace: link.Namespace, Name: link.Name})
	r.syncMu.Unlock()
	cluster := link.Spec.TargetClusterName
	// The mirrors are the cluster's, not the Link's: another Link to the
	// same cluster keeps them (and takes them over, if this one mirrored).
	if others, err := r.sameTarget(ctx, link); err != nil {
		return err
	} else if len(others) > 0 {
		if controllerutil.RemoveFinalizer(link, Finalizer) {
			return r.write("Link", "update", r.client.Update(ctx, link))
		}
		return nil
	}
	if err := r.deleteMirrorsOf(ctx, cluster); err != nil {
		return err
	}
	if controllerutil.RemoveFinalizer(link, Finalizer) {
		return r.write("Link", "update", r.client.Update(ctx, link))
	}
	return nil
}

// deleteMirrorsOf deletes every mirror of cluster and its slices, read
// past the cache: what is deleted must include the mirrors written a
// moment before.
func (r *Reconciler) deleteMirrorsOf(ctx context.Context, cluster string) error {
	sel := client.MatchingLabels{v1alpha1.MirroredFromLabel: cluster}
	var svcs corev1.ServiceList
	if err := r.apiReader.List(ctx, &svcs, sel); err != nil {
		return err
	}
	for i := range svcs.Items {
		s := &svcs.Items[i]
		if !owned(s, cluster) {
			continue
		}
		if err := r.write("Service", "delete", client.IgnoreNotFound(r.client.Delete(ctx, s))); err != nil {
			return err
		}
	}
	var slices discoveryv1.EndpointSliceList
	if err := r.apiReader.List(ctx, &slices, sel, client.MatchingLabels{discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy}); err != nil {
		return err
	}
	for i := range slices.Items {
		if err := r.write("EndpointSlice", "delete", client.IgnoreNotFound(r.client.Delete(ctx, &slices.Items[i]))); err != nil {
			return err
		}
	}
	r.opts.Metrics.Mirrored.DeleteLabelValues(cluster)
	r.opts.Metrics.RemoteUp.DeleteLabelValues(cluster)
	return nil
}

// sweepOrphans deletes the mirrors of clusters no Link targets any more:
// left by a Link deleted without its finalizer (removed by hand), they
// would route to a gateway no Link reaches, for good. It runs when this
// replica starts to lead and after a Link is gone.
func (r *Reconciler) sweepOrphans(ctx context.Context) error {
	var links v1alpha1.LinkList
	if err := r.client.List(ctx, &links, client.InNamespace(v1alpha1.SystemNamespace)); err != nil {
		return err
	}
	linked := map[string]bool{}
	for _, l := range links.Items {
		linked[l.Spec.TargetClusterName] = true
	}
	var svcs corev1.ServiceList
	if err := r.client.List(ctx, &svcs, client.HasLabels{v1alpha1.MirroredFromLabel},
		client.MatchingLabels{v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue}, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	orphaned := map[string]bool{}
	for i := range svcs.Items {
		if c := svcs.Items[i].Labels[v1alpha1.MirroredFromLabel]; !linked[c] {
			orphaned[c] = true
		}
	}
	for cluster := range orphaned {
		r.opts.Log.Info("deleting the mirrors of a cluster no Link targets", "cluster", cluster)
		if err := r.deleteMirrorsOf(ctx, cluster); err != nil {
			return err
		}
	}
	return nil
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}
