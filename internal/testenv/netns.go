package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The private network end-to-end tests run in. kube-apiserver refuses
// loopback addresses in EndpointSlices, and tests may send traffic only to
// loopback or to namespaces they created; so end-to-end test binaries re-run
// themselves in a fresh network namespace (RunInNetns) that holds a veth
// pair with the addresses below and a default route (kube-apiserver will not
// start without one). Nothing in it reaches the outside.
const (
	netnsEnv    = "BACKBONE_TEST_NETNS"
	netnsPrefix = "10.213.0."
	// NetnsHostCount is how many addresses (NetnsAddr(1)..NetnsAddr(n)) the
	// namespace holds.
	NetnsHostCount = 32
)

// NetnsAddr returns the i-th test address (1-based) of the namespace.
func NetnsAddr(i int) string {
	if i < 1 || i > NetnsHostCount {
		panic(fmt.Sprintf("netns address %d out of range 1..%d", i, NetnsHostCount))
	}
	return fmt.Sprintf("%s%d", netnsPrefix, i)
}

// InNetns reports whether this process runs inside the test namespace.
func InNetns() bool { return os.Getenv(netnsEnv) == "1" }

// RunInNetns is for TestMain of end-to-end packages: outside the namespace
// it re-executes the test binary under `unshare --net` and exits with its
// status; inside, it sets up the network and runs the tests. When the
// namespace cannot be created (not root, no unshare) the tests run as they
// are and RequireNetns skips (or, with CI=true, fails) them.
func RunInNetns(m *testing.M) {
	EnterNetns()
	os.Exit(m.Run())
}

// EnterNetns runs this program in the private namespace: outside it, the
// program is re-executed under `unshare --net` and EnterNetns exits with
// its status; inside, it sets up the network and returns true. It returns
// false, running nothing, when no namespace can be made (not root).
func EnterNetns() bool {
	if InNetns() {
		if err := setupNetns(); err != nil {
			fmt.Fprintln(os.Stderr, "setting up the private network namespace:", err)
			os.Exit(2)
		}
		return true
	}
	if err := exec.Command("unshare", "--net", "true").Run(); err != nil {
		return false
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "netns:", err)
		os.Exit(2)
	}
	cmd := exec.Command("unshare", append([]string{"--net", "--", self}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	if exit, ok := err.(*exec.ExitError); ok {
		os.Exit(exit.ExitCode())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netns:", err)
		os.Exit(2)
	}
	os.Exit(0)
	return false
}

func setupNetns() error {
	script := []string{
		"ip link set lo up",
		"ip link add bbtest0 type veth peer name bbtest1",
		"ip link set bbtest0 up",
		"ip link set bbtest1 up",
	}
	for i := 1; i <= NetnsHostCount; i++ {
		script = append(script, fmt.Sprintf("ip addr add %s/24 dev bbtest0", NetnsAddr(i)))
	}
	script = append(script, "ip route add default via "+netnsPrefix+"254 dev bbtest0 onlink")
	for _, line := range script {
		f := strings.Fields(line)
		if out, err := exec.Command(f[0], f[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", line, err, out)
		}
	}
	return nil
}

// RequireNetns skips the test (fails it with CI=true) outside the test
// network namespace.
func RequireNetns(t testing.TB) {
	t.Helper()
	if InNetns() {
		return
	}
	msg := "needs a private network namespace (root and unshare): run the tests as root"
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: " + msg)
	}
	t.Skip("skipping: " + msg)
}

// ListenNetns listens on TCP at the i-th namespace address, port 0.
func ListenNetns(t testing.TB, i int) net.Listener {
	t.Helper()
	RequireNetns(t)
	l, err := net.Listen("tcp", net.JoinHostPort(NetnsAddr(i), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}
