package sandbox_test

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/backbone-mesh/backbone/internal/testenv"
)

// The unprivileged user the sandbox runs as, and the only address of the
// private network it runs in.
const (
	nobody         = 65534
	privateAddress = "10.215.0.1"
)

// TestUnprivileged runs the quick start as a user without root: no
// network namespace of its own, every workload on the machine's one
// non-loopback address, told apart by port. The machine is a private
// network namespace this test makes, whose only such address is
// privateAddress, so no traffic leaves it.
func TestUnprivileged(t *testing.T) {
	assets := testenv.RequireBinaries(t)
	nsenter, err := exec.LookPath("nsenter")
	if os.Geteuid() != 0 || err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI: the unprivileged sandbox test needs root and nsenter, to make its network and switch users")
		}
		t.Skip("needs root and nsenter to make a private network and switch to an unprivileged user")
	}
	base, err := os.MkdirTemp("", "backbone-unprivileged-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// The user may read neither root's cache nor the checkout: it gets
	// the cluster binaries, and the CRDs in a checkout's layout, here.
	userAssets := filepath.Join(base, "cluster-binaries")
	checkout := filepath.Join(base, "checkout")
	for _, f := range []struct{ from, to string }{
		{filepath.Join(assets, "etcd"), filepath.Join(userAssets, "etcd")},
		{filepath.Join(assets, "kube-apiserver"), filepath.Join(userAssets, "kube-apiserver")},
		{filepath.Join(testenv.RepoRoot(), "hack", "cluster-binaries.sh"), filepath.Join(checkout, "hack", "cluster-binaries.sh")},
	} {
		linkOrCopy(t, f.from, f.to)
	}
	crds, _ := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "crd", "bases", "*.yaml"))
	if len(crds) == 0 {
		t.Fatal("no CRDs in config/crd/bases")
	}
	for _, crd := range crds {
		linkOrCopy(t, crd, filepath.Join(checkout, "config", "crd", "bases", filepath.Base(crd)))
	}
	home, dir := filepath.Join(base, "home"), filepath.Join(base, "sandbox")
	for _, d := range []string{home, dir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}

	network := privateNetwork(t, nsenter)
	sb := &sandboxRun{
		bin: backboneBinary(t), dir: dir, cwd: checkout,
		prefix: []string{nsenter, "--net=/proc/" + fmt.Sprint(network) + "/ns/net", fmt.Sprintf("--setuid=%d", nobody), fmt.Sprintf("--setgid=%d", nobody), "--"},
		env:    []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "KUBEBUILDER_ASSETS=" + userAssets},
	}
	t.Cleanup(func() { sb.cleanup(t) })

	out, err := sb.run("sandbox", "up", "--dir", dir, "--clusters", "east,west,platform", "--timeout", "5m")
	if err != nil {
		sb.logTail(t, "sandbox.log")
		t.Fatal(err)
	}
	t.Logf("sandbox up as uid %d:\n%s", nobody, out)
	if want := "the machine's own address " + privateAddress; !strings.Contains(out, want) {
		t.Errorf("sandbox up does not say it chose %q", want)
	}

	st := sb.state(t)
	if st.Namespace != "" {
		t.Errorf("an unprivileged sandbox made the network namespace %q", st.Namespace)
	}
	var addrs []string
	for _, c := range st.Clusters {
		u, err := url.Parse(c.APIServer)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, u.Host, c.GatewayInbound, c.GatewayAdmin, c.ControllerAdmin)
	}
	for _, l := range st.Links {
		addrs = append(addrs, l.Proxy)
	}
	for _, d := range st.Demos {
		if d.Name != "credit-score" { // named, pinned to the same address
			addrs = append(addrs, d.Address)
		}
	}
	for _, a := range addrs {
		if host, _, err := net.SplitHostPort(a); err != nil || host != privateAddress {
			t.Errorf("the sandbox serves on %s, not on the private network's %s", a, privateAddress)
		}
	}
	procs := sandboxProcesses(dir)
	if len(procs) < 15 { // 3 × (etcd, kube-apiserver, gateway, controller), demos, supervisor
		t.Errorf("only %d sandbox processes: %v", len(procs), procs)
	}
	for _, p := range procs {
		if p.uid != nobody {
			t.Errorf("%s runs as uid %d, not %d", p, p.uid, nobody)
		}
	}

	// Gateways share one address: every mirror must have a port of its own,
	// or a call reaches another cluster's listener.
	sb.checkCalls(t)
	sb.checkDown(t)
}

// privateNetwork makes a network namespace, held by a process that dies
// with the test, whose only non-loopback address is privateAddress, and
// returns the holder's pid.
func privateNetwork(t *testing.T, nsenter string) int {
	t.Helper()
	holder := exec.Command("sleep", "infinity")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	ns := "--net=/proc/" + fmt.Sprint(holder.Process.Pid) + "/ns/net"
	for _, line := range []string{
		"ip link set lo up",
		"ip link add bbnr0 type veth peer name bbnr1",
		"ip addr add " + privateAddress + "/24 dev bbnr0",
		"ip link set bbnr0 up",
		"ip link set bbnr1 up",
		// kube-apiserver wants a default route; nothing is behind it.
		"ip route add default via 10.215.0.254 dev bbnr0 onlink",
	} {
		if out, err := exec.Command(nsenter, append([]string{ns, "--"}, strings.Fields(line)...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
	}
	return holder.Process.Pid
}

// linkOrCopy makes from readable at to, creating its directories
// readable by everyone.
func linkOrCopy(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(from, to); err == nil {
		return
	}
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = src.Close() }()
	info, err := src.Stat()
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, info.Mode().Perm()|0o444)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
