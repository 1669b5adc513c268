package sandbox

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Network is where the sandbox's workloads get addresses. Kubernetes
// refuses loopback addresses in EndpointSlices, so gateways and demo
// backends need real ones: inside a network namespace the sandbox creates
// (Linux, root), or else on the machine's own non-loopback address.
type Network interface {
	// Describe says which way was chosen, for the user.
	Describe() string
	// APIAddress is the address the API servers bind, reachable both by
	// the user and by the workloads.
	APIAddress() string
	// WorkloadAddress returns the i-th address for workloads (1-based).
	WorkloadAddress(i int) string
	// Command wraps argv so it runs where workloads live.
	Command(argv []string) []string
	// Teardown removes what the network set up.
	Teardown() error
}

const (
	netnsName   = "backbone-sandbox"
	vethHost    = "bbsbx0"
	vethNetns   = "bbsbx1"
	subnet      = "10.214.0."
	hostSide    = subnet + "254"
	maxWorkload = 64
)

// netnsNetwork: a named namespace joined to the host by a veth pair. The
// host side holds 10.214.0.254 (the API servers bind it); workloads hold
// 10.214.0.1-64 inside. Nothing in it reaches beyond the machine.
type netnsNetwork struct{}

func (netnsNetwork) Describe() string {
	return fmt.Sprintf("network namespace %q (workloads on %s1-%d, API servers on %s)", netnsName, subnet, maxWorkload, hostSide)
}
func (netnsNetwork) APIAddress() string { return hostSide }
func (netnsNetwork) WorkloadAddress(i int) string {
	if i < 1 || i > maxWorkload {
		panic(fmt.Sprintf("workload address %d out of range", i))
	}
	return fmt.Sprintf("%s%d", subnet, i)
}
func (netnsNetwork) Command(argv []string) []string {
	return append([]string{"ip", "netns", "exec", netnsName}, argv...)
}

// Teardown removes the namespace unless another sandbox, still running,
// owns it now.
func (netnsNetwork) Teardown() error {
	owner, err := releaseNamespace(removeNamespace)
	if owner != nil {
		return fmt.Errorf("left the network namespace %s to the sandbox running from %s (pid %d)", netnsName, owner.Dir, owner.PID)
	}
	return err
}

// removeNamespace removes the namespace, its veth pair and its /etc
// files, whoever made them.
func removeNamespace() error {
	_ = os.RemoveAll(filepath.Join("/etc/netns", netnsName))
	_ = run("ip", "link", "del", vethHost)
	return run("ip", "netns", "del", netnsName)
}

// hostNetwork: no namespace (not root, or not Linux). Workloads share the
// machine's first non-loopback address and differ by port.
type hostNetwork struct{ ip string }

func (h hostNetwork) Describe() string {
	return fmt.Sprintf("the machine's own address %s (not root on Linux, so no network namespace)", h.ip)
}
func (h hostNetwork) APIAddress() string             { return h.ip }
func (h hostNetwork) WorkloadAddress(int) string     { return h.ip }
func (h hostNetwork) Command(argv []string) []string { return argv }
func (h hostNetwork) Teardown() error                { return nil }

func run(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// SetupNetwork picks and prepares the network for the sandbox in dir. The
// namespace's names are fixed, so it refuses while another sandbox that
// still runs owns them, and removes only leftovers nobody running owns.
func SetupNetwork(dir string) (Network, error) {
	if runtime.GOOS == "linux" && os.Geteuid() == 0 {
		if _, err := exec.LookPath("ip"); err == nil {
			if err := claimNamespace(dir, createNamespace); err != nil {
				return nil, err
			}
			return netnsNetwork{}, nil
		}
	}
	ip, err := firstNonLoopback()
	if err != nil {
		return nil, err
	}
	return hostNetwork{ip: ip}, nil
}

// createNamespace makes the namespace afresh, over what a sandbox that
// was not brought down left.
func createNamespace() error {
	n := netnsNetwork{}
	_ = removeNamespace()
	steps := [][]string{
		{"ip", "netns", "add", netnsName},
		{"ip", "link", "add", vethHost, "type", "veth", "peer", "name", vethNetns},
		{"ip", "link", "set", vethNetns, "netns", netnsName},
		{"ip", "addr", "add", hostSide + "/24", "dev", vethHost},
		{"ip", "link", "set", vethHost, "up"},
		{"ip", "netns", "exec", netnsName, "ip", "link", "set", "lo", "up"},
		{"ip", "netns", "exec", netnsName, "ip", "link", "set", vethNetns, "up"},
	}
	for i := 1; i <= maxWorkload; i++ {
		steps = append(steps, []string{"ip", "netns", "exec", netnsName, "ip", "addr", "add", n.WorkloadAddress(i) + "/24", "dev", vethNetns})
	}
	// Keep the default route: kube-apiserver refuses to start without one
	// (internal/testenv/netns.go gives its namespace one for that reason).
	// It points at the host side; the sandbox sets up no forwarding or NAT
	// beyond it.
	steps = append(steps, []string{"ip", "netns", "exec", netnsName, "ip", "route", "add", "default", "via", hostSide})
	for _, s := range steps {
		if err := run(s...); err != nil {
			_ = removeNamespace()
			return fmt.Errorf("creating the sandbox network namespace: %w", err)
		}
	}
	return nil
}

// directAddresses are what the sandbox's processes reach directly, never
// through the user's proxy: the API servers' and workloads' addresses and
// the names only the sandbox resolves.
func directAddresses(n Network) []string {
	out := []string{n.APIAddress()}
	if _, ok := n.(netnsNetwork); ok {
		out = append(out, subnet+"0/24")
	}
	return append(out, creditScoreHost, ingressDomain)
}

func firstNonLoopback() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() {
			return ipn.IP.String(), nil
		}
	}
	return "", fmt.Errorf("no non-loopback IPv4 address: Kubernetes refuses loopback endpoints, so the sandbox needs one (or run as root on Linux for a network namespace)")
}
