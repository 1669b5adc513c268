package probe

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// FieldOwner is the server-side-apply manager of status.probe,
// status.certificates and the GatewayReachable and CertificatesValid
// conditions; the mirror controller owns the rest of the
// Link's status, and apply merges conditions by type, so neither clobbers
// the other.
const FieldOwner = "backbone-probe"

// Condition reasons of GatewayReachable.
const (
	ReasonProbeSucceeded = "ProbeSucceeded"
	ReasonProbeFailing   = "ProbeFailing"
	ReasonGatewayDown    = "GatewayUnreachable"
)

// desiredStatus is the Link's status as the probe loop knows it now, for
// the Link's statusWriter: a copy that the loop does not touch again.
func (r *Runner) desiredStatus(key types.NamespacedName, lp *linkProber, certs certVerdict) *unstructured.Unstructured {
	lp.mu.Lock()
	generation := lp.link.Generation
	lp.mu.Unlock()
	s := lp.state
	probe := map[string]any{
		"alive":         s.Alive,
		"lastProbeTime": s.LastProbe.UTC().Format(time.RFC3339),
	}
	if s.ConsecutiveFailures > 0 {
		probe["consecutiveFailures"] = int64(s.ConsecutiveFailures)
	}
	if probes, failures := s.Recent(); probes > 0 {
		probe["recentProbes"] = int64(probes)
		probe["recentFailures"] = int64(failures)
	}
	for field, q := range map[string]float64{"latencyP50": 0.5, "latencyP90": 0.9, "latencyP99": 0.99} {
		if d, ok := s.Window.Percentile(q); ok {
			probe[field] = metav1.Duration{Duration: d.Round(100 * time.Microsecond)}.Duration.String()
		}
	}
	cond := map[string]any{
		"type":               v1alpha1.ConditionGatewayReachable,
		"observedGeneration": generation,
		"lastTransitionTime": lp.since.UTC().Format(time.RFC3339),
	}
	// The pool reports a dial in backoff without its cause; a failed
	// handshake of the probe's own says why (an expired or foreign
	// certificate).
	lastError := s.LastError
	if certs.status == metav1.ConditionFalse {
		lastError += "; " + certs.message
	}
	switch {
	case s.ConsecutiveFailures == 0:
		cond["status"], cond["reason"] = string(metav1.ConditionTrue), ReasonProbeSucceeded
		cond["message"] = "the gateway answers probes"
	case s.Alive:
		cond["status"], cond["reason"] = string(metav1.ConditionTrue), ReasonProbeFailing
		cond["message"] = "recent probes failed: " + lastError
	default:
		cond["status"], cond["reason"] = string(metav1.ConditionFalse), ReasonGatewayDown
		cond["message"] = lastError
	}
	status := map[string]any{
		"probe":      probe,
		"conditions": []any{cond},
	}
	if r.Inspect != nil {
		status["conditions"] = append(status["conditions"].([]any), map[string]any{
			"type":               v1alpha1.ConditionCertificatesValid,
			"status":             string(certs.status),
			"reason":             certs.reason,
			"message":            certs.message,
			"observedGeneration": generation,
			"lastTransitionTime": stamp(lp.certSince),
		})
		c := map[string]any{}
		if lp.local != nil {
			c["local"] = certificateInfo(lp.local)
		}
		if hs := lp.handshake; hs != nil {
			if hs.Peer != nil {
				c["peer"] = certificateInfo(hs.Peer)
			}
			c["lastHandshakeTime"] = stamp(hs.At)
		}
		status["certificates"] = c
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(),
		"kind":       "Link",
		"metadata":   map[string]any{"name": key.Name, "namespace": key.Namespace},
		"status":     status,
	}}
}
