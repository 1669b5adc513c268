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
	Window              *Window
}

// NewState returns the state of a link not probed yet.
func NewState(windowSize int) *State {
	return &State{Alive: true, Window: NewWindow(windowSize)}
}

// Record applies one probe result and reports whether Alive changed.
func (s *State) Record(at time.Time, took time.Duration, err error, threshold int32) (changed bool) {
	s.LastProbe = at
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
			s.Alive = false
		}
	}
	return was != s.Alive
}
