package dashboard

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/kube"
)

func link(target string) *v1alpha1.Link {
	return &v1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Name: target, Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.LinkSpec{TargetClusterName: target}}
}

func setProbe(t *testing.T, c client.Client, target string, at time.Time, alive bool, p50 time.Duration) {
	t.Helper()
	var l v1alpha1.Link
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: v1alpha1.SystemNamespace, Name: target}, &l); err != nil {
		t.Fatal(err)
	}
	l.Status.Probe = &v1alpha1.LinkProbeStatus{Alive: alive, LastProbeTime: &metav1.Time{Time: at},
		LatencyP50: &metav1.Duration{Duration: p50}}
	if err := c.Status().Update(context.Background(), &l); err != nil {
		t.Fatal(err)
	}
}

// The history is the probe's writes, stamped with the probe's time; polls
// that find the same status add nothing.
func TestHistoryFollowsTheProbesWrites(t *testing.T) {
	c := fake.NewClientBuilder().WithScheme(kube.Scheme).WithObjects(link("east"), link("west")).
		WithStatusSubresource(&v1alpha1.Link{}).Build()
	s := &Server{Clusters: map[string]client.Client{"platform": c}}
	ctx := context.Background()

	first := time.Now().Add(-40 * time.Second).Truncate(time.Second)
	setProbe(t, c, "east", first, true, 30*time.Millisecond)
	for range 5 {
		s.Poll(ctx)
	}
	second := first.Add(30 * time.Second)
	setProbe(t, c, "east", second, false, 30*time.Millisecond)
	for range 5 {
		s.Poll(ctx)
	}
	if got := s.state.Links[0].State; got != "dead" {
		t.Errorf("east after its dead status: %q", got)
	}
	// A status older than the last sample (a controller whose clock is behind) is
	// not plotted back in time.
	setProbe(t, c, "east", first.Add(10*time.Second), true, 1*time.Millisecond)
	s.Poll(ctx)

	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/api/state", nil))
	var st State
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rec.Body.String(), `"history":[]`) {
		t.Errorf("a link never probed should have an empty history, not null: %s", rec.Body.String())
	}
	if len(st.Links) != 2 {
		t.Fatalf("links: %+v", st.Links)
	}
	east := st.Links[0]
	if east.Target != "east" || len(east.History) != 2 {
		t.Fatalf("east's history after 2 writes and 11 polls: %+v", east.History)
	}
	if !east.History[0].Time.Equal(first) || !east.History[0].Up || !east.History[1].Time.Equal(second) || east.History[1].Up {
		t.Errorf("samples are not the probe's writes: %+v", east.History)
	}
	if st.Links[1].State != "unknown" {
		t.Errorf("west, never probed: %q", st.Links[1].State)
	}

	// A status nobody refreshed is stale, as in the matrix.
	c2 := fake.NewClientBuilder().WithScheme(kube.Scheme).WithObjects(link("east")).WithStatusSubresource(&v1alpha1.Link{}).Build()
	setProbe(t, c2, "east", time.Now().Add(-10*time.Minute), true, time.Millisecond)
	s2 := &Server{Clusters: map[string]client.Client{"platform": c2}}
	s2.Poll(ctx)
	if got := s2.state.Links[0].State; got != "stale" {
		t.Errorf("a status 10 minutes old is %q, want stale", got)
	}
}
