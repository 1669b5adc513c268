package gateway

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/targets"
)

// egressProber probes the egress targets this gateway serves, from this
// gateway: the connections leave from the process (and the pod) whose
// traffic to the target the cluster's egress policy allows, through the
// same originator, with the same dial-time address checks and no
// redirects. Each replica probes for itself and reports on its admin port
// (metrics, and targets.EgressProbesPath for the controller, which is the
// only writer of EgressTarget status).
type egressProber struct {
	g         *Gateway
	period    time.Duration
	timeout   time.Duration
	threshold int
	// parallel bounds the probes in flight.
	parallel chan struct{}
	// wake asks for a pass now (an EgressTarget changed).
	wake chan struct{}

	mu      sync.Mutex
	results map[string]targets.ProbeResult // by namespace/name
}

func newEgressProber(g *Gateway) *egressProber {
	return &egressProber{
		g: g, period: g.opts.EgressProbePeriod, timeout: g.opts.EgressProbeTimeout, threshold: g.opts.EgressProbeFailureThreshold,
		parallel: make(chan struct{}, 16),
		wake:     make(chan struct{}, 1),
		results:  map[string]targets.ProbeResult{},
	}
}

func (p *egressProber) notify() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run probes every served target each period (±10% jitter, so replicas
// and targets do not march in step), and at once a target that is new or
// changed, until ctx ends.
func (p *egressProber) run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		all := false
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			all = true
			jitter := time.Duration((rand.Float64()*0.2 - 0.1) * float64(p.period))
			timer.Reset(p.period + jitter)
		case <-p.wake:
		}
		p.pass(ctx, all)
	}
}

// pass probes every served target (all) or only those without a result
// for their current generation, and forgets targets no longer served.
func (p *egressProber) pass(ctx context.Context, all bool) {
	var list v1alpha1.EgressTargetList
	if err := p.g.view.cache.List(ctx, &list); err != nil {
		p.g.log.Warn("listing egress targets to probe", "err", err)
		return
	}
	served := map[string]bool{}
	var wg sync.WaitGroup
	for i := range list.Items {
		et := &list.Items[i]
		if et.Spec.Environment != p.g.opts.ClusterName || !et.DeletionTimestamp.IsZero() {
			continue
		}
		t := targetOf(et)
		served[t.Name] = true
		p.mu.Lock()
		prev, ok := p.results[t.Name]
		p.mu.Unlock()
		if !all && ok && prev.Generation == et.Generation {
			continue
		}
		p.parallel <- struct{}{}
		wg.Go(func() {
			defer func() { <-p.parallel }()
			pctx, cancel := context.WithTimeout(ctx, p.timeout)
			took, err := p.g.origin.Probe(pctx, t)
			cancel()
			res := judgeEgressProbe(prev, ok, targets.ProbeResult{Target: t.Name, Generation: et.Generation, Time: metav1.Now()}, err, p.threshold)
			if err != nil {
				if ok && prev.Alive && !res.Alive {
					p.g.log.Warn("egress target unreachable", "target", t.Name, "dns_name", t.DNSName, "failures", res.ConsecutiveFailures, "err", err)
				}
			} else {
				res.Duration = metav1.Duration{Duration: took}
				if ok && !prev.Alive {
					p.g.log.Info("egress target reachable again", "target", t.Name, "dns_name", t.DNSName)
				}
			}
			p.record(res)
		})
	}
	wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for name := range p.results {
		if !served[name] {
			delete(p.results, name)
			p.g.metrics.egressUp.DeleteLabelValues(name)
			p.g.metrics.egressProbe.DeleteLabelValues(name)
		}
	}
}

// judgeEgressProbe turns one probe's outcome into the target's result:
// the target is reported unreachable once threshold probes in a row
// failed, so one lost probe from one replica does not flip its status;
// a generation not reached yet (a new or changed target) is judged by
// its first probe, and one success brings a target back.
func judgeEgressProbe(prev targets.ProbeResult, hadPrev bool, res targets.ProbeResult, err error, threshold int) targets.ProbeResult {
	if err == nil {
		res.Alive = true
		return res
	}
	res.Error = err.Error()
	res.ConsecutiveFailures = 1
	if hadPrev && prev.Generation == res.Generation {
		res.ConsecutiveFailures = prev.ConsecutiveFailures + 1
		res.Alive = prev.Alive && int(res.ConsecutiveFailures) < max(threshold, 1)
	}
	return res
}

func (p *egressProber) record(res targets.ProbeResult) {
	up := 0.0
	if res.Alive {
		up = 1
		p.g.metrics.egressProbe.WithLabelValues(res.Target).Observe(res.Duration.Seconds())
	}
	p.g.metrics.egressUp.WithLabelValues(res.Target).Set(up)
	p.mu.Lock()
	p.results[res.Target] = res
	p.mu.Unlock()
}

// report is this gateway's answer on targets.EgressProbesPath.
func (p *egressProber) report() targets.ProbeReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := targets.ProbeReport{Cluster: p.g.opts.ClusterName, Period: metav1.Duration{Duration: p.period}, Results: []targets.ProbeResult{}}
	for _, res := range p.results {
		r.Results = append(r.Results, res)
	}
	slices.SortFunc(r.Results, func(a, b targets.ProbeResult) int { return strings.Compare(a.Target, b.Target) })
	return r
}

func (p *egressProber) serveReport(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(p.report())
}
