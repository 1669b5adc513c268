// Package sandbox_test runs the README's quick start end to end: `backbone
// sandbox up` with three clusters, the calls it suggests, the latency
// matrix against the delays it injected, and `sandbox down` leaving nothing
// behind.
package sandbox_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/internal/linkmatrix"
	"github.com/backbone-mesh/backbone/internal/sandbox"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

func TestQuickStart(t *testing.T) {
	testenv.RequireBinaries(t)
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the sandbox test needs root (network namespaces) in CI")
		}
		t.Skip("the sandbox needs root for its network namespace")
	}
	bin := filepath.Join(t.TempDir(), "backbone")
	build := exec.Command("go", "build", "-o", bin, "./cmd/backbone")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "sandbox")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Dir = testenv.RepoRoot()
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if err != nil {
			err = fmt.Errorf("backbone %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
		}
		return out.String(), err
	}
	t.Cleanup(func() { _, _ = run("sandbox", "down", "--dir", dir) })

	start := time.Now()
	out, err := run("sandbox", "up", "--dir", dir, "--clusters", "east,west,platform", "--timeout", "5m")
	if err != nil {
		if b, rerr := os.ReadFile(filepath.Join(dir, "logs", "controller-west.log")); rerr == nil {
			t.Logf("controller-west.log:\n%s", tail(b, 40))
		}
		t.Fatal(err)
	}
	t.Logf("sandbox up took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	for _, want := range []string{"LINK LATENCY", "backbone sandbox curl", "backbone links"} {
		if !strings.Contains(out, want) {
			t.Errorf("the summary lacks %q", want)
		}
	}
	st, err := sandbox.ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	// up is idempotent: over a running sandbox it shows it and changes nothing.
	again, err := run("sandbox", "up", "--dir", dir, "--clusters", "east,west,platform")
	if err != nil || !strings.Contains(again, "LINK LATENCY") {
		t.Fatalf("a second sandbox up: %v\n%s", err, again)
	}
	if st2, err := sandbox.ReadState(dir); err != nil || st2.PID != st.PID {
		t.Fatalf("a second sandbox up replaced the sandbox: %v", err)
	}

	// The calls the summary suggests: cross-cluster, egress, platform.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"west", "demo/hello-east"}, "hello from east"},
		{[]string{"west", "http://credit-score-east.backbone-system.svc.cluster.local/"}, "credit score: 742"},
		{[]string{"platform", "backbone-system/credit-score-east"}, "credit score: 742"},
		{[]string{"east", "logging/log-collector-platform"}, "log-collector in platform"},
	} {
		got, err := run(append([]string{"sandbox", "curl", "--dir", dir}, c.args...)...)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(got, c.want) {
			t.Errorf("sandbox curl %v answered %q, want %q", c.args, got, c.want)
		}
	}

	// The matrix: every link within ±10% + 2 ms of the round trip the
	// sandbox injected on it. Probes run every 3 s; wait for a window.
	want := map[string]int64{}
	for _, l := range st.Links {
		want[l.From+"->"+l.To] = l.RoundTripM
	}
	var m linkmatrix.Matrix
	deadline := time.Now().Add(2 * time.Minute)
	for {
		js, err := run("--kubeconfig", st.Kubeconfig, "links", "--all-contexts", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(js), &m); err != nil {
			t.Fatal(err)
		}
		bad := matrixProblems(m, want)
		if len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("latency matrix off after 2 minutes:\n%s", strings.Join(bad, "\n"))
		}
		time.Sleep(3 * time.Second)
	}
	for _, c := range m.Links {
		t.Logf("%s -> %s: p50 %.1f ms (injected round trip %d ms)", c.Source, c.Target, *c.P50Millis, want[c.Source+"->"+c.Target])
	}

	checkDashboard(t, bin, st.Kubeconfig, want)

	// Memory of everything the sandbox runs, all together.
	pids := tree(st.PID)
	var rss int64
	for _, pid := range pids {
		rss += rssKiB(pid)
	}
	t.Logf("three-cluster sandbox: %d processes, %.0f MiB resident in all", len(pids), float64(rss)/1024)

	if out, err := run("sandbox", "status", "--dir", dir); err != nil || !strings.Contains(out, "MIRRORS") {
		t.Fatalf("sandbox status: %v\n%s", err, out)
	}
	if _, err := run("sandbox", "down", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d (%s) outlived sandbox down", pid, cmdline(pid))
		}
	}
	if _, err := os.Stat("/run/netns/backbone-sandbox"); err == nil {
		t.Errorf("the sandbox's network namespace outlived sandbox down")
	}
}

func matrixProblems(m linkmatrix.Matrix, want map[string]int64) []string {
	var bad []string
	seen := 0
	for _, c := range m.Links {
		rt, ok := want[c.Source+"->"+c.Target]
		if !ok {
			continue
		}
		seen++
		if c.P50Millis == nil {
			bad = append(bad, fmt.Sprintf("%s -> %s: no latency yet (%s)", c.Source, c.Target, c.State))
			continue
		}
		tol := 0.1*float64(rt) + 2
		if d := *c.P50Millis - float64(rt); d > tol || d < -tol {
			bad = append(bad, fmt.Sprintf("%s -> %s: p50 %.1f ms, injected round trip %d ms (±%.1f)", c.Source, c.Target, *c.P50Millis, rt, tol))
		}
	}
	if seen != len(want) {
		bad = append(bad, fmt.Sprintf("%d of %d links in the matrix", seen, len(want)))
	}
	return bad
}

// tree is pid and its descendants.
func tree(root int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 {
			ppid, _ := strconv.Atoi(fields[1])
			children[ppid] = append(children[ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return !strings.Contains(string(b), ") Z ") // a zombie is gone
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

func tail(b []byte, n int) string {
	lines := strings.Split(string(b), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkDashboard serves `backbone dashboard` over the sandbox's clusters,
// loads it in headless Chromium, and checks the rendered matrix: every
// cluster, and every link's number near its injected round trip. The
// screenshot is kept in bin/artifacts/dashboard.png.
func checkDashboard(t *testing.T, bin, kubeconfig string, want map[string]int64) {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI: chromium is not installed (.ci/run installs Debian's chromium)")
		}
		t.Log("no chromium: the dashboard's browser check is skipped")
		return
	}
	cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "dashboard", "--all-contexts", "--listen", "127.0.0.1:0", "--period", "1s")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make([]byte, 256)
	n, _ := stdout.Read(line)
	url := ""
	for _, f := range strings.Fields(string(line[:n])) {
		if strings.HasPrefix(f, "http://") {
			url = f
		}
	}
	if url == "" {
		t.Fatalf("dashboard printed %q", line[:n])
	}
	time.Sleep(2 * time.Second) // a poll or two

	profile := t.TempDir()
	flags := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--user-data-dir=" + profile,
		"--virtual-time-budget=5000", "--window-size=1200,1100"}
	dom, err := exec.Command(chromium, append(flags, "--dump-dom", url)...).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v", err)
	}
	page := string(dom)
	if !strings.Contains(page, `data-loaded="true"`) {
		t.Fatalf("the page never loaded its data:\n%s", page)
	}
	for _, c := range []string{"east", "west", "platform"} {
		if !strings.Contains(page, "<th>"+c+"</th>") {
			t.Errorf("the matrix lacks cluster %s", c)
		}
	}
	cells := regexp.MustCompile(`data-source="([a-z]+)" data-target="([a-z]+)" data-ms="([0-9.]+)"`).FindAllStringSubmatch(page, -1)
	if len(cells) != len(want) {
		t.Fatalf("the page shows %d latencies, want %d:\n%s", len(cells), len(want), page)
	}
	for _, c := range cells {
		ms, _ := strconv.ParseFloat(c[3], 64)
		rt := want[c[1]+"->"+c[2]]
		if tol := 0.1*float64(rt) + 2; ms < float64(rt)-tol || ms > float64(rt)+tol {
			t.Errorf("the page shows %s -> %s at %.1f ms; the injected round trip is %d ms", c[1], c[2], ms, rt)
		}
	}
	if !strings.Contains(page, `data-egress="east/credit-score"`) {
		t.Errorf("the page does not list the egress target")
	}
	artifacts := filepath.Join(testenv.RepoRoot(), "bin", "artifacts")
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(artifacts, "dashboard.png")
	if out, err := exec.Command(chromium, append(flags, "--screenshot="+shot, url)...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	t.Logf("dashboard screenshot: %s", shot)
}
