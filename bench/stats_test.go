package main

import (
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	tests := map[string]struct {
		xs   []float64
		want float64
	}{
		"is 0 for no values":                                                       {xs: nil, want: 0},
		"is the only value of one":                                                 {xs: []float64{7}, want: 7},
		"is the middle value of an odd count, in any order":                        {xs: []float64{9, 1, 5}, want: 5},
		"is the mean of the two middle values of an even count, not the upper one": {xs: []float64{40, 10, 30, 20}, want: 25},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := median(tc.xs); got != tc.want {
				t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
			}
		})
	}
}

func TestMedianLeavesItsArgumentUnsorted(t *testing.T) {
	xs := []float64{3, 1, 2}
	median(xs)
	if xs[0] != 3 || xs[1] != 1 || xs[2] != 2 {
		t.Errorf("median sorted its argument: %v", xs)
	}
}

// upTo is 1 ms … n ms, shuffled (n not a multiple of 37).
func upTo(n int) []time.Duration {
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = time.Duration((i*37)%n+1) * time.Millisecond
	}
	return ds
}

func TestNearestRank(t *testing.T) {
	tests := map[string]struct {
		ds   []time.Duration
		p    float64
		want time.Duration
	}{
		"is 0 for no values":                             {ds: nil, p: 0.99, want: 0},
		"p99 of 100 values is the 99th, not the maximum": {ds: upTo(100), p: 0.99, want: 99 * time.Millisecond},
		"p50 of 100 values is the 50th":                  {ds: upTo(100), p: 0.5, want: 50 * time.Millisecond},
		"p100 is the maximum":                            {ds: upTo(100), p: 1, want: 100 * time.Millisecond},
		"p0 is the minimum":                              {ds: upTo(100), p: 0, want: time.Millisecond},
		"a rank that p·n misses by a rounding error is the whole rank (0.07·100 = 7.000000000000001)": {ds: upTo(100), p: 0.07, want: 7 * time.Millisecond},
		"a rank between two values is rounded up (p99 of 60 is the 60th)":                             {ds: upTo(60), p: 0.99, want: 60 * time.Millisecond},
		"p50 of an even count is the lower middle value":                                              {ds: []time.Duration{4, 1, 3, 2}, p: 0.5, want: 2},
		"p99.9 of 1,000 values is the 999th":                                                          {ds: upTo(1000), p: 0.999, want: 999 * time.Millisecond},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := nearestRank(tc.ds, tc.p); got != tc.want {
				t.Errorf("nearestRank(%d values, %v) = %v, want %v", len(tc.ds), tc.p, got, tc.want)
			}
		})
	}
}

// The path latencies and the mirroring figures take their percentiles
// the same way.
func TestPercentilesAgree(t *testing.T) {
	ds := upTo(100)
	for _, p := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		if a, b := latencies(ds).percentile(p), pct(ds, p); a != b {
			t.Errorf("p%v: latencies.percentile %v, pct %v", p*100, a, b)
		}
	}
}

func TestBulkFigure(t *testing.T) {
	tests := map[string]struct {
		median         float64
		failed, rounds int
		want           string
	}{
		"is the median alone when every transfer completed":    {median: 481.4, failed: 0, rounds: 5, want: "481"},
		"says how many of the rounds failed beside the median": {median: 481.4, failed: 1, rounds: 5, want: "481 (1 of 5 failed)"},
		"gives no figure when every transfer failed":           {median: 0, failed: 5, rounds: 5, want: "– (all 5 failed)"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := bulkFigure("%.0f", tc.median, tc.failed, tc.rounds); got != tc.want {
				t.Errorf("bulkFigure = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCombineLeavesFailedBulkRunsOutOfTheMedian(t *testing.T) {
	rounds := []round{
		{one: 400, oneCPU: 1, par: 800, parCPU: 2},
		{oneFailed: true, parFailed: true},
		{one: 500, oneCPU: 1.2, par: 900, parCPU: 2.2},
	}
	res := combine("path", nil, rounds)
	if res.bulkMBps != 450 || res.bulkFailed != 1 {
		t.Errorf("1 stream: median %v with %d failed, want 450 with 1 failed", res.bulkMBps, res.bulkFailed)
	}
	if res.parallelMBps != 850 || res.parallelFailed != 1 {
		t.Errorf("64 streams: median %v with %d failed, want 850 with 1 failed", res.parallelMBps, res.parallelFailed)
	}
	if res.bulkCPU != 1.1 {
		t.Errorf("1 stream CPU: median %v, want 1.1 (the failed round's 0 left out)", res.bulkCPU)
	}
}
