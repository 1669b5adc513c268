package gateway

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/faultproxy"
)

// TestSeveralGatewayAddressesSpreadAndFailOver: a Link with two addresses
// of the peer's gateway (two replicas: here two proxies in front of one
// gateway, so each address's connections can be counted). Callers spread
// their pooled connections over both, and when one address goes away
// (connections reset, new ones refused) streams go on through the other.
func TestSeveralGatewayAddressesSpreadAndFailOver(t *testing.T) {
	const dialTimeout = 500 * time.Millisecond
	var a, b *faultproxy.Proxy
	pp := startPeer(t, livenessPeer(0), dialTimeout, func(addr string) string {
		var err error
		if a, err = faultproxy.New("127.0.0.1:0", addr); err != nil {
			t.Fatal(err)
		}
		if b, err = faultproxy.New("127.0.0.1:0", addr); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		return a.Addr()
	})
	link := v1alpha1.Link{Spec: v1alpha1.LinkSpec{TargetClusterName: "east", GatewayIdentity: "spiffe://bench.test/cluster/east"}}
	for _, p := range []*faultproxy.Proxy{a, b} {
		host, port, _ := net.SplitHostPort(p.Addr())
		n, _ := strconv.Atoi(port)
		link.Spec.GatewayAddresses = append(link.Spec.GatewayAddresses, v1alpha1.GatewayAddress{Host: host, Port: int32(n)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Spread: every caller (a gateway replica of west) starts at a random
	// address, so 16 of them use both.
	for range 16 {
		pool := NewPool(pp.pool.identity, dialTimeout, slog.New(slog.DiscardHandler), nil)
		pool.Ensure(link)
		if err := echoes(ctx, pool, echoAuthority); err != nil {
			t.Fatal(err)
		}
		pool.Close()
	}
	if a.Accepted() == 0 || b.Accepted() == 0 {
		t.Fatalf("16 callers' connections went %d to the first address and %d to the second, want both used", a.Accepted(), b.Accepted())
	}
	t.Logf("16 callers: %d connections to the first address, %d to the second", a.Accepted(), b.Accepted())

	// Fail over: whichever address the pool uses goes away.
	pool := pp.pool
	pool.Ensure(link)
	beforeA := a.Accepted()
	if err := echoes(ctx, pool, echoAuthority); err != nil {
		t.Fatal(err)
	}
	used, other := a, b
	if a.Accepted() == beforeA {
		used, other = b, a
	}
	otherBefore := other.Accepted()
	used.SetRefuse(true)
	used.ResetAll()
	failed := 0
	for i := range 20 {
		if err := echoes(ctx, pool, echoAuthority); err != nil {
			failed++
			t.Logf("stream %d after the address went away: %v", i, err)
		}
	}
	if failed > 1 {
		t.Errorf("%d of 20 streams failed after one of two gateway addresses went away, want at most the first", failed)
	}
	if other.Accepted() == otherBefore {
		t.Error("no connection went to the remaining address")
	}
}

// TestForgetDropsAPeer: the peer of a deleted Link leaves the pool, and
// its idle connections close; the other peers stay.
func TestForgetDropsAPeer(t *testing.T) {
	pp := startPeer(t, livenessPeer(0), time.Second, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := pp.pool.Probe(ctx, "east"); err != nil {
		t.Fatal(err)
	}
	pp.pool.Ensure(v1alpha1.Link{Spec: v1alpha1.LinkSpec{TargetClusterName: "north",
		GatewayAddresses: []v1alpha1.GatewayAddress{{Host: "127.0.0.1", Port: 1}}, GatewayIdentity: "spiffe://bench.test/cluster/north"}})
	pp.pool.Forget("east")
	if _, err := pp.pool.Probe(ctx, "east"); err == nil {
		t.Error("a probe of a forgotten peer succeeded")
	}
	if _, err := pp.pool.peer("north"); err != nil {
		t.Errorf("the other peer went too: %v", err)
	}
}
