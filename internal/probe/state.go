package probe

import "time"

// State is what the prober knows about one link.
type State struct {
	// Alive is false once Threshold consecutive probes failed, and true
	// again after one success. A link never probed counts as alive, so a
	// restarting controller does not mark every mirror not ready.
	Alive               bool
	ConsecutiveFailures int32
	LastProbe           time.Time
	LastError           string
	// Window holds the latencies of recent successful probes, cleared
	// when the link dies: a dead link's latency is unknown, not what it
	// was before.
	Window *Window
	// outcomes holds whether each recent probe failed, successes and
	// failures alike, as many as Window: the loss the latencies leave out.
	outcomes ring[bool]
}

// NewState returns the state of a link not probed yet.
func NewState(windowSize int) *State {
	return &State{Alive: true, Window: NewWindow(windowSize), outcomes: newRing[bool](windowSize)}
}

// Recent is how many probes the loss window holds, and how many of them
// failed.
func (s *State) Recent() (probes, failures int) {
	held := s.outcomes.held()
	for _, failed := range held {
		if failed {
			failures++
		}
	}
	return len(held), failures
}

// Record applies one probe result and reports whether Alive changed.
func (s *State) Record(at time.Time, took time.Duration, err error, threshold int32) (changed bool) {
	s.LastProbe = at
	s.outcomes.add(err != nil)
	was := s.Alive
	if err == nil {
		s.ConsecutiveFailures = 0
		s.LastError = ""
		s.Window.Add(took)
		s.Alive = true
	} else {
		s.ConsecutiveFailures++
		s.LastError = err.Error()
		if s.ConsecutiveFailures >= max(threshold, 1) {
			if s.Alive {
				s.Window.Reset()
			}
			s.Alive = false
		}
	}
	return was != s.Alive
}
