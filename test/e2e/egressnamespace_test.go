package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/gateway"
	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestEgressTargetInItsOwnNamespace: an egress target rendered with
// `backbone render --namespace egress` is served by east's gateway from
// that namespace, mirrored into the same namespace in west, and reached
// from west through both gateways; its probe and status work there too.
func TestEgressTargetInItsOwnNamespace(t *testing.T) {
	testenv.RequireNetns(t)
	scoreL := testenv.ListenNetns(t, 14)
	caPEM := creditScoreServer(t, scoreL)
	_, scorePort, _ := net.SplitHostPort(scoreL.Addr().String())
	resolve := creditScoreHost + "=" + scoreL.Addr().(*net.TCPAddr).IP.String()

	// The platform makes the egress namespace in every cluster.
	m := startLinkedMesh(t, []string{"egress"}, "--egress-resolve", resolve)
	east, west, westGW, eastGW, westID := m.east, m.west, m.westGW, m.eastGW, m.westID
	ctx := context.Background()

	shuttle := filepath.Join(t.TempDir(), "shuttle.yaml")
	writeFile(t, shuttle, fmt.Sprintf(`targets:
  - hostName: resource-a
    dnsName: %s
    environment: east
    squad: maxus
    port: %s
    probePath: /healthz
    caBundle: |
%s
`, creditScoreHost, scorePort, indent(caPEM, "      ")))
	rendered := filepath.Join(t.TempDir(), "clusters")
	run(t, "render", "-f", shuttle, "--clusters", "east,west", "--namespace", "egress", "-o", rendered)
	eastObjs, err := os.ReadFile(filepath.Join(rendered, "east", "egresstarget-resource-a.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.ApplyYAML(ctx, east.Client, eastObjs, "flux"); err != nil {
		t.Fatal(err)
	}

	egressAddr := waitMirror(t, west, "egress", "resource-a-east", westGW.ip)
	waitListening(t, egressAddr)
	if body := get(t, "http://"+egressAddr+"/score?customer=42"); body != "score 742 for "+creditScoreHost {
		t.Fatalf("egress call answered %q", body)
	}
	// A tunnel to the target names its Service's port; another port of
	// the same Service name is refused, as for any Service (the
	// originator dials the target's own port whatever the authority said).
	wid, err := identity.Load(westID)
	if err != nil {
		t.Fatal(err)
	}
	pool := gateway.NewPool(wid, 5*time.Second, slog.New(slog.DiscardHandler), nil)
	defer pool.Close()
	pool.Ensure(v1alpha1.Link{Spec: v1alpha1.LinkSpec{TargetClusterName: "east",
		GatewayAddresses: []v1alpha1.GatewayAddress{{Host: eastGW.ip, Port: 4143}}, GatewayIdentity: "spiffe://" + trustDomain + "/cluster/east"}})
	for port, want := range map[int32]bool{80: true, 81: false} {
		app, peer := net.Pipe()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := pool.OpenStream(sctx, "east", gateway.Authority{Service: "resource-a", Namespace: "egress", Port: port}.String(), app)
		cancel()
		if (err == nil) != want {
			t.Errorf("a tunnel to egress/resource-a port %d: %v, want opened=%v", port, err, want)
		}
		if st != nil {
			_ = st.Close()
		}
		_ = peer.Close()
	}
	waitFor(t, 10*time.Second, "the egress access log line in east's gateway", func() bool {
		return strings.Contains(grepLine(eastGW.logBytes(), `"msg":"egress access"`), `"target":"egress/resource-a"`)
	})
	waitFor(t, 30*time.Second, "EgressTarget egress/resource-a Ready and alive", func() bool {
		var et v1alpha1.EgressTarget
		if east.Client.Get(ctx, types.NamespacedName{Namespace: "egress", Name: "resource-a"}, &et) != nil {
			return false
		}
		return meta.IsStatusConditionTrue(et.Status.Conditions, v1alpha1.ConditionReady) && et.Status.Alive != nil && *et.Status.Alive
	})
}
