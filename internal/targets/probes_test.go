package targets

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

func TestJudge(t *testing.T) {
	et := &v1alpha1.EgressTarget{
		ObjectMeta: metav1.ObjectMeta{Namespace: "backbone-system", Name: "resource-a", Generation: 3},
		Spec:       v1alpha1.EgressTargetSpec{DNSName: "resource-a.azurewebsites.net"},
	}
	early, late := metav1.NewTime(time.Date(2025, 1, 1, 10, 0, 0, 0, time.UTC)), metav1.NewTime(time.Date(2025, 1, 1, 10, 0, 5, 0, time.UTC))
	result := func(gen int64, at metav1.Time, alive bool, errText string) ProbeResult {
		return ProbeResult{Target: "backbone-system/resource-a", Generation: gen, Time: at, Alive: alive,
			Duration: metav1.Duration{Duration: 12 * time.Millisecond}, Error: errText}
	}
	report := func(gw string, period time.Duration, results ...ProbeResult) gatewayReport {
		return gatewayReport{gateway: gw, report: &ProbeReport{Cluster: "east", Period: metav1.Duration{Duration: period}, Results: results}}
	}
	down := gatewayReport{gateway: "10.0.0.9", err: errors.New("connection refused")}
	tests := map[string]struct {
		reports   []gatewayReport
		reason    string
		alive     *bool
		probed    *metav1.Time
		period    time.Duration
		inMessage []string
	}{
		"is alive when every gateway reached the target, resting on the oldest probe": {
			reports: []gatewayReport{report("10.0.0.1", 10*time.Second, result(3, late, true, "")), report("10.0.0.2", 5*time.Second, result(3, early, true, ""))},
			reason:  "Serving", alive: new(true), probed: &early, period: 5 * time.Second,
			inMessage: []string{"10.0.0.1 in 12ms", "10.0.0.2 in 12ms"},
		},
		"is not alive when one of two gateways could not reach the target": {
			reports: []gatewayReport{report("10.0.0.1", time.Second, result(3, late, true, "")), report("10.0.0.2", time.Second, result(3, late, false, "i/o timeout"))},
			reason:  "TargetUnreachable", alive: new(false), probed: &late, period: time.Second,
			inMessage: []string{"failed from 1 of 2 gateways", "10.0.0.2: i/o timeout"},
		},
		"rests on the gateways that answered and names the one that did not": {
			reports: []gatewayReport{report("10.0.0.1", time.Second, result(3, late, true, "")), down},
			reason:  "Serving", alive: new(true), probed: &late, period: time.Second,
			inMessage: []string{"not answering: 10.0.0.9: connection refused"},
		},
		"is pending while the gateways hold only a probe of an older generation": {
			reports: []gatewayReport{report("10.0.0.1", time.Second, result(2, late, true, ""))},
			reason:  "ProbePending", period: time.Second,
			inMessage: []string{"generation 3"},
		},
		"is pending while the gateways have not probed the target at all": {
			reports: []gatewayReport{report("10.0.0.1", time.Second)},
			reason:  "ProbePending", period: time.Second,
		},
		"ignores other targets' results": {
			reports: []gatewayReport{report("10.0.0.1", time.Second, ProbeResult{Target: "backbone-system/other", Generation: 3, Time: late, Alive: true})},
			reason:  "ProbePending", period: time.Second,
		},
		"knows nothing of the target when no gateway answered": {
			reports:   []gatewayReport{down},
			reason:    "ProbeUnavailable",
			inMessage: []string{"10.0.0.9: connection refused"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := judge(et, tc.reports)
			if v.reason != tc.reason {
				t.Errorf("reason %s, want %s (%s)", v.reason, tc.reason, v.message)
			}
			if (v.ready == metav1.ConditionTrue) != (tc.reason == "Serving") {
				t.Errorf("Ready %s with reason %s", v.ready, v.reason)
			}
			if (v.alive == nil) != (tc.alive == nil) || v.alive != nil && *v.alive != *tc.alive {
				t.Errorf("alive %v, want %v", v.alive, tc.alive)
			}
			if (v.probed == nil) != (tc.probed == nil) || v.probed != nil && !v.probed.Equal(tc.probed) {
				t.Errorf("probed %v, want %v", v.probed, tc.probed)
			}
			if v.period != tc.period {
				t.Errorf("period %s, want %s", v.period, tc.period)
			}
			for _, want := range tc.inMessage {
				if !strings.Contains(v.message, want) {
					t.Errorf("message %q lacks %q", v.message, want)
				}
			}
		})
	}
}
