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

func (d *drainTracker) add() (release func()) {
	d.mu.Lock()
	d.active++
	d.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			d.active--
			if d.active == 0 {
				d.zero.Broadcast()
			}
			d.mu.Unlock()
		})
	}
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
