package gateway

import (
	"fmt"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// claim is one object's claim on a listener port: a mirror's EndpointSlice
// on an outbound port, an egress target's Service on an egress port.
type claim[T any] struct {
	owner   types.NamespacedName
	created time.Time
	value   T
}

// before orders claims: the older object first, then by name.
func (c claim[T]) before(o claim[T]) bool {
	if !c.created.Equal(o.created) {
		return c.created.Before(o.created)
	}
	return c.owner.String() < o.owner.String()
}

// claims gathers the claims of one sync, by port.
type claims[T any] map[int32][]claim[T]

func (cs claims[T]) add(port int32, owner types.NamespacedName, created time.Time, v T) {
	cs[port] = append(cs[port], claim[T]{owner: owner, created: created, value: v})
}

// resolve gives every port one claim. The controller allocates a port only
// while no slice holds it, so two claims on a port mean an object written
// by someone else — a mistake, or a tenant after another namespace's
// traffic. Whoever holds the port keeps it while it still claims it; a
// port not yet served goes to the oldest claim. Left to the order a cache
// lists objects in, the listener would change hands from sync to sync.
// conflicts describes the claims passed over, one line each.
func (cs claims[T]) resolve(holder func(int32) (types.NamespacedName, bool)) (won map[int32]claim[T], conflicts []string) {
	won = make(map[int32]claim[T], len(cs))
	for port, list := range cs {
		best := 0
		h, held := holder(port)
		for i, c := range list {
			if held && c.owner == h {
				best = i
				break
			}
			if c.before(list[best]) {
				best = i
			}
		}
		won[port] = list[best]
		for i, c := range list {
			if i != best {
				conflicts = append(conflicts, fmt.Sprintf("port %d: %s is served, %s also claims it", port, list[best].owner, c.owner))
			}
		}
	}
	sort.Strings(conflicts)
	return won, conflicts
}

// reportConflicts logs the conflicts of one kind of listener that were
// not logged before (a sync runs on every change) and forgets those that
// ended. Called with g.lmu held.
func (g *Gateway) reportConflicts(kind string, conflicts []string) {
	now := make(map[string]bool, len(conflicts))
	for _, c := range conflicts {
		now[c] = true
		if !g.conflicts[kind][c] {
			g.log.Warn("two objects claim one port; only one is served", "listeners", kind, "conflict", c)
		}
	}
	g.conflicts[kind] = now
	g.metrics.portConflicts.WithLabelValues(kind).Set(float64(len(conflicts)))
}
