package probe

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// fastLink is a Link probed every 10 ms.
func fastLink(threshold int32) *v1alpha1.Link {
	return &v1alpha1.Link{
		ObjectMeta: metav1.ObjectMeta{Name: "east", Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.LinkSpec{
			TargetClusterName: "east",
			GatewayIdentity:   "spiffe://backbone.test/cluster/east",
			Probe: v1alpha1.ProbeSpec{
				Period:           &metav1.Duration{Duration: 10 * time.Millisecond},
				Timeout:          &metav1.Duration{Duration: 5 * time.Millisecond},
				FailureThreshold: ptr.To(threshold),
			},
		},
	}
}

// countingClient serves objs and counts status applies.
func countingClient(applies *atomic.Int64, objs ...client.Object) (client.Client, client.Client) {
	s := runtime.NewScheme()
	_ = v1alpha1.AddToScheme(s)
	base := fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).Build()
	return base, interceptor.NewClient(base, interceptor.Funcs{
		SubResourceApply: func(context.Context, client.Client, string, runtime.ApplyConfiguration, ...client.SubResourceApplyOption) error {
			applies.Add(1)
			return nil
		},
	})
}

// TestAFailingLinkWritesOnlyItsTransitions: a dead link, or a lossy one
// whose failure count goes up and down, writes its status when it dies or
// comes back and at the periodic refresh (30 s), not at every probe: a
// hundred dead links must not load the API server.
func TestAFailingLinkWritesOnlyItsTransitions(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fails func(i int64) bool
		max   int64
	}{
		// the first write, then down.
		{"dead", func(int64) bool { return true }, 2},
		// alive throughout: the first write only.
		{"lossy, one in ten", func(i int64) bool { return i%10 == 0 }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var applies atomic.Int64
			_, c := countingClient(&applies, fastLink(3))
			var probes atomic.Int64
			r := &Runner{Client: c, Namespace: v1alpha1.SystemNamespace, Cluster: "west", Metrics: NewMetrics(prometheus.NewRegistry()),
				Log: slog.New(slog.DiscardHandler), Resync: time.Hour,
				Probe: func(ctx context.Context, _ *v1alpha1.Link) (time.Duration, error) {
					if tc.fails(probes.Add(1)) {
						return 0, errors.New("refused")
					}
					return time.Millisecond, nil
				}}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = r.Start(ctx)
			t.Logf("%d probes, %d status writes", probes.Load(), applies.Load())
			if applies.Load() > tc.max {
				t.Errorf("%d status writes for %d probes in 1 s, want at most %d", applies.Load(), probes.Load(), tc.max)
			}
		})
	}
}

// holdOnce holds the probe loop in its log call once, after the probe
// and before the loop sets its metrics.
type holdOnce struct {
	slog.Handler
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (h *holdOnce) Enabled(context.Context, slog.Level) bool { return true }
func (h *holdOnce) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message == "link liveness changed" {
		h.once.Do(func() { close(h.entered); <-h.release })
	}
	return nil
}

// TestADeletedLinksSeriesStayDeleted: a Link deleted while its probe loop
// is between a probe and its metrics leaves no series behind once the
// loop has stopped; an alert on backbone_link_up must not fire for a
// Link that is gone; and the probe's connections to its gateway go.
func TestADeletedLinksSeriesStayDeleted(t *testing.T) {
	var applies atomic.Int64
	l := fastLink(1)
	base, c := countingClient(&applies, l)
	h := &holdOnce{Handler: slog.DiscardHandler, entered: make(chan struct{}), release: make(chan struct{})}
	forgot := make(chan string, 1)
	r := &Runner{Client: c, Namespace: v1alpha1.SystemNamespace, Cluster: "west", Metrics: NewMetrics(prometheus.NewRegistry()),
		Log: slog.New(h), Resync: 10 * time.Millisecond,
		Probe:  func(ctx context.Context, _ *v1alpha1.Link) (time.Duration, error) { return 0, errors.New("refused") },
		Forget: func(l *v1alpha1.Link) { forgot <- l.Spec.TargetClusterName }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Start(ctx) }()
	<-h.entered
	if err := base.Delete(ctx, l); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // several syncs see the Link gone
	close(h.release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		time.Sleep(50 * time.Millisecond)
		n := testutil.CollectAndCount(r.Metrics.Up)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d backbone_link_up series for a deleted Link", n)
		}
	}
	select {
	case cluster := <-forgot:
		if cluster != "east" {
			t.Errorf("Forget was called for %q, want east", cluster)
		}
	case <-time.After(5 * time.Second):
		t.Error("the probe never forgot the deleted Link's gateway")
	}
}

// TestOneLoopPerTargetCluster: of two Links to one cluster (a Link renamed
// by creating the new one first) only the older is probed — two loops
// would share the cluster's connection and series — and when it goes the
// other takes over without the cluster's series or connections being
// forgotten.
func TestOneLoopPerTargetCluster(t *testing.T) {
	older, newer := fastLink(3), fastLink(3)
	older.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Hour))
	newer.Name, newer.CreationTimestamp = "east-b", metav1.NewTime(time.Now())
	var applies atomic.Int64
	base, c := countingClient(&applies, older, newer)
	var mu sync.Mutex
	probed := map[string]int{}
	forgot := make(chan string, 2)
	r := &Runner{Client: c, Namespace: v1alpha1.SystemNamespace, Cluster: "west", Metrics: NewMetrics(prometheus.NewRegistry()),
		Log: slog.New(slog.DiscardHandler), Resync: 20 * time.Millisecond,
		Probe: func(_ context.Context, l *v1alpha1.Link) (time.Duration, error) {
			mu.Lock()
			probed[l.Name]++
			mu.Unlock()
			return time.Millisecond, nil
		},
		Forget: func(l *v1alpha1.Link) { forgot <- l.Name }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Start(ctx) }()
	count := func(name string) int { mu.Lock(); defer mu.Unlock(); return probed[name] }
	time.Sleep(300 * time.Millisecond)
	if count("east") == 0 || count("east-b") != 0 {
		t.Fatalf("probes: %v, want the older Link's only", probed)
	}
	if err := base.Delete(ctx, older); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for count("east-b") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the newer Link is not probed after the older went: %v", probed)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case name := <-forgot:
		t.Errorf("the cluster's gateway was forgotten with Link %s while Link east-b probes it", name)
	case <-time.After(200 * time.Millisecond):
	}
	if n := testutil.CollectAndCount(r.Metrics.Up); n != 1 {
		t.Errorf("%d backbone_link_up series, want east's one", n)
	}
}

// TestARestartedProbeCarriesTheStatusOn: a controller that restarts (or
// takes the lease over) goes on from the Link's status: a dead link stays
// dead until a probe succeeds — not alive until it fails threshold probes
// again — and its condition keeps its lastTransitionTime.
func TestARestartedProbeCarriesTheStatusOn(t *testing.T) {
	l := fastLink(100)
	died := metav1.NewTime(time.Now().Add(-time.Hour).Truncate(time.Second))
	l.Status.Probe = &v1alpha1.LinkProbeStatus{Alive: false, ConsecutiveFailures: 7, LastProbeTime: &died}
	l.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionGatewayReachable, Status: metav1.ConditionFalse,
		Reason: ReasonGatewayDown, LastTransitionTime: died}}
	s := runtime.NewScheme()
	_ = v1alpha1.AddToScheme(s)
	base := fake.NewClientBuilder().WithScheme(s).WithObjects(l).WithStatusSubresource(l).Build()
	var mu sync.Mutex
	var written []byte
	c := interceptor.NewClient(base, interceptor.Funcs{
		SubResourceApply: func(_ context.Context, _ client.Client, _ string, obj runtime.ApplyConfiguration, _ ...client.SubResourceApplyOption) error {
			b, err := json.Marshal(obj)
			mu.Lock()
			written = b
			mu.Unlock()
			return err
		},
	})
	r := &Runner{Client: c, Namespace: v1alpha1.SystemNamespace, Cluster: "west", Metrics: NewMetrics(prometheus.NewRegistry()),
		Log: slog.New(slog.DiscardHandler), Resync: time.Hour,
		Probe: func(context.Context, *v1alpha1.Link) (time.Duration, error) { return 0, errors.New("refused") }}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_ = r.Start(ctx)
	if up := testutil.ToFloat64(r.Metrics.Up.WithLabelValues("west", "east")); up != 0 {
		t.Errorf("backbone_link_up = %v for a link dead before the restart that still fails, want 0", up)
	}
	mu.Lock()
	defer mu.Unlock()
	var st struct {
		Status struct {
			Probe      struct{ Alive bool }
			Conditions []struct{ LastTransitionTime string }
		}
	}
	if err := json.Unmarshal(written, &st); err != nil {
		t.Fatalf("%v: %s", err, written)
	}
	if st.Status.Probe.Alive || len(st.Status.Conditions) != 1 || st.Status.Conditions[0].LastTransitionTime != died.UTC().Format(time.RFC3339) {
		t.Errorf("status written after the restart: %s; want alive false and the condition's lastTransitionTime kept (%s)", written, died.UTC().Format(time.RFC3339))
	}
}
