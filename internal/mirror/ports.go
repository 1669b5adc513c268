package mirror

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// PortRange is the range gateway ports are allocated from.
type PortRange struct{ Low, High int32 }

// ParsePortRange parses "20000-29999".
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	l, err1 := strconv.Atoi(lo)
	h, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil || l < 1 || h > 65535 || l > h {
		return PortRange{}, fmt.Errorf("port range %q: want LOW-HIGH within 1-65535", s)
	}
	return PortRange{Low: int32(l), High: int32(h)}, nil
}

// Allocator hands out gateway ports to mirror Service ports. It is built
// from the ports the mirror EndpointSlices already carry — the allocation
// is persisted in the cluster, not in memory — so allocations are stable
// across restarts and unique across every Link.
type Allocator struct {
	r     PortRange
	byKey map[string]int32
	used  map[int32]string
	// taken, when set, says whether a port is allocated outside byKey
	// (see NewLazyAllocator); the search for a free port starts at next.
	taken func(int32) (bool, error)
	next  int32
	fresh bool // a new port was handed out
}

// NewAllocator returns an allocator over r with the existing allocations
// (key → port; keys are PortKey values).
func NewAllocator(r PortRange, existing map[string]int32) *Allocator {
	a := &Allocator{r: r, byKey: make(map[string]int32, len(existing)), used: make(map[int32]string, len(existing))}
	// In key order, so that of two keys claiming one port (a duplicate from
	// an interrupted write) the same one keeps it on every pass.
	for _, k := range slices.Sorted(maps.Keys(existing)) {
		p := existing[k]
		if _, taken := a.used[p]; taken {
			continue // the duplicate: reallocated
		}
		a.byKey[k], a.used[p] = p, k
	}
	return a
}

// NewLazyAllocator starts from a few known allocations (the ports one
// mirror already has) and asks taken — an index of every allocation —
// about each candidate only when a new port must be handed out, starting
// at next (the port after the last one handed out, so that a port just
// given away is not given again before the index has seen it). Keeping a
// mirror costs nothing, and a new port costs a lookup or a few, whatever
// the number of mirrors.
func NewLazyAllocator(r PortRange, known map[string]int32, taken func(int32) (bool, error), next int32) *Allocator {
	a := NewAllocator(r, known)
	a.taken, a.next = taken, next
	return a
}

// StartAt makes the search for a new port start at next (when in the
// range): after the last port handed out by an earlier plan, whose slice
// the allocations this allocator was built from may not show yet.
func (a *Allocator) StartAt(next int32) { a.next = next }

// Next is where the search for the next new port starts.
func (a *Allocator) Next() int32 { return a.next }

// HandedOut reports whether Get allocated a port that was free before.
func (a *Allocator) HandedOut() bool { return a.fresh }

// PortKey identifies one port of one mirror Service.
func PortKey(namespace, mirror, portName string) string {
	return namespace + "/" + mirror + "/" + portName
}

// Get returns the port for key, allocating a free one if needed: the
// lowest, or with a lazy allocator the first from where the last search
// ended.
func (a *Allocator) Get(key string) (int32, error) {
	if p, ok := a.byKey[key]; ok {
		return p, nil
	}
	size := a.r.High - a.r.Low + 1
	start := a.r.Low
	if a.next >= a.r.Low && a.next <= a.r.High {
		start = a.next
	}
	for i := range size {
		p := a.r.Low + (start-a.r.Low+i)%size
		if _, used := a.used[p]; used {
			continue
		}
		if a.taken != nil {
			t, err := a.taken(p)
			if err != nil {
				return 0, fmt.Errorf("reading the allocated gateway ports: %w", err)
			}
			if t {
				continue
			}
		}
		a.byKey[key], a.used[p] = p, key
		a.fresh, a.next = true, p+1
		return p, nil
	}
	return 0, fmt.Errorf("no free gateway port in %d-%d", a.r.Low, a.r.High)
}

// Holds reports whether key holds port: false when another key kept it (a
// duplicate left by two plans that each read the ports before the other's
// slice was in the cache, or by an interrupted write).
func (a *Allocator) Holds(key string, port int32) bool {
	p, ok := a.byKey[key]
	return ok && p == port
}

// Release frees the ports of keys no longer needed.
func (a *Allocator) Release(key string) {
	if p, ok := a.byKey[key]; ok {
		delete(a.byKey, key)
		delete(a.used, p)
	}
}
