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
	// load, when set, returns every allocation; it is called before the
	// first new port is handed out (see NewLazyAllocator).
	load func() (map[string]int32, error)
}

// NewAllocator returns an allocator over r with the existing allocations
// (key → port; keys are PortKey values).
func NewAllocator(r PortRange, existing map[string]int32) *Allocator {
	a := &Allocator{r: r, byKey: map[string]int32{}, used: map[int32]string{}}
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
// mirror already has) and reads every allocation, through all, only when
// a new port must be handed out: keeping a mirror costs nothing, and
// uniqueness holds as with NewAllocator.
func NewLazyAllocator(r PortRange, known map[string]int32, all func() (map[string]int32, error)) *Allocator {
	a := NewAllocator(r, known)
	a.load = all
	return a
}

// PortKey identifies one port of one mirror Service.
func PortKey(namespace, mirror, portName string) string {
	return namespace + "/" + mirror + "/" + portName
}

// Get returns the port for key, allocating the lowest free one if needed.
func (a *Allocator) Get(key string) (int32, error) {
	if p, ok := a.byKey[key]; ok {
		return p, nil
	}
	if a.load != nil {
		all, err := a.load()
		if err != nil {
			return 0, fmt.Errorf("reading the allocated gateway ports: %w", err)
		}
		*a = *NewAllocator(a.r, all)
		if p, ok := a.byKey[key]; ok {
			return p, nil
		}
	}
	for p := a.r.Low; p <= a.r.High; p++ {
		if _, taken := a.used[p]; !taken {
			a.byKey[key], a.used[p] = p, key
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free gateway port in %d-%d", a.r.Low, a.r.High)
}

// Release frees the ports of keys no longer needed.
func (a *Allocator) Release(key string) {
	if p, ok := a.byKey[key]; ok {
		delete(a.byKey, key)
		delete(a.used, p)
	}
}
