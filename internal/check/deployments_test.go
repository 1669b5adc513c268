package check

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/install"
)

// rolledOut is a Deployment of two replicas whose rollout is complete, as
// the deployment controller reports it.
func rolledOut(name string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: backbonev1alpha1.SystemNamespace, Name: name, Generation: 3},
		Spec:       appsv1.DeploymentSpec{Replicas: ptr.To[int32](2)},
		Status: appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2,
			Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: "True", Reason: "NewReplicaSetAvailable"}}},
	}
}

func TestDeploymentsAreJudgedAsKubectlRolloutStatusJudgesThem(t *testing.T) {
	tests := map[string]struct {
		gateway func(*appsv1.Deployment)
		wantOK  bool
		// wantMessage is part of the gateway's result.
		wantMessage string
	}{
		"passes a rollout that is complete": {
			gateway: func(*appsv1.Deployment) {}, wantOK: true, wantMessage: "2/2 replicas ready",
		},
		"fails a gateway scaled to zero, which serves nothing": {
			gateway: func(d *appsv1.Deployment) {
				d.Spec.Replicas = ptr.To[int32](0)
				d.Status = appsv1.DeploymentStatus{ObservedGeneration: 3}
			},
			wantMessage: "scaled to 0 replicas",
		},
		"fails a rollout whose new pods are not ready while the old ones serve": {
			gateway: func(d *appsv1.Deployment) {
				d.Status.Replicas, d.Status.UpdatedReplicas = 3, 1
			},
			wantMessage: "1 of 2 replicas run the current pod template",
		},
		"fails a rollout past its progress deadline": {
			gateway: func(d *appsv1.Deployment) {
				d.Status.Replicas, d.Status.UpdatedReplicas = 3, 1
				d.Status.Conditions[0] = appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: "False",
					Reason: "ProgressDeadlineExceeded", Message: `ReplicaSet "backbone-gateway-7c9" has timed out progressing.`}
			},
			wantMessage: "progress deadline exceeded",
		},
		"fails a spec the deployment controller has not acted on yet": {
			gateway:     func(d *appsv1.Deployment) { d.Generation = 4 },
			wantMessage: "generation 4",
		},
		"fails old replicas that have not terminated": {
			gateway:     func(d *appsv1.Deployment) { d.Status.Replicas = 3 },
			wantMessage: "1 old replica",
		},
		"fails updated replicas that are ready but not yet available": {
			gateway:     func(d *appsv1.Deployment) { d.Status.AvailableReplicas = 1 },
			wantMessage: "1 of 2 updated replicas available",
		},
		"fails too few ready replicas": {
			gateway:     func(d *appsv1.Deployment) { d.Status.ReadyReplicas, d.Status.AvailableReplicas = 1, 1 },
			wantMessage: "1/2 replicas ready",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			gw := rolledOut(install.GatewayName)
			tc.gateway(gw)
			c := fake.NewClientBuilder().WithObjects(rolledOut(install.ControllerName), gw).Build()
			results := checkDeployments(context.Background(), c, Options{})
			if len(results) != 2 || !results[0].OK {
				t.Fatalf("the controller, rolled out, must pass: %+v", results)
			}
			r := results[1]
			if r.OK != tc.wantOK || !strings.Contains(r.Message, tc.wantMessage) {
				t.Errorf("gateway: %+v; want ok=%v with %q", r, tc.wantOK, tc.wantMessage)
			}
			if !r.OK && r.Fix == "" {
				t.Errorf("a failure without a fix: %+v", r)
			}
		})
	}
}

func TestAControllerScaledToZeroFailsSayingNothingReconciles(t *testing.T) {
	ctrl := rolledOut(install.ControllerName)
	ctrl.Spec.Replicas = ptr.To[int32](0)
	ctrl.Status = appsv1.DeploymentStatus{ObservedGeneration: 3}
	c := fake.NewClientBuilder().WithObjects(ctrl, rolledOut(install.GatewayName)).Build()
	r := checkDeployments(context.Background(), c, Options{})[0]
	if r.OK || !strings.Contains(r.Message, "scaled to 0 replicas") || !strings.Contains(r.Message, "Links") || !strings.Contains(r.Fix, "--replicas") {
		t.Errorf("controller at 0 replicas: %+v; want a failure saying nothing reconciles Links, and how to scale it up", r)
	}
}
