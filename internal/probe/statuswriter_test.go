package probe

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// failuresStatus is a Link's status told apart by its failure count.
func failuresStatus(n int64) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(),
		"kind":       "Link",
		"metadata":   map[string]any{"name": "east", "namespace": v1alpha1.SystemNamespace},
		"status":     map[string]any{"probe": map[string]any{"consecutiveFailures": n}},
	}}
}

// applyRecorder is a client whose status applies call apply with the
// failure count of the status written.
func applyRecorder(apply func(ctx context.Context, failures int64) error) client.Client {
	s := runtime.NewScheme()
	_ = v1alpha1.AddToScheme(s)
	return interceptor.NewClient(fake.NewClientBuilder().WithScheme(s).Build(), interceptor.Funcs{
		SubResourceApply: func(ctx context.Context, _ client.Client, _ string, obj runtime.ApplyConfiguration, _ ...client.SubResourceApplyOption) error {
			b, err := json.Marshal(obj)
			if err != nil {
				return err
			}
			var st struct {
				Status struct {
					Probe struct{ ConsecutiveFailures int64 }
				}
			}
			if err := json.Unmarshal(b, &st); err != nil {
				return err
			}
			return apply(ctx, st.Status.Probe.ConsecutiveFailures)
		},
	})
}

// TestAStatusWriterWritesTheLatest: statuses offered while a write is in
// flight wait for it, and only the latest of them is written; a failed
// write is tried again, with a status offered meanwhile in its place.
func TestAStatusWriterWritesTheLatest(t *testing.T) {
	tests := map[string]struct {
		// first is what the first write returns once released.
		first error
		// offered while the first write is in flight.
		offered []int64
		want    []int64
	}{
		"statuses offered during a write: the latest follows it": {
			offered: []int64{2, 3, 4}, want: []int64{1, 4},
		},
		"a failed write is written again": {
			first: errors.New("etcdserver: request timed out"), want: []int64{1, 1},
		},
		"a failed write gives way to a status offered meanwhile": {
			first: errors.New("etcdserver: request timed out"), offered: []int64{2, 3}, want: []int64{1, 3},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var written []int64
			var inFlight atomic.Int64
			var overlapped atomic.Bool
			entered, release := make(chan struct{}), make(chan struct{})
			c := applyRecorder(func(ctx context.Context, failures int64) error {
				if inFlight.Add(1) > 1 {
					overlapped.Store(true)
				}
				defer inFlight.Add(-1)
				mu.Lock()
				written = append(written, failures)
				first := len(written) == 1
				mu.Unlock()
				if first {
					close(entered)
					<-release
					return tc.first
				}
				return nil
			})
			w := newStatusWriter()
			ctx, cancel := context.WithCancel(context.Background())
			stopped := make(chan struct{})
			go func() { defer close(stopped); w.run(ctx, c, time.Minute, slog.New(slog.DiscardHandler)) }()
			w.offer(failuresStatus(1))
			<-entered
			for _, n := range tc.offered {
				w.offer(failuresStatus(n))
			}
			close(release)
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				mu.Lock()
				n := len(written)
				mu.Unlock()
				if n >= len(tc.want) || time.Now().After(deadline) {
					break
				}
			}
			time.Sleep(100 * time.Millisecond) // room for a write too many
			cancel()
			<-stopped
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(written, tc.want) {
				t.Errorf("statuses written (by failure count): %v, want %v", written, tc.want)
			}
			if overlapped.Load() {
				t.Error("two writes were in flight at once")
			}
		})
	}
}

// TestStartReturnsOnceItsStatusWritesStopped: a Runner stopped (its
// leader's lease lost, the controller shutting down) while the API server
// holds a status write returns only once that write has given up: nothing
// it started writes status after Start returned.
func TestStartReturnsOnceItsStatusWritesStopped(t *testing.T) {
	var inFlight atomic.Int64
	holding := make(chan struct{}, 1)
	s := runtime.NewScheme()
	_ = v1alpha1.AddToScheme(s)
	base := fake.NewClientBuilder().WithScheme(s).WithObjects(fastLink(1)).Build()
	c := interceptor.NewClient(base, interceptor.Funcs{
		SubResourceApply: func(ctx context.Context, _ client.Client, _ string, _ runtime.ApplyConfiguration, _ ...client.SubResourceApplyOption) error {
			inFlight.Add(1)
			defer inFlight.Add(-1)
			select {
			case holding <- struct{}{}:
			default:
			}
			<-ctx.Done()
			time.Sleep(50 * time.Millisecond) // a client slow to give up
			return ctx.Err()
		},
	})
	r := &Runner{Client: c, Namespace: v1alpha1.SystemNamespace, Cluster: "west", Metrics: NewMetrics(prometheus.NewRegistry()),
		Log: slog.New(slog.DiscardHandler), Resync: time.Hour, StatusWriteTimeout: time.Hour,
		Probe: func(context.Context, *v1alpha1.Link) (time.Duration, error) { return time.Millisecond, nil }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Start(ctx) }()
	select {
	case <-holding:
	case <-time.After(5 * time.Second):
		t.Fatal("the runner wrote no status")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Start did not return after its context ended")
	}
	if n := inFlight.Load(); n != 0 {
		t.Errorf("%d status writes still in flight after Start returned, want 0", n)
	}
}
