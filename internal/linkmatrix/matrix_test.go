package linkmatrix

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

func link(target string, alive bool, p50 time.Duration) v1alpha1.Link {
	l := v1alpha1.Link{Spec: v1alpha1.LinkSpec{TargetClusterName: target}}
	l.Status.Probe = &v1alpha1.LinkProbeStatus{Alive: alive, LatencyP50: &metav1.Duration{Duration: p50}}
	return l
}

func TestTableLooksLikeTheProbeSlide(t *testing.T) {
	m := Build(map[string][]v1alpha1.Link{
		"aws":   {link("gcp", true, 30*time.Millisecond), link("azure", true, 25*time.Millisecond)},
		"azure": {link("aws", true, 60*time.Millisecond), link("gcp", false, 20*time.Millisecond)},
		"gcp":   {{Spec: v1alpha1.LinkSpec{TargetClusterName: "aws"}}},
	}, map[string]error{"onprem": errors.New("connection refused")})
	var out bytes.Buffer
	if err := WriteTable(&out, m); err != nil {
		t.Fatal(err)
	}
	want := `FROM \ TO     aws   azure     gcp   onprem
aws             -   25 ms   30 ms        ·
azure       60 ms       -    DEAD        ·
gcp             ?       ·       -        ·
onprem          ·       ·       ·        -
onprem: could not read links: connection refused
`
	if got := out.String(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	if len(m.Links) != 5 || m.Links[0].Source != "aws" || m.Links[0].Target != "azure" {
		t.Errorf("links not sorted by source then target: %+v", m.Links)
	}
	if !strings.Contains(m.Errors["onprem"], "refused") {
		t.Errorf("errors: %v", m.Errors)
	}
}

func TestCellsCarryCertificates(t *testing.T) {
	soon, later := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
	withCerts := link("east", true, 10*time.Millisecond)
	withCerts.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionCertificatesValid, Status: metav1.ConditionTrue, Reason: "Expiring"}}
	withCerts.Status.Certificates = &v1alpha1.LinkCertificatesStatus{
		Local: &v1alpha1.CertificateInfo{NotAfter: metav1.NewTime(later)},
		Peer:  &v1alpha1.CertificateInfo{NotAfter: metav1.NewTime(soon)},
	}
	m := Build(map[string][]v1alpha1.Link{"west": {withCerts, link("north", true, time.Millisecond)}}, nil)
	east, north := m.Links[0], m.Links[1]
	if east.Certificates != "Expiring" || east.CertificatesExpire == nil || !east.CertificatesExpire.Equal(soon) {
		t.Errorf("west -> east: certificates %q expiring %v, want Expiring at the peer's %v", east.Certificates, east.CertificatesExpire, soon)
	}
	if north.Certificates != "" || north.CertificatesExpire != nil {
		t.Errorf("a Link without certificate status got %q %v", north.Certificates, north.CertificatesExpire)
	}
}

// TestOldStatusIsStale: a status the source's controller stopped
// refreshing is shown stale, not as the live figures it last wrote; the
// loss of recent probes travels with the cell.
func TestOldStatusIsStale(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	fresh := link("east", true, 30*time.Millisecond)
	fresh.Status.Probe.LastProbeTime = &metav1.Time{Time: now.Add(-40 * time.Second)}
	fresh.Status.Probe.RecentProbes, fresh.Status.Probe.RecentFailures = 100, 7
	old := link("north", true, 30*time.Millisecond)
	old.Status.Probe.LastProbeTime = &metav1.Time{Time: now.Add(-time.Hour)}
	m := BuildAt(now, map[string][]v1alpha1.Link{"west": {fresh, old}}, nil)
	east, north := m.Links[0], m.Links[1]
	if east.State != "up" || east.LossPercent == nil || *east.LossPercent != 7 {
		t.Errorf("west -> east probed 40 s ago with 7 of 100 failed: state %q, loss %v; want up, 7%%", east.State, east.LossPercent)
	}
	if north.State != "stale" || cellText(&north) != "STALE" {
		t.Errorf("west -> north probed an hour ago: state %q, shown %q; want stale, STALE", north.State, cellText(&north))
	}
}

// TestTwoLinksToOneClusterAreOneCell: of two Links from one cluster to
// another (a Link renamed by creating the new one first) the matrix shows
// the one the controller probes — the older — not whichever came last.
func TestTwoLinksToOneClusterAreOneCell(t *testing.T) {
	older := link("east", true, 30*time.Millisecond)
	older.Name, older.CreationTimestamp = "east", metav1.NewTime(time.Now().Add(-time.Hour))
	newer := v1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Name: "east-b", CreationTimestamp: metav1.NewTime(time.Now())},
		Spec: v1alpha1.LinkSpec{TargetClusterName: "east"}} // not probed
	for _, order := range [][]v1alpha1.Link{{older, newer}, {newer, older}} {
		m := Build(map[string][]v1alpha1.Link{"west": order}, nil)
		if len(m.Links) != 1 || m.Links[0].State != "up" {
			t.Errorf("cells %+v, want one: the older Link's, up", m.Links)
		}
	}
	// The older one going: the newer one's cell.
	going := older
	going.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	m := Build(map[string][]v1alpha1.Link{"west": {going, newer}}, nil)
	if len(m.Links) != 1 || m.Links[0].State != "unknown" {
		t.Errorf("cells %+v, want the newer Link's, not probed yet", m.Links)
	}
}
