package targets_test

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// notACertificate passes the CRD's schema (caBundle is any string) and
// holds no certificate.
const notACertificate = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"

func systemKey(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: name}
}

// TestAnEgressTargetWithAnUnparseableCABundleIsNotServed: applied by hand
// (render would refuse it), such a target is reported and not exported;
// one that was served keeps its Service as it was until the bundle is
// fixed.
func TestAnEgressTargetWithAnUnparseableCABundleIsNotServed(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	withGateway(t, c)
	start(t, asController(t, c), controller.Options{})

	createEgressTarget(t, c, "resource-a", func(s *v1alpha1.EgressTargetSpec) { s.CABundle = "not pem at all" })
	served := createEgressTarget(t, c, "ledger")
	eventually(t, "the served target's Service and slice", func() bool {
		svc, sl := egressPorts(c, "ledger")
		return svc != 0 && sl == svc
	})
	eventually(t, "the invalid bundle reported", func() bool {
		cond := egressReady(c, "resource-a")
		return cond != nil && cond.Status == "False" && cond.Reason == "InvalidSpec" && strings.Contains(cond.Message, "spec.caBundle")
	})
	if err := c.Client.Get(bg, systemKey("resource-a"), &corev1.Service{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a target with an invalid caBundle got a Service: %v", err)
	}

	var svc corev1.Service
	var sl discoveryv1.EndpointSlice
	if err := c.Client.Get(bg, systemKey("ledger"), &svc); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Get(bg, systemKey("ledger-egress"), &sl); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Get(bg, systemKey("ledger"), served); err != nil {
		t.Fatal(err)
	}
	served.Spec.CABundle = notACertificate
	if err := c.Client.Update(bg, served); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the edited target reported", func() bool {
		cond := egressReady(c, "ledger")
		return cond != nil && cond.Reason == "InvalidSpec" && strings.Contains(cond.Message, "spec.caBundle")
	})
	time.Sleep(time.Second) // a reconcile that would touch them has had time to
	var svcNow corev1.Service
	var slNow discoveryv1.EndpointSlice
	if err := c.Client.Get(bg, systemKey("ledger"), &svcNow); err != nil || svcNow.ResourceVersion != svc.ResourceVersion {
		t.Fatalf("the Service of the target whose bundle broke changed: %v (resourceVersion %s, was %s)", err, svcNow.ResourceVersion, svc.ResourceVersion)
	}
	if err := c.Client.Get(bg, systemKey("ledger-egress"), &slNow); err != nil || slNow.ResourceVersion != sl.ResourceVersion {
		t.Fatalf("the slice of the target whose bundle broke changed: %v", err)
	}
}

// TestEditingAnEgressTargetInPlaceRemovesWhatItNoLongerNeeds: a new
// hostName moves the Service and slice to the new name; a new environment
// takes them out of this cluster. Nothing of the old ones stays exported.
func TestEditingAnEgressTargetInPlaceRemovesWhatItNoLongerNeeds(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	withGateway(t, c)
	start(t, asController(t, c), controller.Options{})
	et := createEgressTarget(t, c, "resource-a")
	eventually(t, "the Service and slice", func() bool {
		svc, sl := egressPorts(c, "resource-a")
		return svc != 0 && sl == svc
	})
	gone := func(names ...string) bool {
		for _, n := range names {
			if !apierrors.IsNotFound(c.Client.Get(bg, systemKey(n), &corev1.Service{})) ||
				!apierrors.IsNotFound(c.Client.Get(bg, systemKey(n+"-egress"), &discoveryv1.EndpointSlice{})) {
				return false
			}
		}
		return true
	}

	if err := c.Client.Get(bg, systemKey(et.Name), et); err != nil {
		t.Fatal(err)
	}
	et.Spec.HostName = "resource-a-v2"
	if err := c.Client.Update(bg, et); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Service and slice under the new name, the old ones gone", func() bool {
		svc, sl := egressPorts(c, "resource-a-v2")
		return svc != 0 && sl == svc && gone("resource-a")
	})

	if err := c.Client.Get(bg, systemKey(et.Name), et); err != nil {
		t.Fatal(err)
	}
	et.Spec.Environment = "west"
	if err := c.Client.Update(bg, et); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Service and slice gone with the environment", func() bool {
		cond := egressReady(c, et.Name)
		return cond != nil && cond.Reason == "OtherEnvironment" && gone("resource-a-v2")
	})
}
