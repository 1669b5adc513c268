package targets

import (
	"context"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// portClaim is one egress Service's claim on a gateway port.
type portClaim struct {
	service types.NamespacedName
	created time.Time
}

// before orders the claims on one port: the older Service first, then by
// name — the order in which the gateway serves a port two Services claim
// (internal/gateway/claims.go), so the Service the controller lets keep
// a port is the one the gateway already serves.
func (c portClaim) before(o portClaim) bool {
	if !c.created.Equal(o.created) {
		return c.created.Before(o.created)
	}
	return c.service.String() < o.service.String()
}

// portRange is the gateway port range egress targets get ports from.
type portRange struct{ low, high int32 }

// planPort is the gateway port of the Service own, which holds port held
// (0: none yet): held when no older Service claims it too, or else a port
// nobody claims — the first from next on (wrapping), so that a port
// handed out just before, whose Service the claims (read from a cache)
// may not show yet, is not handed out again. fresh says a new port was
// handed out.
func planPort(claims map[int32][]portClaim, own types.NamespacedName, held int32, r portRange, next int32) (port int32, fresh bool, err error) {
	// A port outside the range (changed since, or written by hand) is
	// moved into it.
	if held >= r.low && held <= r.high {
		holder := portClaim{service: own}
		for _, c := range claims[held] {
			if c.service == own {
				holder = c
			}
		}
		for _, c := range claims[held] {
			if c.before(holder) {
				holder = c
			}
		}
		if holder.service == own {
			return held, false, nil
		}
	}
	size := r.high - r.low + 1
	start := r.low
	if next >= r.low && next <= r.high {
		start = next
	}
	for i := range size {
		p := r.low + (start-r.low+i)%size
		if len(claims[p]) == 0 {
			return p, true, nil
		}
	}
	return 0, false, fmt.Errorf("no free egress gateway port in %d-%d", r.low, r.high)
}

// port returns the gateway port of the target's Service. Allocations live
// on the Services (EgressPortAnnotation); the Services are read from the
// controller's cache, which may lag behind the writes of the reconciles
// just before, hence the moving start of the search (r.nextPort), and
// two Services on one port — left by a lagging cache before this rule, an
// interrupted write or a hand edit — are separated: the younger moves.
func (r *EgressReconciler) port(ctx context.Context, et *v1alpha1.EgressTarget) (int32, error) {
	var svcs corev1.ServiceList
	if err := r.client.List(ctx, &svcs, client.HasLabels{EgressTargetLabel}); err != nil {
		return 0, err
	}
	own := types.NamespacedName{Namespace: et.Namespace, Name: et.Spec.HostName}
	claims := map[int32][]portClaim{}
	held := int32(0)
	for _, s := range svcs.Items {
		p, err := strconv.Atoi(s.Annotations[EgressPortAnnotation])
		if err != nil || p < 1 || p > 65535 {
			continue
		}
		key := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		if key == own && s.Labels[EgressTargetLabel] != et.Name {
			continue // not this target's: service() reports the conflict
		}
		if key == own {
			held = int32(p)
		}
		claims[int32(p)] = append(claims[int32(p)], portClaim{service: key, created: s.CreationTimestamp.Time})
	}
	r.portMu.Lock()
	defer r.portMu.Unlock()
	p, fresh, err := planPort(claims, own, held, portRange{r.opts.Ports.Low, r.opts.Ports.High}, r.nextPort)
	if err != nil {
		return 0, err
	}
	if fresh {
		r.nextPort = p + 1
		if held != 0 {
			r.opts.Log.Warn("egress target moved to another gateway port: an older Service holds its port",
				"target", et.Namespace+"/"+et.Name, "from", held, "to", p, "holders", len(claims[held]))
		}
	}
	return p, nil
}
