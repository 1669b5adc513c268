package gateway

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestClaimsResolve(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	mirror := types.NamespacedName{Namespace: "payments", Name: "ledger-east"}
	forged := types.NamespacedName{Namespace: "tenant", Name: "ledger-east"}
	older := types.NamespacedName{Namespace: "tenant", Name: "old"}
	noHolder := func(int32) (types.NamespacedName, bool) { return types.NamespacedName{}, false }

	cs := claims[string]{}
	cs.add(20001, forged, t0.Add(time.Hour), "forged")
	cs.add(20001, mirror, t0, "mirror")
	cs.add(20002, mirror, t0, "alone")
	won, conflicts := cs.resolve(noHolder)
	if won[20001].value != "mirror" || won[20002].value != "alone" {
		t.Fatalf("a port not served yet goes to the oldest claim: %+v", won)
	}
	if len(conflicts) != 1 || conflicts[0] != "port 20001: payments/ledger-east is served, tenant/ledger-east also claims it" {
		t.Fatalf("conflicts: %q", conflicts)
	}

	// A holder keeps its port while it claims it, even against an older
	// object that claims it later (a slice relabelled to look like a
	// mirror keeps its creation time).
	cs.add(20001, older, t0.Add(-time.Hour), "older")
	held := func(port int32) (types.NamespacedName, bool) { return mirror, port == 20001 }
	if won, _ := cs.resolve(held); won[20001].value != "mirror" {
		t.Fatalf("the holder lost its port: %+v", won[20001])
	}
	// A holder that no longer claims the port gives it up.
	gone := func(int32) (types.NamespacedName, bool) {
		return types.NamespacedName{Namespace: "x", Name: "gone"}, true
	}
	if won, _ := cs.resolve(gone); won[20001].value != "older" {
		t.Fatalf("want the oldest claim once the holder is gone: %+v", won[20001])
	}
	// Claims of one second are ordered by name, whatever the order seen.
	a := claims[string]{}
	a.add(1, forged, t0, "tenant")
	a.add(1, mirror, t0, "payments")
	b := claims[string]{}
	b.add(1, mirror, t0, "payments")
	b.add(1, forged, t0, "tenant")
	wa, _ := a.resolve(noHolder)
	wb, _ := b.resolve(noHolder)
	if wa[1].value != wb[1].value || wa[1].value != "payments" {
		t.Fatalf("the pick depends on the order: %q, %q", wa[1].value, wb[1].value)
	}
}
