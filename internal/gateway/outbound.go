package gateway

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/tcpstate"
)

// route is what one outbound port leads to.
type route struct {
	cluster   string
	authority string
}

// desiredRoutes reads the mirrors' EndpointSlices: every port of a slice
// managed by backbone is a gateway port allocated to a mirror Service port,
// and leads to the remote service that mirror stands for. A port two
// slices claim is resolved by syncListeners.
func (g *Gateway) desiredRoutes(ctx context.Context) (claims[route], error) {
	var slices discoveryv1.EndpointSliceList
	if err := g.view.cache.List(ctx, &slices, client.MatchingLabels{discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy}); err != nil {
		return nil, err
	}
	routes := claims[route]{}
	for _, sl := range slices.Items {
		if sl.Labels[v1alpha1.HeadlessMirrorLabel] == "true" {
			continue // its endpoints are per-pod mirrors, which have their own ports
		}
		svcName := sl.Labels[discoveryv1.LabelServiceName]
		var svc corev1.Service
		if err := g.view.cache.Get(ctx, types.NamespacedName{Namespace: sl.Namespace, Name: svcName}, &svc); err != nil {
			continue
		}
		cluster := svc.Labels[v1alpha1.MirroredFromLabel]
		remote := svc.Annotations[v1alpha1.RemoteNameAnnotation]
		if cluster == "" || remote == "" {
			continue
		}
		owner := types.NamespacedName{Namespace: sl.Namespace, Name: sl.Name}
		for _, p := range sl.Ports {
			if p.Port == nil {
				continue
			}
			for _, sp := range svc.Spec.Ports {
				if sp.Name != ptrOr(p.Name, "") {
					continue
				}
				a := Authority{Hostname: svc.Annotations[v1alpha1.RemoteHostnameAnnotation], Service: remote, Namespace: svc.Namespace, Port: sp.Port}
				routes.add(*p.Port, owner, sl.CreationTimestamp.Time, route{cluster: cluster, authority: a.String()})
			}
		}
	}
	return routes, nil
}

// listener is one outbound port.
type listener struct {
	l     net.Listener
	owner types.NamespacedName // the EndpointSlice it serves
	mu    sync.RWMutex
	route route
}

func (l *listener) current() route {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.route
}

// syncListeners opens a listener for every new route, retargets changed
// ones and closes those gone (connections already open are left to end).
func (g *Gateway) syncListeners(ctx context.Context) error {
	var links v1alpha1.LinkList
	if err := g.view.cache.List(ctx, &links, client.InNamespace(v1alpha1.SystemNamespace)); err != nil {
		return err
	}
	g.pool.Update(links.Items)
	if err := g.syncEgressListeners(ctx); err != nil {
		g.log.Warn("egress listeners", "err", err)
	}

	claimed, err := g.desiredRoutes(ctx)
	if err != nil {
		return err
	}
	g.lmu.Lock()
	defer g.lmu.Unlock()
	if g.draining.Load() {
		return nil
	}
	routes, conflicts := claimed.resolve(func(port int32) (types.NamespacedName, bool) {
		l, ok := g.listeners[port]
		if !ok {
			return types.NamespacedName{}, false
		}
		return l.owner, true
	})
	g.reportConflicts(outbound, conflicts)
	var errs []error
	for port, c := range routes {
		r := c.value
		if l, ok := g.listeners[port]; ok {
			l.mu.Lock()
			l.route, l.owner = r, c.owner
			l.mu.Unlock()
			continue
		}
		addr := net.JoinHostPort(g.opts.OutboundBindIP, strconv.Itoa(int(port)))
		nl, err := net.Listen("tcp", addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l := &listener{l: nl, owner: c.owner, route: r}
		g.listeners[port] = l
		g.log.Info("listening for mirror", "address", addr, "peer_cluster", r.cluster, "target", r.authority)
		go g.acceptOutbound(ctx, l)
	}
	for port, l := range g.listeners {
		if _, ok := routes[port]; !ok {
			_ = l.l.Close()
			delete(g.listeners, port)
			g.log.Info("closed mirror port", "port", port)
		}
	}
	g.metrics.listeners.Set(float64(len(g.listeners)))
	return errors.Join(errs...)
}

func (g *Gateway) acceptOutbound(ctx context.Context, l *listener) {
	for {
		c, err := l.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			g.log.Warn("accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		go g.serveOutbound(ctx, c, l.current())
	}
}

// serveOutbound turns one application connection into one tunnel stream.
func (g *Gateway) serveOutbound(ctx context.Context, app net.Conn, r route) {
	g.drain.add()
	defer g.drain.done()
	defer func() { _ = app.Close() }()
	// ctx ends at the drain timeout: a tunnel still open then fails the
	// application's connection, which an exit would end cleanly (FIN)
	// after a cut-off answer.
	stop := context.AfterFunc(ctx, func() { tcpstate.Abort(app) })
	defer stop()
	if upload := g.tunnelOutbound(ctx, app, r); upload != nil {
		// The answer ended before the application's request did: what
		// it still sends is read and dropped, so that closing does not
		// reset the connection and lose the end of the answer.
		linger(ctx, app, upload)
	}
}

// tunnelOutbound carries app's connection through a stream. It returns,
// when the answer ended cleanly while the application may still send,
// what is closed once the stream's upload no longer reads app.
func (g *Gateway) tunnelOutbound(ctx context.Context, app net.Conn, r route) (lingerAfter <-chan struct{}) {
	start := time.Now()
	st, err := g.pool.OpenStream(ctx, r.cluster, r.authority, app)
	if err != nil {
		g.metrics.streams.WithLabelValues(outbound, r.cluster, "refused").Inc()
		g.log.Warn("tunnel failed", "peer_cluster", r.cluster, "target", r.authority, "err", err)
		tcpstate.Abort(app) // the application sees a failed connection, not an empty answer
		return nil
	}
	defer func() { _ = st.Close() }()
	m := g.metrics.streamSeries(outbound, r.cluster)
	m.active.Inc()
	defer m.active.Dec()
	defer func() { m.duration.Observe(time.Since(start).Seconds()) }()

	// ended counts the stream out once its upload has stopped.
	ended := func(result string) {
		_ = st.WaitSent()
		m.sent.Add(float64(st.Sent()))
		m.ended(result)
	}

	// The application's bytes flow into the stream as they come (the
	// transport reads them); what comes back is copied here.
	n, err := st.Down.WriteTo(app)
	m.received.Add(float64(n))
	if !isEOF(err) {
		_ = st.Down.Close() // ends the stream, and its context
		// The stream was reset (the backend or the peer gateway failed):
		// so is the application's connection, not ended as if complete.
		tcpstate.Abort(app)
		ended("error")
		return nil
	}
	// The remote side is done sending; the application's request goes on
	// until it ends it too (TCP half-close), or the peer stops taking it.
	st.ShutSource(app)
	quiet := !st.WaitUpload(ctx)
	_ = st.Down.Close() // ends the stream if it is still open, and its context
	switch {
	case quiet:
		// The application went quiet with its side open: the tunnel
		// ends as it began, its connection closed, the stream reset.
		ended("ok") // its answer was delivered whole
		return nil
	case ctx.Err() != nil || st.EndedBadly():
		// The peer's side failed (its gateway gone, the stream reset)
		// or this gateway's drain ran out while the application was
		// still sending: its request was cut off.
		tcpstate.Abort(app)
		ended("error")
		return nil
	}
	result := "ok"
	if e := st.WaitSent(); e != nil {
		result = "error"
	}
	ended(result)
	if unread, upload := st.Unread(); unread && result == "ok" {
		return upload
	}
	return nil
}
