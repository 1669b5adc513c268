package mirror

import (
	"context"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// FieldOwner is the server-side-apply manager of the mirror controller's
// part of a Link's status; the probe owns status.probe and the
// GatewayReachable condition, and neither clobbers the other.
const FieldOwner = "backbone-mirror"

// statusRefresh bounds how stale lastSyncTime may get while nothing else
// changes, so a steady state costs no writes between refreshes.
const statusRefresh = 5 * time.Minute

type status struct {
	generation int64
	cond       metav1.Condition
	mirrors    int32
	problems   []string
	synced     bool // a complete sync happened: lastSyncTime moves
	keepSync   bool // keep the previous mirror count and problems
}

func (s *status) set(st metav1.ConditionStatus, reason, msg string) {
	s.cond = metav1.Condition{Type: v1alpha1.ConditionReady, Status: st, Reason: reason, Message: msg, ObservedGeneration: s.generation}
}

// writeStatus applies the status when it differs from what the Link has.
func (r *Reconciler) writeStatus(ctx context.Context, link *v1alpha1.Link, s *status) {
	if s.cond.Type == "" {
		return
	}
	old := meta.FindStatusCondition(link.Status.Conditions, v1alpha1.ConditionReady)
	if s.keepSync {
		s.mirrors, s.problems = link.Status.MirroredServices, link.Status.Problems
	}
	lastSync := link.Status.LastSyncTime
	stale := lastSync == nil || time.Since(lastSync.Time) > statusRefresh
	unchanged := old != nil && old.Status == s.cond.Status && old.Reason == s.cond.Reason && old.Message == s.cond.Message &&
		link.Status.ObservedGeneration == s.generation && link.Status.MirroredServices == s.mirrors && slices.Equal(link.Status.Problems, s.problems)
	if unchanged && !(s.synced && stale) {
		return
	}
	transition := metav1.Now()
	if old != nil && old.Status == s.cond.Status {
		transition = old.LastTransitionTime
	}
	cond := map[string]any{
		"type": s.cond.Type, "status": string(s.cond.Status), "reason": s.cond.Reason, "message": s.cond.Message,
		"observedGeneration": s.generation, "lastTransitionTime": transition.UTC().Format(time.RFC3339),
	}
	st := map[string]any{
		"observedGeneration": s.generation,
		"conditions":         []any{cond},
		"mirroredServices":   int64(s.mirrors),
	}
	if len(s.problems) > 0 {
		ps := make([]any, len(s.problems))
		for i, p := range s.problems {
			ps[i] = p
		}
		st["problems"] = ps
	}
	if s.synced {
		st["lastSyncTime"] = time.Now().UTC().Format(time.RFC3339)
	} else if lastSync != nil {
		st["lastSyncTime"] = lastSync.UTC().Format(time.RFC3339)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(), "kind": "Link",
		"metadata": map[string]any{"name": link.Name, "namespace": link.Namespace},
		"status":   st,
	}}
	err := r.client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership)
	if err := r.write("Link", "status", err); err != nil {
		r.opts.Log.Warn("writing link status", "link", link.Name, "err", err)
	}
}
