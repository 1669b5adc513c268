package probe

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestRunnerWritesStatusBesideOtherConditions runs the prober against a
// real API server: a probe that fails marks the Link dead after the
// threshold, a Ready condition written by another field manager survives,
// and recovery flips it back.
func TestRunnerWritesStatusBesideOtherConditions(t *testing.T) {
	west := testenv.Start(t, "west")["west"]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	link := &v1alpha1.Link{
		ObjectMeta: metav1.ObjectMeta{Name: "east", Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.LinkSpec{
			TargetClusterName: "east",
			CredentialsSecret: v1alpha1.SecretReference{Name: "link-east"},
			GatewayAddresses:  []v1alpha1.GatewayAddress{{Host: "10.0.0.1", Port: 4143}},
			GatewayIdentity:   "spiffe://backbone.test/cluster/east",
			Probe: v1alpha1.ProbeSpec{
				Period:           &metav1.Duration{Duration: 50 * time.Millisecond},
				FailureThreshold: ptr.To[int32](2),
			},
		},
	}
	if err := west.Client.Create(ctx, link); err != nil {
		t.Fatal(err)
	}
	// Another manager (the mirror controller) owns Ready.
	link.Status.Conditions = []metav1.Condition{{
		Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Synced",
		Message: "mirrors in sync", LastTransitionTime: metav1.Now(),
	}}
	if err := west.Client.Status().Update(ctx, link); err != nil {
		t.Fatal(err)
	}

	var failing atomic.Bool
	reg := prometheus.NewRegistry()
	r := &Runner{
		Client: west.Client, Namespace: v1alpha1.SystemNamespace, Cluster: "west",
		Metrics: NewMetrics(reg), Resync: 50 * time.Millisecond,
		Probe: func(ctx context.Context, l *v1alpha1.Link) (time.Duration, error) {
			if failing.Load() {
				return 0, errors.New("connection refused")
			}
			return 12 * time.Millisecond, nil
		},
	}
	go func() { _ = r.Start(ctx) }()

	waitFor := func(what string, ok func(*v1alpha1.Link) bool) *v1alpha1.Link {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got := &v1alpha1.Link{}
			if err := west.Client.Get(ctx, client.ObjectKeyFromObject(link), got); err != nil {
				t.Fatal(err)
			}
			if ok(got) {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s; status: %+v", what, got.Status)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	got := waitFor("the probe reports the link alive", func(l *v1alpha1.Link) bool {
		return l.Status.Probe != nil && l.Status.Probe.Alive && l.Status.Probe.LatencyP50 != nil
	})
	if got.Status.Probe.LatencyP50.Duration != 12*time.Millisecond {
		t.Errorf("p50 = %v, want 12ms", got.Status.Probe.LatencyP50.Duration)
	}
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionReady); c == nil || c.Reason != "Synced" {
		t.Errorf("the probe clobbered the Ready condition: %+v", got.Status.Conditions)
	}

	failing.Store(true)
	got = waitFor("the link is dead", func(l *v1alpha1.Link) bool { return l.Status.Probe != nil && !l.Status.Probe.Alive })
	c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionGatewayReachable)
	if c == nil || c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "connection refused") {
		t.Errorf("GatewayReachable = %+v", c)
	}
	if got.Status.Probe.ConsecutiveFailures < 2 {
		t.Errorf("consecutive failures %d, want at least the threshold 2", got.Status.Probe.ConsecutiveFailures)
	}
	if v := testutil.ToFloat64(r.Metrics.Up.WithLabelValues("west", "east")); v != 0 {
		t.Errorf("backbone_link_up = %v for a dead link", v)
	}
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionReady); c == nil {
		t.Errorf("Ready condition lost: %+v", got.Status.Conditions)
	}

	failing.Store(false)
	waitFor("the link recovers", func(l *v1alpha1.Link) bool { return l.Status.Probe != nil && l.Status.Probe.Alive })
	if n := testutil.CollectAndCount(r.Metrics.Duration); n != 1 {
		t.Errorf("%d duration series, want 1", n)
	}

	if err := west.Client.Delete(ctx, link); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for testutil.CollectAndCount(r.Metrics.Up) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("series of a deleted link were not removed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
