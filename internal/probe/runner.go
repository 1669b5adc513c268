package probe

import (
	"context"
	"crypto/x509"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// Func probes the gateway a Link points at and returns the round trip.
type Func func(ctx context.Context, link *v1alpha1.Link) (time.Duration, error)

// Defaults of the Link's spec.probe, for Links created before defaulting.
const (
	DefaultPeriod           = 3 * time.Second
	DefaultTimeout          = 2 * time.Second
	DefaultFailureThreshold = 3
	// statusRefresh bounds how stale status.probe may get while nothing
	// changes; changes of liveness are written at once.
	statusRefresh = 30 * time.Second
	// StaleAfter is how old a Link's status.probe.lastProbeTime may be
	// before readers (backbone links, the dashboard, backbone check) take
	// it for stale: the status is refreshed every 30 s while a controller
	// probes, so an older one means none does.
	StaleAfter = 2 * time.Minute
	windowSize = 100
)

// Runner probes every Link in Namespace. It is a controller-runtime
// Runnable that runs on the leader only, so one replica writes status.
type Runner struct {
	Client    client.Client
	Namespace string
	Cluster   string // this cluster, the probes' source
	Probe     Func
	Metrics   *Metrics
	Log       *slog.Logger
	// Resync is how often the Link list is re-read (default 1s).
	Resync time.Duration
	// Inspect, when set, makes a handshake of its own with each Link's
	// gateway to read the certificates on both ends: status.certificates
	// and the CertificatesValid condition. It runs every InspectPeriod
	// (default 5m), and sooner (at most every 30s) while probes fail.
	Inspect       InspectFunc
	InspectPeriod time.Duration
	// ExpiryWarning is how long before expiry a certificate is reported
	// Expiring (default DefaultExpiryWarning).
	ExpiryWarning time.Duration
	// Forget, when set, is called with a deleted Link once its probe
	// loop has stopped: the probe's connections to its gateway go.
	Forget func(link *v1alpha1.Link)
	// StatusWriteTimeout bounds each write of a Link's status (default
	// 10s). Status is written beside the probe loop, never in it: a slow
	// API server delays the status, not the probes.
	StatusWriteTimeout time.Duration

	mu    sync.Mutex
	links map[types.NamespacedName]*linkProber
	// running counts the goroutines Start started, which it waits for:
	// the probe loops, the status writers and the Forget calls.
	running sync.WaitGroup
}

type linkProber struct {
	mu       sync.Mutex
	link     *v1alpha1.Link
	cancel   context.CancelFunc
	done     chan struct{} // closed when the loop has stopped
	state    *State
	status   *statusWriter
	offered  time.Time      // when the loop last offered the status
	lastSeen probeStatusKey // what it offered then
	since    time.Time      // last transition of GatewayReachable

	inspected time.Time         // latest handshake attempt
	local     *x509.Certificate // this cluster's identity then
	handshake *Inspection       // latest handshake that reached the gateway
	certSince time.Time         // last transition of CertificatesValid
	certState metav1.ConditionStatus
}

// probeStatusKey is what, when it changes, is written at once: whether
// the link is alive (the mirrors' endpoint readiness follows it) and the
// certificates' verdict. The rest (whether recent probes failed, the
// failure counts, lastProbeTime, latencies, lastHandshakeTime) rides along
// with the periodic refresh, so a dead or lossy link costs the API server
// no more writes than a healthy one.
type probeStatusKey struct {
	alive bool
	certs certVerdict
}

// NeedLeaderElection makes the manager run the prober on the leader only.
func (r *Runner) NeedLeaderElection() bool { return true }

// Start runs until ctx ends, and returns once every probe loop and status
// write it started has stopped.
func (r *Runner) Start(ctx context.Context) error {
	if r.Resync == 0 {
		r.Resync = time.Second
	}
	if r.InspectPeriod == 0 {
		r.InspectPeriod = 5 * time.Minute
	}
	if r.ExpiryWarning == 0 {
		r.ExpiryWarning = DefaultExpiryWarning
	}
	if r.StatusWriteTimeout == 0 {
		r.StatusWriteTimeout = defaultStatusWriteTimeout
	}
	if r.Log == nil {
		r.Log = slog.Default()
	}
	r.links = map[types.NamespacedName]*linkProber{}
	defer func() {
		r.mu.Lock()
		for _, lp := range r.links {
			lp.cancel()
		}
		r.mu.Unlock()
		r.running.Wait()
	}()
	tick := time.NewTicker(r.Resync)
	defer tick.Stop()
	for {
		r.sync(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// sync starts a probe loop for every new Link and stops those of deleted
// ones.
func (r *Runner) sync(ctx context.Context) {
	var list v1alpha1.LinkList
	if err := r.Client.List(ctx, &list, client.InNamespace(r.Namespace)); err != nil {
		r.Log.Warn("listing links for the probe", "err", err)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// One loop per target cluster: of two Links to one cluster (a Link
	// renamed by creating the new one first) the older is probed, as the
	// mirror controller mirrors through the older only. Two loops would
	// share the cluster's pool entry and series, each closing the other's
	// connection and counting every probe twice.
	senior := map[string]*v1alpha1.Link{}
	for i := range list.Items {
		link := &list.Items[i]
		if !link.DeletionTimestamp.IsZero() {
			continue
		}
		if s, ok := senior[link.Spec.TargetClusterName]; !ok || link.Precedes(s) {
			senior[link.Spec.TargetClusterName] = link
		}
	}
	seen := map[types.NamespacedName]bool{}
	for _, link := range senior {
		key := types.NamespacedName{Namespace: link.Namespace, Name: link.Name}
		seen[key] = true
		if lp, ok := r.links[key]; ok {
			lp.mu.Lock()
			lp.link = link
			lp.mu.Unlock()
			continue
		}
		lctx, cancel := context.WithCancel(ctx)
		lp := &linkProber{link: link, cancel: cancel, done: make(chan struct{}), status: newStatusWriter()}
		lp.state, lp.since = resumedState(link)
		r.links[key] = lp
		r.running.Add(2)
		go func() { defer r.running.Done(); defer close(lp.done); r.loop(lctx, key, lp) }()
		go func() { defer r.running.Done(); lp.status.run(lctx, r.Client, r.StatusWriteTimeout, r.Log) }()
	}
	for key, lp := range r.links {
		if !seen[key] {
			lp.cancel()
			delete(r.links, key)
			target := lp.link.Spec.TargetClusterName
			if _, probed := senior[target]; probed {
				continue // another Link's loop probes the cluster now
			}
			// Once the loop has stopped: a loop past its last check of
			// the context would set its series again after the delete.
			r.running.Add(1)
			go func() {
				defer r.running.Done()
				<-lp.done
				r.Metrics.forget(r.Cluster, target)
				if r.Forget != nil {
					r.Forget(lp.link)
				}
			}()
		}
	}
}

// resumedState is a new loop's state, carried on from the Link's status:
// a controller that restarts (or takes the lease over) does not declare a
// dead link alive until it fails threshold probes again, nor move the
// condition's lastTransitionTime.
func resumedState(link *v1alpha1.Link) (*State, time.Time) {
	st, since := NewState(windowSize), time.Now()
	p := link.Status.Probe
	if p == nil {
		return st, since
	}
	st.Alive, st.ConsecutiveFailures = p.Alive, p.ConsecutiveFailures
	if c := meta.FindStatusCondition(link.Status.Conditions, v1alpha1.ConditionGatewayReachable); c != nil && !c.LastTransitionTime.IsZero() &&
		(c.Status == metav1.ConditionTrue) == p.Alive {
		since = c.LastTransitionTime.Time
	}
	return st, since
}

func specOf(link *v1alpha1.Link) (period, timeout time.Duration, threshold int32) {
	period, timeout, threshold = DefaultPeriod, DefaultTimeout, DefaultFailureThreshold
	p := link.Spec.Probe
	if p.Period != nil && p.Period.Duration > 0 {
		period = p.Period.Duration
	}
	if p.Timeout != nil && p.Timeout.Duration > 0 {
		timeout = p.Timeout.Duration
	}
	if p.FailureThreshold != nil && *p.FailureThreshold > 0 {
		threshold = *p.FailureThreshold
	}
	return period, timeout, threshold
}

// jitter spreads probes by ±10% so many links do not probe in lockstep.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

func (r *Runner) loop(ctx context.Context, key types.NamespacedName, lp *linkProber) {
	for {
		lp.mu.Lock()
		link := lp.link.DeepCopy()
		lp.mu.Unlock()
		period, timeout, threshold := specOf(link)
		target := link.Spec.TargetClusterName

		pctx, cancel := context.WithTimeout(ctx, timeout)
		start := time.Now()
		took, err := r.Probe(pctx, link)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil && took == 0 {
			took = time.Since(start)
		}
		now := time.Now()
		if lp.state.Record(now, took, err, threshold) {
			lp.since = now
			r.Log.Info("link liveness changed", "target_cluster", target, "alive", lp.state.Alive, "err", err)
		}
		if err == nil {
			r.Metrics.Duration.WithLabelValues(r.Cluster, target).Observe(took.Seconds())
			r.Metrics.Probes.WithLabelValues(r.Cluster, target, "success").Inc()
		} else {
			r.Metrics.Probes.WithLabelValues(r.Cluster, target, "failure").Inc()
			r.Log.Debug("link probe failed", "target_cluster", target, "err", err)
		}
		up := 0.0
		if lp.state.Alive {
			up = 1
		}
		r.Metrics.Up.WithLabelValues(r.Cluster, target).Set(up)

		k := probeStatusKey{alive: lp.state.Alive}
		if r.Inspect != nil {
			if r.inspectDue(lp, now, err != nil) {
				ictx, icancel := context.WithTimeout(ctx, timeout)
				in := r.Inspect(ictx, link)
				icancel()
				if ctx.Err() != nil {
					return
				}
				lp.inspected, lp.local = now, in.Local
				if in.Reached {
					lp.handshake = &in
				}
			}
			k.certs = judgeCertificates(lp.local, lp.handshake, target, link.Spec.GatewayIdentity, now, r.ExpiryWarning)
			if k.certs.status != lp.certState || lp.certSince.IsZero() {
				lp.certSince, lp.certState = now, k.certs.status
				if !lp.offered.IsZero() {
					r.Log.Info("link certificates changed", "target_cluster", target, "reason", k.certs.reason, "message", k.certs.message)
				}
			}
		}
		// The Link's statusWriter writes it; the loop goes on probing
		// whatever the API server does with the write.
		if k != lp.lastSeen || now.Sub(lp.offered) >= statusRefresh || lp.status.behind() {
			lp.status.offer(r.desiredStatus(key, lp, k.certs))
			lp.lastSeen, lp.offered = k, now
		}

		// Probes start every period (jittered) whatever a failing one's
		// timeout: a dead link is declared threshold periods after it
		// died, plus one timeout, not threshold × (period + timeout).
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(0, time.Until(start.Add(jitter(period))))):
		}
	}
}

// inspectDue says whether to make a handshake now: the first time, every
// InspectPeriod, and while probes fail every statusRefresh, so that the
// status says why (an expired or foreign certificate) soon after a
// failure without a handshake per failed probe.
func (r *Runner) inspectDue(lp *linkProber, now time.Time, probeFailed bool) bool {
	since := now.Sub(lp.inspected)
	return lp.inspected.IsZero() || since >= r.InspectPeriod || (probeFailed && since >= statusRefresh)
}
