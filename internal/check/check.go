// Package check diagnoses a backbone installation: CRDs, workloads, the
// gateway Service, Link credentials, mirrors' endpoints and orphaned
// mirrors. Every failure carries the command that fixes it.
package check

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Result is one check's outcome.
type Result struct {
	// Cluster is the kubeconfig context the check ran against, when
	// several were checked at once.
	Cluster string `json:"cluster,omitempty"`
	// Check names what was checked, e.g. "link east credentials".
	Check string `json:"check"`
	OK    bool   `json:"ok"`
	// Message says what was found.
	Message string `json:"message"`
	// Fix is what to run when !OK.
	Fix string `json:"fix,omitempty"`
}

// Report is every check's result, in a stable order.
type Report struct {
	Results []Result `json:"results"`
	Failed  int      `json:"failed"`
}

// Options tune the checks.
type Options struct {
	// Now is the time credentials' expiry is measured from.
	Now time.Time
	// ExpiryWarning flags credentials expiring sooner than this.
	ExpiryWarning time.Duration
	// RemoteTimeout bounds each call to a linked cluster's API server.
	RemoteTimeout time.Duration
	// ClusterName, when known, goes into the suggested install command.
	ClusterName string
}

// Run performs every check against the cluster c (an administrator's
// client). Peer gateways are judged by the controller's link probe, which
// dials them with the cluster's identity and reports, besides liveness,
// the certificates on both ends and whether each side's chain verifies
// against the other's trust anchor. Trust compares the anchors directly
// when several clusters can be read.
func Run(ctx context.Context, c client.Client, o Options) Report {
	if o.ExpiryWarning == 0 {
		o.ExpiryWarning = 30 * 24 * time.Hour
	}
	if o.RemoteTimeout == 0 {
		o.RemoteTimeout = 5 * time.Second
	}
	var r Report
	add := func(results ...Result) {
		for _, res := range results {
			if !res.OK {
				r.Failed++
			}
			r.Results = append(r.Results, res)
		}
	}
	add(checkCRDs(ctx, c, o)...)
	add(checkDeployments(ctx, c, o)...)
	add(checkGatewayService(ctx, c, o))
	add(checkIdentityExpiry(ctx, c, o))
	links, res := checkLinks(ctx, c, o)
	add(res...)
	for i := range links {
		add(checkLinkProbe(&links[i]))
		add(checkLinkCertificates(&links[i], o))
	}
	add(checkMirrors(ctx, c, links)...)
	return r
}

// Add appends the results of another cluster's report, naming it.
func (r *Report) Add(cluster string, other Report) {
	for _, res := range other.Results {
		if cluster != "" {
			res.Cluster = cluster
		}
		if !res.OK {
			r.Failed++
		}
		r.Results = append(r.Results, res)
	}
}

// Print writes the report as text (one line per check, the fix indented
// under each failure) or as JSON.
func (r Report) Print(w io.Writer, format string) error {
	switch format {
	case "", "text":
		for _, res := range r.Results {
			mark := "ok  "
			if !res.OK {
				mark = "FAIL"
			}
			check := res.Check
			if res.Cluster != "" {
				check = res.Cluster + ": " + check
			}
			if _, err := fmt.Fprintf(w, "%s %s: %s\n", mark, check, res.Message); err != nil {
				return err
			}
			if !res.OK && res.Fix != "" {
				if _, err := fmt.Fprintf(w, "     fix: %s\n", res.Fix); err != nil {
					return err
				}
			}
		}
		_, err := fmt.Fprintf(w, "%d checks, %d failed\n", len(r.Results), r.Failed)
		return err
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	default:
		return fmt.Errorf("--output %q: must be text or json", format)
	}
}

func pass(check, msg string) Result { return Result{Check: check, OK: true, Message: msg} }

func fail(check, msg, fix string) Result {
	return Result{Check: check, Message: msg, Fix: fix}
}
