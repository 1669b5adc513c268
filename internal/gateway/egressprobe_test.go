package gateway

import (
	"errors"
	"testing"

	"github.com/backbone-mesh/backbone/internal/targets"
)

// TestEgressProbeFailureThreshold: a target is reported unreachable once
// the threshold of probes in a row failed, not at one lost probe; a new
// generation is judged by its first probe; one success brings it back.
func TestEgressProbeFailureThreshold(t *testing.T) {
	fail := errors.New("i/o timeout")
	var prev targets.ProbeResult
	had := false
	step := func(gen int64, err error) targets.ProbeResult {
		prev = judgeEgressProbe(prev, had, targets.ProbeResult{Target: "egress/ledger", Generation: gen}, err, 3)
		had = true
		return prev
	}
	if r := step(1, fail); r.Alive {
		t.Errorf("a new target's failed first probe: alive, want unreachable at once")
	}
	if r := step(1, nil); !r.Alive || r.ConsecutiveFailures != 0 {
		t.Errorf("after a success: %+v, want alive", r)
	}
	for i := 1; i <= 2; i++ {
		if r := step(1, fail); !r.Alive || r.ConsecutiveFailures != int32(i) || r.Error == "" {
			t.Errorf("failure %d of 3: %+v, want still alive, counted, with its error", i, r)
		}
	}
	if r := step(1, fail); r.Alive {
		t.Errorf("the third failure in a row: %+v, want unreachable", r)
	}
	if r := step(2, nil); !r.Alive {
		t.Errorf("a changed target's successful probe: %+v, want alive", r)
	}
	if r := step(3, fail); r.Alive {
		t.Errorf("a changed target's failed first probe: %+v, want unreachable at once", r)
	}
}
