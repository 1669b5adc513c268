// Package sandbox runs a whole backbone on one machine: one real control
// plane (etcd + kube-apiserver) per cluster, a controller and a gateway per
// cluster as local processes, a fresh trust anchor, every cluster linked to
// every other through a latency-injecting proxy modelled on real
// inter-cloud latencies, and demo workloads declared in a sample
// shuttle.yaml. It is the quick start: `backbone sandbox up`.
package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/backbone-mesh/backbone/internal/faultproxy"
)

// Options configure a sandbox.
type Options struct {
	Clusters    []string
	Dir         string
	TrustDomain string
	// Self is the backbone binary the sandbox runs for controllers,
	// gateways, certificates, links and demo workloads.
	Self string
	// RepoRoot, when set, is a checkout whose hack/cluster-binaries.sh
	// builds the cluster binaries if they are missing.
	RepoRoot string
	Progress io.Writer
}

// State is what `sandbox up` leaves in <dir>/state.json for `status`,
// `down` and the user.
type State struct {
	PID int `json:"pid"`
	// StartTime is when the supervisor started (clock ticks after boot,
	// Linux), so a pid reused after a crash is not taken for it.
	StartTime uint64 `json:"startTime,omitempty"`
	Network   string `json:"network"`
	// Namespace is the network namespace the sandbox created, if any.
	Namespace  string         `json:"namespace,omitempty"`
	Kubeconfig string         `json:"kubeconfig"`
	Clusters   []ClusterState `json:"clusters"`
	Links      []LinkState    `json:"links"`
	Demos      []DemoState    `json:"demos"`
	Procs      []*proc        `json:"processes"`
	Ready      bool           `json:"ready"`
	Error      string         `json:"error,omitempty"`
}

// ClusterState describes one cluster of the sandbox.
type ClusterState struct {
	Name            string `json:"name"`
	Cloud           string `json:"cloud"`
	APIServer       string `json:"apiServer"`
	Kubeconfig      string `json:"kubeconfig"`
	GatewayAddress  string `json:"gatewayAddress"`
	GatewayInbound  string `json:"gatewayInbound"`
	GatewayAdmin    string `json:"gatewayAdmin"`
	ControllerAdmin string `json:"controllerAdmin"`
	IdentityDir     string `json:"identityDir"`
}

// LinkState is one directed link and the proxy that simulates it.
type LinkState struct {
	From       string `json:"from"`
	To         string `json:"to"`
	Proxy      string `json:"proxy"`
	OneWayMS   int64  `json:"oneWayLatencyMs"`
	RoundTripM int64  `json:"roundTripMs"`
}

// Sandbox is a running sandbox, owned by the supervisor process.
type Sandbox struct {
	opts     Options
	net      Network
	clusters []*cluster
	procs    *procs
	proxies  []*faultproxy.Proxy
	state    State
	mu       sync.Mutex
}

func (s *Sandbox) step(format string, args ...any) func() {
	start := time.Now()
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(s.opts.Progress, "==> %s\n", msg)
	return func() {
		fmt.Fprintf(s.opts.Progress, "    done in %s\n", time.Since(start).Round(100*time.Millisecond))
	}
}

// Run brings the sandbox up, writes state.json, and keeps it running
// until ctx ends; then it tears everything down. The calling process is
// the supervisor: Run makes the sandbox's directory its working directory
// and marks its environment, which every process it starts inherits.
func Run(ctx context.Context, opts Options) error {
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return err
	}
	opts.Dir = dir
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return err
	}
	// Every sandbox starts fresh: a new trust anchor, clusters and output.
	for _, sub := range append([]string{"pki", "gitops", "logs"}, scratchDirs...) {
		if err := os.RemoveAll(filepath.Join(opts.Dir, sub)); err != nil {
			return err
		}
	}
	if err := becomeSupervisor(opts.Dir); err != nil {
		return err
	}
	s := &Sandbox{opts: opts, procs: &procs{dir: opts.Dir}}
	s.state.PID = os.Getpid()
	s.state.StartTime, _, _ = processStart(s.state.PID)
	// Written at once, so that `down` finds a supervisor killed while it
	// starts, and `up` does not start a second one.
	if err := s.writeState(); err != nil {
		return err
	}
	err = s.up(ctx)
	if err != nil {
		s.state.Error = err.Error()
	} else {
		s.state.Ready = true
	}
	if werr := s.writeState(); werr != nil && err == nil {
		err = werr
	}
	if err == nil {
		fmt.Fprintln(opts.Progress, "==> sandbox ready")
		<-ctx.Done()
	}
	s.teardown()
	return err
}

// becomeSupervisor prepares this process: its children's temporary files
// (envtest's among them) go to <dir>/tmp, removed with the sandbox even
// after a crash; they work in dir and carry its name in dirEnv.
func becomeSupervisor(dir string) error {
	// Made absolute before the working directory changes.
	if assets := os.Getenv("KUBEBUILDER_ASSETS"); assets != "" {
		abs, err := filepath.Abs(assets)
		if err != nil {
			return err
		}
		_ = os.Setenv("KUBEBUILDER_ASSETS", abs)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	for k, v := range map[string]string{"TMPDIR": tmp, dirEnv: dir} {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	return os.Chdir(dir)
}

func (s *Sandbox) writeState() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs.mu.Lock()
	s.state.Procs = append([]*proc(nil), s.procs.list...)
	s.procs.mu.Unlock()
	b, err := json.MarshalIndent(s.state, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.opts.Dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.opts.Dir, "state.json"))
}

// ReadState reads the state a supervisor wrote.
func ReadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	st := &State{}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "state.json"), err)
	}
	return st, nil
}

func (s *Sandbox) teardown() {
	fmt.Fprintln(s.opts.Progress, "==> stopping the sandbox")
	s.procs.stopAll(10 * time.Second)
	for _, p := range s.proxies {
		_ = p.Close()
	}
	var wg sync.WaitGroup
	for _, c := range s.clusters {
		if c == nil {
			continue // it failed to start, and stopped what it had started
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.env.Stop() }()
	}
	wg.Wait()
	if s.net != nil {
		if err := s.net.Teardown(); err != nil {
			fmt.Fprintln(s.opts.Progress, "removing the network:", err)
		}
	}
	for _, sub := range scratchDirs {
		_ = os.RemoveAll(filepath.Join(s.opts.Dir, sub))
	}
}

// runSelf runs a short backbone command (certs, link, render) and returns
// its standard output.
func (s *Sandbox) runSelf(ctx context.Context, args ...string) ([]byte, error) {
	out, err := command(ctx, s.opts.Self, args...)
	if err != nil {
		return nil, fmt.Errorf("backbone %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}
