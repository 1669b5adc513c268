package gateway

import (
	"sync"
	"time"
)

// drainTracker counts streams in flight so a terminating gateway can wait
// for them, up to its drain timeout.
type drainTracker struct {
	mu     sync.Mutex
	active int
	zero   *sync.Cond
}

func newDrainTracker() *drainTracker {
	d := &drainTracker{}
	d.zero = sync.NewCond(&d.mu)
	return d
}

// add counts a stream in; done counts it out, once per add.
func (d *drainTracker) add() {
	d.mu.Lock()
	d.active++
	d.mu.Unlock()
}

func (d *drainTracker) done() {
	d.mu.Lock()
	d.active--
	if d.active == 0 {
		d.zero.Broadcast()
	}
	d.mu.Unlock()
}

// wait returns true when no stream is left, false on timeout.
func (d *drainTracker) wait(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		d.mu.Lock()
		for d.active > 0 {
			d.zero.Wait()
		}
		d.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

func (d *drainTracker) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.active
}
