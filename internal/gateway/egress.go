package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/origin"
	"github.com/backbone-mesh/backbone/internal/targets"
)

// The egress contract with the EgressTarget reconciler (package targets).
const (
	egressTargetLabel    = targets.EgressTargetLabel
	egressPortAnnotation = targets.EgressPortAnnotation
)

func (g *Gateway) watchedKinds() []client.Object {
	kinds := []client.Object{&corev1.Service{}, &discoveryv1.EndpointSlice{}, &v1alpha1.Link{}, &v1alpha1.EgressTarget{}}
	return kinds
}

// egressTarget returns the egress target a Service stands for, if it is
// one served by this cluster.
func (g *Gateway) egressTarget(ctx context.Context, svc *corev1.Service) (origin.Target, bool, error) {
	name, ok := svc.Labels[egressTargetLabel]
	if !ok {
		return origin.Target{}, false, nil
	}
	var et v1alpha1.EgressTarget
	if err := g.view.cache.Get(ctx, types.NamespacedName{Namespace: svc.Namespace, Name: name}, &et); err != nil {
		return origin.Target{}, true, fmt.Errorf("egress target %s/%s: %w", svc.Namespace, name, err)
	}
	if et.Spec.Environment != g.opts.ClusterName {
		return origin.Target{}, true, fmt.Errorf("egress target %s/%s is served by %s, not %s", svc.Namespace, name, et.Spec.Environment, g.opts.ClusterName)
	}
	return targetOf(&et), true, nil
}

func targetOf(et *v1alpha1.EgressTarget) origin.Target { return targets.TargetOf(et) }

// egressListener serves local applications of this cluster that call an
// egress target directly (its Service's endpoints are this gateway).
type egressListener struct {
	l       net.Listener
	service types.NamespacedName
}

func (g *Gateway) syncEgressListeners(ctx context.Context) error {
	var svcs corev1.ServiceList
	if err := g.view.cache.List(ctx, &svcs, client.HasLabels{egressTargetLabel}); err != nil {
		return err
	}
	claimed := claims[struct{}]{}
	for _, svc := range svcs.Items {
		port, err := strconv.Atoi(svc.Annotations[egressPortAnnotation])
		if err != nil || port < 1 || port > 65535 {
			continue
		}
		if _, ok, err := g.egressTarget(ctx, &svc); !ok || err != nil {
			continue
		}
		claimed.add(int32(port), types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, svc.CreationTimestamp.Time, struct{}{})
	}
	g.lmu.Lock()
	defer g.lmu.Unlock()
	if g.draining.Load() {
		return nil
	}
	want, conflicts := claimed.resolve(func(port int32) (types.NamespacedName, bool) {
		l, ok := g.egressListeners[port]
		if !ok {
			return types.NamespacedName{}, false
		}
		return l.service, true
	})
	g.reportConflicts("egress", conflicts)
	var errs []error
	for port, c := range want {
		svc := c.owner
		if l, ok := g.egressListeners[port]; ok && l.service == svc {
			continue
		} else if ok {
			_ = l.l.Close()
		}
		nl, err := net.Listen("tcp", net.JoinHostPort(g.opts.OutboundBindIP, strconv.Itoa(int(port))))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		el := &egressListener{l: nl, service: svc}
		g.egressListeners[port] = el
		g.log.Info("listening for egress target", "address", nl.Addr().String(), "service", svc.String())
		go g.acceptEgress(ctx, el)
	}
	for port, l := range g.egressListeners {
		if _, ok := want[port]; !ok {
			_ = l.l.Close()
			delete(g.egressListeners, port)
		}
	}
	return errors.Join(errs...)
}

// acceptEgress serves a local egress port; ctx is the gateway's streams'
// context, which ends at the drain timeout.
func (g *Gateway) acceptEgress(ctx context.Context, el *egressListener) {
	for {
		c, err := el.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		go func() {
			g.drain.add()
			defer g.drain.done()
			var svc corev1.Service
			if err := g.view.cache.Get(ctx, el.service, &svc); err != nil {
				_ = c.Close()
				return
			}
			t, ok, err := g.egressTarget(ctx, &svc)
			if !ok || err != nil {
				_ = c.Close()
				return
			}
			if err := g.origin.Serve(ctx, c, t, g.opts.ClusterName+" (local "+hostOf(c.RemoteAddr())+")"); err != nil {
				g.log.Warn("egress", "target", t.Name, "err", err)
			}
		}()
	}
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}
