package probe

import (
	"errors"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestPercentiles(t *testing.T) {
	tests := map[string]struct {
		samples       []time.Duration
		size          int
		p50, p90, p99 time.Duration
	}{
		"a single sample is every percentile": {
			samples: []time.Duration{ms(30)}, size: 10,
			p50: ms(30), p90: ms(30), p99: ms(30),
		},
		"ten samples use the nearest rank": {
			samples: []time.Duration{ms(10), ms(1), ms(9), ms(2), ms(8), ms(3), ms(7), ms(4), ms(6), ms(5)}, size: 10,
			p50: ms(5), p90: ms(9), p99: ms(10),
		},
		"old samples leave the window": {
			samples: []time.Duration{ms(500), ms(500), ms(10), ms(11), ms(12)}, size: 3,
			p50: ms(11), p90: ms(12), p99: ms(12),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := NewWindow(tc.size)
			for _, s := range tc.samples {
				w.Add(s)
			}
			for q, want := range map[float64]time.Duration{0.5: tc.p50, 0.9: tc.p90, 0.99: tc.p99} {
				if got, ok := w.Percentile(q); !ok || got != want {
					t.Errorf("p%v = %v, want %v", q*100, got, want)
				}
			}
		})
	}
	if _, ok := NewWindow(5).Percentile(0.5); ok {
		t.Error("an empty window reported a percentile")
	}
}

func TestFailureThreshold(t *testing.T) {
	fail := errors.New("timeout")
	tests := map[string]struct {
		results   []error
		threshold int32
		alive     bool
		failures  int32
		changes   int
	}{
		"a link never probed counts as alive": {
			threshold: 3, alive: true,
		},
		"fewer failures than the threshold keep the link alive": {
			results: []error{fail, fail}, threshold: 3, alive: true, failures: 2,
		},
		"the threshold of consecutive failures marks the link dead": {
			results: []error{nil, fail, fail, fail}, threshold: 3, alive: false, failures: 3, changes: 1,
		},
		"one success brings a dead link back": {
			results: []error{fail, fail, fail, nil}, threshold: 3, alive: true, failures: 0, changes: 2,
		},
		"a success in between resets the count": {
			results: []error{fail, fail, nil, fail, fail}, threshold: 3, alive: true, failures: 2,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := NewState(10)
			changes := 0
			for _, err := range tc.results {
				if s.Record(time.Now(), ms(5), err, tc.threshold) {
					changes++
				}
			}
			if s.Alive != tc.alive || s.ConsecutiveFailures != tc.failures || changes != tc.changes {
				t.Errorf("alive=%v failures=%d changes=%d, want %v %d %d", s.Alive, s.ConsecutiveFailures, changes, tc.alive, tc.failures, tc.changes)
			}
		})
	}
}

// TestLossAndTheWindowOfADeadLink: failed probes count in the loss the
// latency percentiles leave out, and a link that dies drops its old
// latencies instead of showing them as current.
func TestLossAndTheWindowOfADeadLink(t *testing.T) {
	fail := errors.New("timeout")
	s := NewState(10)
	for i := range 10 {
		var err error
		if i%5 == 0 {
			err = fail
		}
		s.Record(time.Now(), ms(10), err, 3)
	}
	if probes, failures := s.Recent(); probes != 10 || failures != 2 {
		t.Errorf("recent probes %d, failures %d; want 10, 2", probes, failures)
	}
	for range 3 {
		s.Record(time.Now(), 0, fail, 3)
	}
	if s.Alive {
		t.Fatal("three failures did not mark the link dead")
	}
	if d, ok := s.Window.Percentile(0.5); ok {
		t.Errorf("a dead link still reports a p50 of %v", d)
	}
	if probes, failures := s.Recent(); probes != 10 || failures != 4 {
		t.Errorf("recent probes %d, failures %d; want 10 (the window's size), 4", probes, failures)
	}
	s.Record(time.Now(), ms(40), nil, 3)
	if d, ok := s.Window.Percentile(0.5); !ok || d != ms(40) {
		t.Errorf("after recovery p50 = %v (%v), want the new 40ms only", d, ok)
	}
}
