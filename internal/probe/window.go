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

// ring holds the latest items added, as many as it was made for.
type ring[T any] struct {
	items []T
	next  int
	full  bool
}

func newRing[T any](size int) ring[T] { return ring[T]{items: make([]T, max(size, 1))} }

// add adds v, evicting the oldest when full.
func (r *ring[T]) add(v T) {
	r.items[r.next] = v
	if r.next++; r.next == len(r.items) {
		r.next, r.full = 0, true
	}
}

// held is what the ring holds, in no particular order.
func (r *ring[T]) held() []T {
	if r.full {
		return r.items
	}
	return r.items[:r.next]
}

func (r *ring[T]) reset() { r.next, r.full = 0, false }

// Window holds the latest successful probe durations.
type Window struct{ r ring[time.Duration] }

// NewWindow returns a window of the given size.
func NewWindow(size int) *Window { return &Window{r: newRing[time.Duration](size)} }

// Add records a sample, evicting the oldest when full.
func (w *Window) Add(d time.Duration) { w.r.add(d) }

// Reset empties the window.
func (w *Window) Reset() { w.r.reset() }

// Len is the number of samples held.
func (w *Window) Len() int { return len(w.r.held()) }

// Percentile returns the q-quantile (0 < q <= 1) by the nearest-rank
// method, and false when the window is empty.
func (w *Window) Percentile(q float64) (time.Duration, bool) {
	n := w.Len()
	if n == 0 {
		return 0, false
	}
	sorted := slices.Clone(w.r.held())
	slices.Sort(sorted)
	rank := int(q*float64(n)+0.999999999) - 1
	rank = max(0, min(rank, n-1))
	return sorted[rank], true
}
