package mirror_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestANamespaceTheControllerMayNotCreateFailsOnlyItsMirrors: a Link that
// asks for namespaces to be created, in a cluster whose controller was
// installed without the right to create them, mirrors what goes to the
// namespaces that exist, and says what to install for the others —
// instead of stopping every whole-Link pass at the first namespace.
func TestANamespaceTheControllerMayNotCreateFailsOnlyItsMirrors(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	if err := east.CreateNamespace("ledger"); err != nil {
		t.Fatal(err)
	}
	// Exported before the controller starts: mirrored by the first
	// whole-Link pass, the one that creates namespaces.
	for _, ns := range []string{"ledger", "shop"} {
		if err := east.Client.Create(bg, service(ns, "api", exported(), 80)); err != nil {
			t.Fatal(err)
		}
	}
	link := createLink(t, west, "east", linkReaderKubeconfig(t, east, east.Config.Host))
	link.Spec.CreateNamespaces = true
	if err := west.Client.Update(bg, link); err != nil {
		t.Fatal(err)
	}
	runController(t, west) // as installed by default: no namespace creation

	eventually(t, "shop/api-east is mirrored", func() bool {
		_, ok := get(west, "shop", "api-east", &corev1.Service{})
		return ok
	})
	eventually(t, "the Link says which namespace it may not create, and what to install", func() bool {
		c := linkReady(west, "east")
		return c != nil && strings.Contains(c.Message, "creating namespace ledger") && strings.Contains(c.Message, "controller.createNamespaces=true")
	})
	if err := west.Client.Get(bg, types.NamespacedName{Name: "ledger"}, &corev1.Namespace{}); err == nil {
		t.Error("namespace ledger exists: the controller was not refused, the test proves nothing")
	}
}
