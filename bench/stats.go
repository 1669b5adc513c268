package main

import (
	"cmp"
	"math"
	"slices"
)

// median is the middle value of xs, or the mean of the two middle values
// when their number is even (0 for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	mid := len(s) / 2
	if len(s)%2 == 0 {
		return (s[mid-1] + s[mid]) / 2
	}
	return s[mid]
}

// nearestRank is the p-quantile of xs (0 ≤ p ≤ 1) by the nearest-rank
// definition: the smallest value with at least p·n of the n values at or
// below it, i.e. the ceil(p·n)-th smallest (the minimum for p = 0, the
// maximum for p = 1). Every percentile the bench reports is this one. It
// is the zero value for no values.
func nearestRank[S ~[]E, E cmp.Ordered](xs S, p float64) E {
	if len(xs) == 0 {
		var zero E
		return zero
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[nearestRankIndex(len(s), p)]
}

// nearestRankIndex is the index, among n sorted values, of the
// p-quantile by nearest rank: ceil(p·n) - 1, within [0, n-1].
func nearestRankIndex(n int, p float64) int {
	rank := p * float64(n)
	// p·n in floating point can land a hair off a whole rank (0.07·100 is
	// 7.000000000000001): that rank is the whole number, not the next.
	if whole := math.Round(rank); math.Abs(rank-whole) < 1e-9 {
		rank = whole
	}
	return min(n-1, max(0, int(math.Ceil(rank))-1))
}
