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
