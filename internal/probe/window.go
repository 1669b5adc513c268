// Package probe owns the link probe: every controller measures the round
// trip to each linked cluster's gateway (GET /ready over the pooled mTLS
// path that traffic takes), keeps a sliding window of latencies, decides
// whether the link is alive with a failure threshold, and publishes the
// result as metrics and in the Link's status, which the mirror controller
// turns into endpoint readiness.
package probe

import (
	"slices"
	"time"
)

// Window holds the latest successful probe durations.
type Window struct {
	samples []time.Duration
	next    int
	full    bool
}

// NewWindow returns a window of the given size.
func NewWindow(size int) *Window {
	if size < 1 {
		size = 1
	}
	return &Window{samples: make([]time.Duration, size)}
}

// Add records a sample, evicting the oldest when full.
func (w *Window) Add(d time.Duration) {
	w.samples[w.next] = d
	w.next++
	if w.next == len(w.samples) {
		w.next, w.full = 0, true
	}
}

// Reset empties the window.
func (w *Window) Reset() { w.next, w.full = 0, false }

// Len is the number of samples held.
func (w *Window) Len() int {
	if w.full {
		return len(w.samples)
	}
	return w.next
}

// Percentile returns the q-quantile (0 < q <= 1) by the nearest-rank
// method, and false when the window is empty.
func (w *Window) Percentile(q float64) (time.Duration, bool) {
	n := w.Len()
	if n == 0 {
		return 0, false
	}
	sorted := slices.Clone(w.samples[:n])
	slices.Sort(sorted)
	rank := int(q*float64(n)+0.999999999) - 1
	rank = max(0, min(rank, n-1))
	return sorted[rank], true
}
