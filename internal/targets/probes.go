package targets

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// EgressProbesPath is where a gateway's admin port serves its latest probe
// of every egress target it serves. The gateway probes, because its
// connections are the ones the cluster's egress policy lets out; the
// controller reads every local gateway's answer and writes the one status.
const EgressProbesPath = "/egress/probes"

// ProbeReport is a gateway's answer on EgressProbesPath.
type ProbeReport struct {
	Cluster string `json:"cluster"`
	// Period is how often the gateway probes each target.
	Period  metav1.Duration `json:"period"`
	Results []ProbeResult   `json:"results"`
}

// ProbeResult is a gateway's latest probe of one egress target.
type ProbeResult struct {
	// Target is the EgressTarget, namespace/name.
	Target string `json:"target"`
	// Generation is the EgressTarget's generation the probe dialled.
	Generation int64       `json:"generation"`
	Time       metav1.Time `json:"time"`
	// Alive is false once the gateway's failure threshold of probes in a
	// row failed (at once for a generation not reached yet).
	Alive    bool            `json:"alive"`
	Duration metav1.Duration `json:"duration"`
	// Error is the latest probe's failure, also while Alive still holds.
	Error string `json:"error,omitempty"`
	// ConsecutiveFailures counts the failed probes since the last success.
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`
}

// gatewayReport is what one local gateway answered, or why it did not.
type gatewayReport struct {
	gateway string
	report  *ProbeReport
	err     error
}

// probeReader fetches the local gateways' reports, at most once a second
// per gateway however many targets ask.
type probeReader struct {
	client *http.Client
	port   int32

	mu    sync.Mutex
	cache map[string]cachedReport
}

type cachedReport struct {
	at     time.Time
	report gatewayReport
}

const (
	// A fetched report answers for every target for a second; a failed
	// fetch for longer, so a gateway that does not answer costs the
	// one-at-a-time reconciles one timeout now and then, not one each.
	reportFreshness  = time.Second
	failureFreshness = 5 * time.Second
	// reportTimeout bounds one fetch: the admin port is in the cluster.
	reportTimeout = 2 * time.Second
	// maxReportBytes bounds what a gateway may answer.
	maxReportBytes = 4 << 20
)

func newProbeReader(port int32) *probeReader {
	return &probeReader{
		// A plain in-cluster request: no proxy from the environment, no
		// redirects.
		client: &http.Client{
			Timeout:       reportTimeout,
			Transport:     &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		port:  port,
		cache: map[string]cachedReport{},
	}
}

// read returns the reports of the given gateways, fetched in parallel.
func (p *probeReader) read(ctx context.Context, gateways []string) []gatewayReport {
	out := make([]gatewayReport, len(gateways))
	var wg sync.WaitGroup
	for i, gw := range gateways {
		wg.Go(func() { out[i] = p.one(ctx, gw) })
	}
	wg.Wait()
	p.mu.Lock()
	for gw := range p.cache {
		if !slices.Contains(gateways, gw) {
			delete(p.cache, gw)
		}
	}
	p.mu.Unlock()
	return out
}

func (p *probeReader) one(ctx context.Context, gateway string) gatewayReport {
	p.mu.Lock()
	c, ok := p.cache[gateway]
	p.mu.Unlock()
	if ok && (time.Since(c.at) < reportFreshness || c.report.err != nil && time.Since(c.at) < failureFreshness) {
		return c.report
	}
	r := gatewayReport{gateway: gateway}
	r.report, r.err = p.fetch(ctx, gateway)
	p.mu.Lock()
	p.cache[gateway] = cachedReport{at: time.Now(), report: r}
	p.mu.Unlock()
	return r
}

func (p *probeReader) fetch(ctx context.Context, gateway string) (*ProbeReport, error) {
	url := "http://" + net.JoinHostPort(gateway, strconv.Itoa(int(p.port))) + EgressProbesPath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var rep ProbeReport
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxReportBytes)).Decode(&rep); err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return &rep, nil
}

// verdict is what the local gateways' probes say of one target.
type verdict struct {
	ready   metav1.ConditionStatus
	reason  string
	message string
	// alive is nil when no gateway has probed the target's generation.
	alive *bool
	// probed is the time of the oldest probe the verdict rests on.
	probed *metav1.Time
	// period is the gateways' probe period (the shortest one), 0 if none
	// answered.
	period time.Duration
}

// judge folds the local gateways' reports into the target's status: alive
// when every gateway that probed the target's current generation reached
// it (a caller may land on any of them), not alive when one did not,
// unknown when none has probed it yet or none answered.
func judge(et *v1alpha1.EgressTarget, reports []gatewayReport) verdict {
	name := et.Namespace + "/" + et.Name
	var v verdict
	var answered, failed []string
	var reached, unreached []string
	for _, r := range reports {
		if r.err != nil || r.report == nil {
			failed = append(failed, fmt.Sprintf("%s: %v", r.gateway, r.err))
			continue
		}
		answered = append(answered, r.gateway)
		if p := r.report.Period.Duration; p > 0 && (v.period == 0 || p < v.period) {
			v.period = p
		}
		i := slices.IndexFunc(r.report.Results, func(res ProbeResult) bool { return res.Target == name })
		if i < 0 || r.report.Results[i].Generation != et.Generation {
			continue
		}
		res := r.report.Results[i]
		if v.probed == nil || res.Time.Before(v.probed) {
			v.probed = res.Time.DeepCopy()
		}
		if res.Alive {
			reached = append(reached, fmt.Sprintf("%s in %s", r.gateway, res.Duration.Round(time.Millisecond)))
		} else {
			unreached = append(unreached, fmt.Sprintf("%s: %s", r.gateway, res.Error))
		}
	}
	switch {
	case len(answered) == 0:
		v.ready, v.reason = metav1.ConditionFalse, "ProbeUnavailable"
		v.message = "no local gateway answered for its egress probes: " + strings.Join(failed, "; ")
	case len(reached)+len(unreached) == 0:
		v.ready, v.reason = metav1.ConditionFalse, "ProbePending"
		v.message = fmt.Sprintf("the local gateways (%s) have not probed generation %d yet", strings.Join(answered, ", "), et.Generation)
	case len(unreached) > 0:
		v.ready, v.reason, v.alive = metav1.ConditionFalse, "TargetUnreachable", ptr.To(false)
		v.message = fmt.Sprintf("probe of %s failed from %d of %d gateways: %s", et.Spec.DNSName,
			len(unreached), len(reached)+len(unreached), strings.Join(unreached, "; "))
	default:
		v.ready, v.reason, v.alive = metav1.ConditionTrue, "Serving", ptr.To(true)
		v.message = "probed from " + strings.Join(reached, ", ")
	}
	if len(answered) > 0 && len(failed) > 0 {
		v.message += "; not answering: " + strings.Join(failed, "; ")
	}
	return v
}
