package sandbox_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/internal/sandbox"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

var buildDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// backboneBinary builds bin/backbone once per test binary, where any user
// may run it.
var backboneBinary = func() func(t *testing.T) string {
	build := sync.OnceValues(func() (string, error) {
		dir, err := os.MkdirTemp("", "backbone-sandbox-test-")
		if err != nil {
			return "", err
		}
		buildDir = dir
		if err := os.Chmod(dir, 0o755); err != nil {
			return "", err
		}
		bin := filepath.Join(dir, "backbone")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/backbone")
		cmd.Dir = testenv.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build: %v\n%s", err, out)
		}
		return bin, nil
	})
	return func(t *testing.T) string {
		t.Helper()
		bin, err := build()
		if err != nil {
			t.Fatal(err)
		}
		return bin
	}
}()

// sandboxRun runs backbone commands against one sandbox directory, as
// the user would: with prefix (nsenter, to run as another user in another
// network) and env when set.
type sandboxRun struct {
	bin, dir, cwd string
	prefix        []string
	env           []string
}

func (sb *sandboxRun) run(args ...string) (string, error) {
	argv := append(append(append([]string(nil), sb.prefix...), sb.bin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = sb.cwd
	if sb.env != nil {
		cmd.Env = sb.env
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("backbone %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String(), err
}

func (sb *sandboxRun) state(t *testing.T) *sandbox.State {
	t.Helper()
	st, err := sandbox.ReadState(sb.dir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (sb *sandboxRun) logTail(t *testing.T, name string) {
	t.Helper()
	path := filepath.Join(sb.dir, name)
	if name != "sandbox.log" {
		path = filepath.Join(sb.dir, "logs", name)
	}
	if b, err := os.ReadFile(path); err == nil {
		t.Logf("%s:\n%s", name, tail(b, 40))
	}
}

// checkCalls makes the tour's calls: cross-cluster, egress from two
// clusters, and the platform's service.
func (sb *sandboxRun) checkCalls(t *testing.T) {
	t.Helper()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"west", "demo/hello-east"}, "hello from east"},
		{[]string{"west", "http://credit-score-east.backbone-system.svc.cluster.local/"}, "credit score: 742"},
		{[]string{"platform", "backbone-system/credit-score-east"}, "credit score: 742"},
		{[]string{"east", "logging/log-collector-platform"}, "log-collector in platform"},
	} {
		got, err := sb.run(append([]string{"sandbox", "curl", "--dir", sb.dir}, c.args...)...)
		if err != nil {
			t.Error(err)
			continue
		}
		if !strings.Contains(got, c.want) {
			t.Errorf("sandbox curl %v answered %q, want %q", c.args, got, c.want)
		}
	}
}

// checkDown runs sandbox down and checks that no process, control plane
// data or state is left, and that a second down is harmless.
func (sb *sandboxRun) checkDown(t *testing.T) {
	t.Helper()
	st := sb.state(t)
	pids := tree(st.PID)
	if out, err := sb.run("sandbox", "down", "--dir", sb.dir); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, p := range waitGone(sb.dir, 10*time.Second) {
		t.Errorf("%s outlived sandbox down", p)
	}
	for _, pid := range pids {
		if p, ok := readProcess(pid); ok {
			t.Errorf("%s outlived sandbox down", p)
		}
	}
	for _, name := range []string{"state.json", "clusters", "tmp", "bin"} {
		if _, err := os.Stat(filepath.Join(sb.dir, name)); err == nil {
			t.Errorf("%s outlived sandbox down", filepath.Join(sb.dir, name))
		}
	}
	if out, err := sb.run("sandbox", "down", "--dir", sb.dir); err != nil {
		t.Errorf("a second sandbox down: %v\n%s", err, out)
	}
}

// cleanup brings the sandbox down after a failed test and kills what
// that left.
func (sb *sandboxRun) cleanup(t *testing.T) {
	if out, err := sb.run("sandbox", "down", "--dir", sb.dir); err != nil {
		t.Logf("sandbox down: %v\n%s", err, out)
	}
	for _, p := range sandboxProcesses(sb.dir) {
		t.Logf("killing %s", p)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

// process is a live process of the machine.
type process struct {
	pid     int
	uid     int
	cwd     string
	cmdline string
	environ []string
}

func (p process) String() string { return fmt.Sprintf("process %d (%s)", p.pid, p.cmdline) }

// readProcess reads a live process; zombies are gone already.
func readProcess(pid int) (process, bool) {
	base := filepath.Join("/proc", strconv.Itoa(pid))
	status, err := os.ReadFile(filepath.Join(base, "status"))
	if err != nil {
		return process{}, false
	}
	p := process{pid: pid, uid: -1}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "State:"); ok && strings.HasPrefix(strings.TrimSpace(v), "Z") {
			return process{}, false
		}
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				p.uid, _ = strconv.Atoi(f[0])
			}
		}
	}
	b, _ := os.ReadFile(filepath.Join(base, "cmdline"))
	p.cmdline = strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	p.cwd, _ = os.Readlink(filepath.Join(base, "cwd"))
	env, _ := os.ReadFile(filepath.Join(base, "environ"))
	p.environ = strings.Split(string(env), "\x00")
	return p, true
}

// sandboxProcesses are the live processes that belong to the sandbox in
// dir: run in it, name it on their command line, or carry the mark the
// supervisor gives every child.
func sandboxProcesses(dir string) []process {
	entries, _ := os.ReadDir("/proc")
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		p, ok := readProcess(pid)
		if !ok {
			continue
		}
		if p.cwd == dir || strings.HasPrefix(p.cwd, dir+"/") || strings.Contains(p.cmdline, dir) ||
			slices.Contains(p.environ, "BACKBONE_SANDBOX_DIR="+dir) {
			out = append(out, p)
		}
	}
	return out
}

// waitGone waits until no process of the sandbox in dir remains, and
// returns those that do after timeout.
func waitGone(dir string, timeout time.Duration) []process {
	deadline := time.Now().Add(timeout)
	for {
		left := sandboxProcesses(dir)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(200 * time.Millisecond)
	}
}
