package check

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/install"
)

// progressDeadlineExceeded is the reason of a Deployment's Progressing
// condition once its newest ReplicaSet made no progress for
// spec.progressDeadlineSeconds (kubectl's deploymentutil.TimedOutReason).
const progressDeadlineExceeded = "ProgressDeadlineExceeded"

// checkDeployments passes the controller and the gateway only when they
// run at least one replica and their rollout is complete: ready replicas
// alone would pass a gateway scaled to 0 ("0/0 ready"), and a rollout
// whose new pods crash while the old ones still serve.
func checkDeployments(ctx context.Context, c client.Client, o Options) []Result {
	var out []Result
	for _, w := range []struct{ name, role string }{
		{install.ControllerName, "nothing reconciles Links, mirrors or the link probe"},
		{install.GatewayName, "nothing serves cross-cluster traffic, in or out"},
	} {
		check := "deployment " + w.name
		ns := backbonev1alpha1.SystemNamespace
		var d appsv1.Deployment
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: w.name}, &d); err != nil {
			out = append(out, fail(check, err.Error(), installFix(o)))
			continue
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		ready := fmt.Sprintf("%d/%d replicas ready", d.Status.ReadyReplicas, want)
		debug := fmt.Sprintf("kubectl -n %s describe deployment %s; kubectl -n %s logs deployment/%s", ns, w.name, ns, w.name)
		if want < 1 {
			out = append(out, fail(check, "scaled to 0 replicas: "+w.role,
				fmt.Sprintf("kubectl -n %s scale deployment %s --replicas=2 (or reinstall: %s)", ns, w.name, installFix(o))))
			continue
		}
		if problem := rolloutProblem(&d, want); problem != "" {
			out = append(out, fail(check, problem+" ("+ready+")",
				fmt.Sprintf("kubectl -n %s rollout status deployment/%s; kubectl -n %s get pods; %s; kubectl -n %s rollout undo deployment/%s goes back to the previous pod template",
					ns, w.name, ns, debug, ns, w.name)))
			continue
		}
		if d.Status.ReadyReplicas < want {
			out = append(out, fail(check, ready, debug))
			continue
		}
		if d.Status.AvailableReplicas < d.Status.UpdatedReplicas {
			out = append(out, fail(check, fmt.Sprintf("rollout not complete: %d of %d updated replicas available (%s)",
				d.Status.AvailableReplicas, d.Status.UpdatedReplicas, ready), debug))
			continue
		}
		out = append(out, pass(check, ready))
	}
	return out
}

// rolloutProblem says why the Deployment's latest rollout is not complete,
// judged as `kubectl rollout status` judges it, or "" when every replica
// runs the current pod template. Its last test, updated replicas
// available, is left to the caller, after readiness, which says more.
func rolloutProblem(d *appsv1.Deployment, want int32) string {
	s := d.Status
	if s.ObservedGeneration < d.Generation {
		return fmt.Sprintf("rollout not observed: the deployment controller has seen generation %d of the spec, not generation %d", s.ObservedGeneration, d.Generation)
	}
	for _, c := range s.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == progressDeadlineExceeded {
			return fmt.Sprintf("rollout stuck (progress deadline exceeded: %s): %d of %d replicas run the current pod template", c.Message, s.UpdatedReplicas, want)
		}
	}
	switch {
	case s.UpdatedReplicas < want:
		return fmt.Sprintf("rollout not complete: %d of %d replicas run the current pod template", s.UpdatedReplicas, want)
	case s.Replicas > s.UpdatedReplicas:
		return fmt.Sprintf("rollout not complete: %d old replica(s) not yet terminated", s.Replicas-s.UpdatedReplicas)
	}
	return ""
}
