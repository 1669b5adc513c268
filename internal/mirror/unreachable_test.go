package mirror_test

import (
	"net/url"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/backbone-mesh/backbone/internal/faultproxy"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestRemoteDownAtStartIsNotACredentialsProblem: a controller that
// starts while the remote API server is away reports it unreachable —
// not the credentials invalid, which would send an operator to rotate
// credentials that are fine — keeps the mirrors, and syncs when it is
// back.
func TestRemoteDownAtStartIsNotACredentialsProblem(t *testing.T) {
	clusters := testenv.Start(t, "east", "west")
	east, west := clusters["east"], clusters["west"]
	for _, c := range []*testenv.Cluster{east, west} {
		if err := c.CreateNamespace("shop"); err != nil {
			t.Fatal(err)
		}
	}
	registerGateway(t, west, "192.0.2.2")
	apiURL, _ := url.Parse(east.Config.Host)
	proxy, err := faultproxy.New("127.0.0.1:0", apiURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proxy.Close() }()
	createLink(t, west, "east", linkReaderKubeconfig(t, east, "https://"+proxy.Addr()))
	if err := east.Client.Create(bg, service("shop", "orders", exported(), 80)); err != nil {
		t.Fatal(err)
	}
	stop := runController(t, west)
	eventually(t, "orders-east is mirrored", func() bool { _, ok := get(west, "shop", "orders-east", &corev1.Service{}); return ok })
	stop()

	proxy.SetRefuse(true)
	proxy.ResetAll()
	runController(t, west)
	eventually(t, "the Link reports the outage", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason != mirror.ReasonSynced
	})
	if c := linkReady(west, "east"); c.Reason != mirror.ReasonRemoteUnreachable {
		t.Fatalf("remote away at start: Ready %s (%s), want %s", c.Reason, c.Message, mirror.ReasonRemoteUnreachable)
	}
	if _, ok := get(west, "shop", "orders-east", &corev1.Service{}); !ok {
		t.Fatal("the mirror was deleted during the outage")
	}
	proxy.SetRefuse(false)
	eventually(t, "the Link syncs once the remote is back", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonSynced
	})
}

// TestLinkTargetIsImmutable: the API server refuses to point a Link at
// another cluster; the mirrors of the first are named after it and would
// be left behind by a Link that no longer selects them.
func TestLinkTargetIsImmutable(t *testing.T) {
	west := testenv.Start(t, "west")["west"]
	link := createLink(t, west, "east", []byte("unused"))
	link.Spec.TargetClusterName = "north"
	err := west.Client.Update(bg, link)
	if err == nil || !strings.Contains(err.Error(), "targetClusterName is immutable") {
		t.Fatalf("retargeting a Link: %v, want it refused as immutable", err)
	}
}
