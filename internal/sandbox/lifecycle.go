package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// dirEnv marks every process a sandbox starts: the supervisor sets it to
// the sandbox's directory and every child inherits it, so what a crashed
// supervisor left behind is recognisable (and nothing else is).
const dirEnv = "BACKBONE_SANDBOX_DIR"

// Running reports whether the supervisor that wrote the state still runs:
// its pid is alive and, where the system says, started when the state
// records (after a crash the pid may belong to another process).
func (st *State) Running() bool {
	if st.PID <= 0 {
		return false
	}
	if err := syscall.Kill(st.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	start, zombie, ok := processStart(st.PID)
	if !ok {
		return st.StartTime == 0 // no /proc: the pid is all there is
	}
	return !zombie && (st.StartTime == 0 || start == st.StartTime)
}

// Down stops the sandbox in dir: SIGTERM to its supervisor, which stops
// every process it started and removes its network, then Recover for what
// a supervisor that crashed or did not stop in time left behind.
func Down(dir string, timeout time.Duration, w io.Writer) error {
	st, err := ReadState(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		st = nil
	case err != nil:
		return err
	}
	if st != nil && st.Running() {
		if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
			return err
		}
		for deadline := time.Now().Add(timeout); st.Running(); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				fmt.Fprintf(w, "the sandbox (pid %d) did not stop within %s: killing it\n", st.PID, timeout)
				_ = syscall.Kill(st.PID, syscall.SIGKILL)
				break
			}
		}
		fmt.Fprintln(w, "sandbox stopped")
	} else if st != nil {
		fmt.Fprintf(w, "the sandbox (pid %d) was not running\n", st.PID)
	} else {
		fmt.Fprintf(w, "no sandbox state in %s\n", dir)
	}
	return Recover(dir, w)
}

// Recover removes what a sandbox in dir left behind when its supervisor
// died without tearing down (SIGKILL, OOM killer, a crash): processes that
// outlived it, its network namespace, its clusters' data and the stale
// state. Every child dies with the supervisor on Linux, so usually only
// the network and the files remain. Callers make sure no supervisor runs
// from dir.
func Recover(dir string, w io.Writer) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	st, _ := ReadState(dir)
	if n, err := killLeftovers(dir, 10*time.Second); err != nil {
		return err
	} else if n > 0 {
		fmt.Fprintf(w, "stopped %d processes left by a sandbox that was not brought down\n", n)
	}
	if st != nil && st.Namespace != "" && os.Geteuid() == 0 {
		if _, err := os.Stat(filepath.Join("/run/netns", st.Namespace)); err == nil {
			// The namespace's names are fixed: another sandbox may have
			// made it anew since.
			owner, err := releaseNamespace(removeNamespace)
			switch {
			case err != nil:
				return fmt.Errorf("removing the network namespace %s: %w", st.Namespace, err)
			case owner != nil:
				fmt.Fprintf(w, "left the network namespace %s: it belongs to the sandbox running from %s (pid %d) now\n", st.Namespace, owner.Dir, owner.PID)
			default:
				fmt.Fprintf(w, "removed the network namespace %s\n", st.Namespace)
			}
		}
	}
	for _, sub := range scratchDirs {
		if err := os.RemoveAll(filepath.Join(dir, sub)); err != nil {
			return err
		}
	}
	if err := os.Remove(filepath.Join(dir, "state.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// scratchDirs hold what only a running sandbox needs: the control planes'
// data and certificates, the temporary files of the processes it starts,
// and the wrappers that tie them to the supervisor.
var scratchDirs = []string{"clusters", "tmp", "bin"}

// killLeftovers sends SIGKILL to every process marked with dir and waits
// until they are gone. It returns how many there were.
func killLeftovers(dir string, timeout time.Duration) (int, error) {
	pids, err := leftovers(dir)
	if err != nil || len(pids) == 0 {
		return 0, err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(timeout)
	for _, pid := range pids {
		for {
			if _, zombie, ok := processStart(pid); !ok || zombie {
				break
			}
			if time.Now().After(deadline) {
				return len(pids), fmt.Errorf("process %d of the old sandbox survived SIGKILL for %s", pid, timeout)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return len(pids), nil
}
