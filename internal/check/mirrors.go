package check

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
)

// checkMirrors reports mirrors whose cluster has no Link (orphans the
// controller will not clean up) and mirrors without a ready endpoint
// (callers would get connection refused).
func checkMirrors(ctx context.Context, c client.Client, links []backbonev1alpha1.Link) []Result {
	var mirrors corev1.ServiceList
	if err := c.List(ctx, &mirrors, client.HasLabels{backbonev1alpha1.MirroredFromLabel}); err != nil {
		return []Result{fail("mirrors", err.Error(), "")}
	}
	linked := map[string]bool{}
	for _, l := range links {
		linked[l.Spec.TargetClusterName] = true
	}
	sort.Slice(mirrors.Items, func(i, j int) bool {
		a, b := mirrors.Items[i], mirrors.Items[j]
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	var out []Result
	healthy := 0
	for _, m := range mirrors.Items {
		from := m.Labels[backbonev1alpha1.MirroredFromLabel]
		check := fmt.Sprintf("mirror %s/%s", m.Namespace, m.Name)
		if !linked[from] {
			out = append(out, fail(check, fmt.Sprintf("orphaned: mirrored from %q, which has no Link", from),
				fmt.Sprintf("relink: %s; or, if %s is gone: kubectl -n %s delete service %s", relinkFix(from), from, m.Namespace, m.Name)))
			continue
		}
		ready, err := readyEndpoints(ctx, c, m.Namespace, m.Name)
		if err != nil {
			out = append(out, fail(check, err.Error(), ""))
			continue
		}
		if ready == 0 {
			out = append(out, fail(check, "no ready endpoints: its traffic has nowhere to go",
				fmt.Sprintf("kubectl -n %s get endpointslices -l kubernetes.io/service-name=%s; kubectl -n %s get pods -l app.kubernetes.io/component=gateway; kubectl -n %s get link %s",
					m.Namespace, m.Name, backbonev1alpha1.SystemNamespace, backbonev1alpha1.SystemNamespace, from)))
			continue
		}
		healthy++
	}
	// One line for all healthy mirrors keeps the report short in a cluster
	// with thousands.
	out = append([]Result{pass("mirrors", fmt.Sprintf("%d of %d have ready endpoints", healthy, len(mirrors.Items)))}, out...)
	return out
}

func readyEndpoints(ctx context.Context, c client.Client, ns, svc string) (int, error) {
	var slices discoveryv1.EndpointSliceList
	if err := c.List(ctx, &slices, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: svc}); err != nil {
		return 0, err
	}
	n := 0
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			// Unset means ready, per the EndpointSlice API.
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				n++
			}
		}
	}
	return n, nil
}
