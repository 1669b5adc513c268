package check

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
)

// TestLinkProbeStatusIsJudgedByItsAge: a status no controller refreshes
// any more fails the check, whatever it last said; a live one reports
// its loss.
func TestLinkProbeStatusIsJudgedByItsAge(t *testing.T) {
	link := func(age time.Duration, failed int32) *backbonev1alpha1.Link {
		l := &backbonev1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: backbonev1alpha1.LinkSpec{TargetClusterName: "east"}}
		l.Status.Probe = &backbonev1alpha1.LinkProbeStatus{Alive: true, LastProbeTime: &metav1.Time{Time: time.Now().Add(-age)},
			LatencyP50: &metav1.Duration{Duration: 31 * time.Millisecond}, RecentProbes: 100, RecentFailures: failed}
		return l
	}
	if r := checkLinkProbe(link(20*time.Second, 3)); !r.OK || !strings.Contains(r.Message, "3 of the last 100 probes failed") {
		t.Errorf("fresh status: %+v, want ok with its loss", r)
	}
	if r := checkLinkProbe(link(time.Hour, 0)); r.OK || !strings.Contains(r.Message, "stale") {
		t.Errorf("status an hour old: %+v, want a failure saying it is stale", r)
	}
}
