package mirror_test

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestFailedDiscoveryKeepsServiceExportMirrors: whether the remote serves
// ServiceExports decides which of its Services are exported. A discovery
// that fails (a 503 from an API server under load) must not read as "no
// ServiceExports": that would delete every mirror of a Service exported
// by ServiceExport alone. The Link reports the failure, keeps the mirror,
// and syncs when discovery answers again.
func TestFailedDiscoveryKeepsServiceExportMirrors(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	var failDiscovery atomic.Int32
	proxy := testenv.DiscoveryProxy(t, east, &failDiscovery)
	createLink(t, west, "east", linkReaderKubeconfigCA(t, east, proxy.URL, testenv.ProxyCA(proxy)))

	if err := east.Client.Create(bg, service("shop", "payments", nil, 80)); err != nil {
		t.Fatal(err)
	}
	if err := east.Client.Create(bg, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"}}); err != nil {
		t.Fatal(err)
	}
	stop := runController(t, west)
	eventually(t, "payments-east is mirrored", func() bool { _, ok := get(west, "shop", "payments-east", &corev1.Service{}); return ok })
	eventually(t, "the Link reports Synced", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonSynced
	})
	stop()

	// A restarted controller finds discovery failing: the proxy's 503,
	// which the Link reports as such (a rejected token would read
	// CredentialsRejected, and name discovery too).
	failDiscovery.Store(http.StatusServiceUnavailable)
	runController(t, west)
	reportsThe503 := func(c *metav1.Condition) bool {
		return c != nil && c.Reason == mirror.ReasonRemoteUnreachable &&
			strings.Contains(c.Message, "discovery of "+mcsv1beta1.GroupVersion.String()+": the server is currently unable to handle the request")
	}
	eventually(t, "the Link reports the failed discovery, or the mirror is gone", func() bool {
		if _, ok := get(west, "shop", "payments-east", &corev1.Service{}); !ok {
			return true
		}
		return reportsThe503(linkReady(west, "east"))
	})
	time.Sleep(3 * time.Second) // two resyncs of the controller under test
	if _, ok := get(west, "shop", "payments-east", &corev1.Service{}); !ok {
		t.Fatal("the mirror of a Service exported by ServiceExport was deleted while discovery failed")
	}
	if c := linkReady(west, "east"); !reportsThe503(c) {
		t.Fatalf("while discovery fails the Link reports %+v, want the discovery's 503", c)
	}

	failDiscovery.Store(0)
	eventually(t, "the Link syncs once discovery answers", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonSynced
	})
	if _, ok := get(west, "shop", "payments-east", &corev1.Service{}); !ok {
		t.Fatal("payments-east is gone after discovery recovered")
	}
}

// TestServiceExportsServedLaterAreMirrored: a remote that did not serve
// ServiceExports when its watch began (the MCS API installed later, or
// its group not yet registered on an API server that just started) is
// asked again, and its ServiceExports are mirrored once it serves them —
// not only after the controller restarts or the credentials change.
func TestServiceExportsServedLaterAreMirrored(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	var notFound atomic.Int32
	notFound.Store(http.StatusNotFound)
	proxy := testenv.DiscoveryProxy(t, east, &notFound)
	createLink(t, west, "east", linkReaderKubeconfigCA(t, east, proxy.URL, testenv.ProxyCA(proxy)))
	if err := east.Client.Create(bg, service("shop", "cart", exported(), 80)); err != nil {
		t.Fatal(err)
	}
	if err := east.Client.Create(bg, service("shop", "payments", nil, 80)); err != nil {
		t.Fatal(err)
	}
	if err := east.Client.Create(bg, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"}}); err != nil {
		t.Fatal(err)
	}
	runController(t, west)
	eventually(t, "cart-east, exported by label, is mirrored", func() bool { _, ok := get(west, "shop", "cart-east", &corev1.Service{}); return ok })
	if _, ok := get(west, "shop", "payments-east", &corev1.Service{}); ok {
		t.Fatal("payments-east mirrored while the remote did not serve ServiceExports")
	}
	notFound.Store(0)
	eventually(t, "payments-east is mirrored once the remote serves ServiceExports", func() bool {
		_, ok := get(west, "shop", "payments-east", &corev1.Service{})
		return ok
	})
}
