package sandbox

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The test binary plays a supervisor and its child for
// TestExecChildDiesWithItsParent.
const helperRole = "BACKBONE_SANDBOX_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(helperRole) {
	case "supervisor":
		// Starts a child through ExecChild, prints its pid, then waits to be killed.
		child := exec.Command(os.Args[0])
		child.Env = append(os.Environ(), helperRole+"=child", "PARENT_PID="+strconv.Itoa(os.Getpid()))
		if err := child.Start(); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(child.Process.Pid)
		select {}
	case "child":
		parent, _ := strconv.Atoi(os.Getenv("PARENT_PID"))
		err := ExecChild(parent, []string{"sleep", "300"})
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func requireLinux(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("parent-death signals and /proc are Linux's")
	}
}

func TestExecChildDiesWithItsParent(t *testing.T) {
	requireLinux(t)
	supervisor := exec.Command(os.Args[0])
	supervisor.Env = append(os.Environ(), helperRole+"=supervisor")
	out, err := supervisor.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := supervisor.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = supervisor.Process.Kill(); _ = supervisor.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(line[:len(line)-1])
	if err != nil {
		t.Fatalf("the supervisor printed %q", line)
	}
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })

	// The child becomes sleep, the supervisor's child still.
	waitFor(t, 10*time.Second, "the child to exec sleep", func() bool {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", child))
		return filepath.Base(exe) == "sleep"
	})
	if err := supervisor.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = supervisor.Wait()
	waitFor(t, 10*time.Second, "the child to die with its parent", func() bool {
		_, zombie, ok := processStart(child)
		return !ok || zombie
	})
}

func TestExecChildRefusesAnOrphan(t *testing.T) {
	requireLinux(t)
	// Its parent is this test, not pid 1: the supervisor it names is gone.
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperRole+"=child", "PARENT_PID=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("ExecChild ran its program under another parent: %s", out)
	}
}

func TestRunning(t *testing.T) {
	requireLinux(t)
	self := os.Getpid()
	start, _, ok := processStart(self)
	if !ok || start == 0 {
		t.Fatalf("no start time for this process: %d, %v", start, ok)
	}
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		state State
		want  bool
	}{
		"a supervisor that runs":                        {State{PID: self, StartTime: start}, true},
		"a pid that another process took after a crash": {State{PID: self, StartTime: start + 1}, false},
		"a supervisor that exited":                      {State{PID: exited.Process.Pid, StartTime: start}, false},
		"a state without a pid":                         {State{}, false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := tc.state.Running(); got != tc.want {
				t.Errorf("Running() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRecoverRemovesWhatACrashedSandboxLeft(t *testing.T) {
	requireLinux(t)
	dir, other := t.TempDir(), t.TempDir()
	leftover := startMarked(t, dir)
	unrelated := startMarked(t, other)

	for _, sub := range scratchDirs {
		if err := os.MkdirAll(filepath.Join(dir, sub, "data"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state.json"), fmt.Appendf(nil, `{"pid": %d, "ready": true}`, dead.Process.Pid), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sandbox.log"), []byte("kept\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := Recover(dir, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, zombie, ok := processStart(leftover.Process.Pid); ok && !zombie {
		t.Errorf("a process the crashed sandbox left still runs")
	}
	if _, zombie, ok := processStart(unrelated.Process.Pid); !ok || zombie {
		t.Errorf("Recover killed a process of another sandbox")
	}
	for _, gone := range append([]string{"state.json"}, scratchDirs...) {
		if _, err := os.Stat(filepath.Join(dir, gone)); err == nil {
			t.Errorf("%s survived Recover", gone)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "sandbox.log")); err != nil {
		t.Errorf("Recover removed the last sandbox's log: %v", err)
	}
}

// startMarked starts a process marked as the sandbox in dir's, outside
// this process's group, as a crashed supervisor's child would be.
func startMarked(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	cmd.Env = append(os.Environ(), dirEnv+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = cmd.Wait(); close(reaped) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-reaped })
	return cmd
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", timeout, what)
		}
	}
}
