package targets

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestPlanPort(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	svc := func(name string, age int) portClaim {
		return portClaim{service: types.NamespacedName{Namespace: "backbone-system", Name: name}, created: t0.Add(-time.Duration(age) * time.Hour)}
	}
	own := types.NamespacedName{Namespace: "backbone-system", Name: "ledger"}
	r := portRange{low: 30000, high: 30003}
	tests := map[string]struct {
		claims map[int32][]portClaim
		held   int32
		next   int32
		want   int32
		fresh  bool
		err    bool
	}{
		"keeps the port a Service holds alone": {
			claims: map[int32][]portClaim{30002: {svc("ledger", 1)}, 30000: {svc("a", 2)}},
			held:   30002, want: 30002,
		},
		"keeps a shared port when the Service is the older": {
			claims: map[int32][]portClaim{30000: {svc("a", 1), svc("ledger", 2)}},
			held:   30000, want: 30000,
		},
		"moves the younger Service off a shared port": {
			claims: map[int32][]portClaim{30000: {svc("ledger", 1), svc("zulu", 2)}},
			held:   30000, want: 30001, fresh: true,
		},
		"moves, of two as old, the one whose name sorts last": {
			claims: map[int32][]portClaim{30000: {svc("ledger", 1), svc("a", 1)}},
			held:   30000, want: 30001, fresh: true,
		},
		"hands out the first free port from next, not the lowest": {
			claims: map[int32][]portClaim{30000: {svc("a", 1)}},
			next:   30002, want: 30002, fresh: true,
		},
		"wraps around to the start of the range": {
			claims: map[int32][]portClaim{30003: {svc("a", 1)}, 30001: {svc("b", 1)}},
			next:   30003, want: 30000, fresh: true,
		},
		"starts at the range's start when next is outside it": {
			claims: map[int32][]portClaim{30000: {svc("a", 1)}},
			next:   40000, want: 30001, fresh: true,
		},
		"moves a Service whose port is outside the range into it": {
			claims: map[int32][]portClaim{20000: {svc("ledger", 1)}},
			held:   20000, want: 30000, fresh: true,
		},
		"fails when every port is claimed": {
			claims: map[int32][]portClaim{30000: {svc("a", 1)}, 30001: {svc("b", 1)}, 30002: {svc("c", 1)}, 30003: {svc("d", 1)}},
			err:    true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, fresh, err := planPort(tc.claims, own, tc.held, r, tc.next)
			if (err != nil) != tc.err || got != tc.want || fresh != tc.fresh {
				t.Fatalf("got %d fresh=%v err=%v, want %d fresh=%v err=%v", got, fresh, err, tc.want, tc.fresh, tc.err)
			}
		})
	}
}
