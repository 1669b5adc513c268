package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/backbone-mesh/backbone/internal/faultproxy"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/kube"
)

const (
	gatewayInboundPort = 4143
	gatewayAdminPort   = 9990
	controllerAdmin    = 9991
)

func (s *Sandbox) up(ctx context.Context) error {
	binDir, err := s.clusterBinaries(ctx)
	if err != nil {
		return err
	}

	done := s.step("creating the sandbox network")
	if s.net, err = SetupNetwork(s.opts.Dir); err != nil {
		return err
	}
	// Before the first request to the sandbox's addresses: Go reads the
	// proxy settings once.
	if err := bypassProxy(os.Getenv, os.Setenv, directAddresses(s.net)); err != nil {
		return err
	}
	s.state.Network = s.net.Describe()
	if _, ok := s.net.(netnsNetwork); ok {
		s.state.Namespace = netnsName
	}
	if _, ok := s.net.(hostNetwork); ok && len(s.opts.Clusters) > maxHostClusters {
		return fmt.Errorf("on the machine's own address the sandbox has gateway ports for %d clusters, not %d", maxHostClusters, len(s.opts.Clusters))
	}
	if err := s.writeState(); err != nil {
		return err
	}
	fmt.Fprintf(s.opts.Progress, "    %s\n", s.state.Network)
	done()

	if err := s.startClusters(binDir); err != nil {
		return err
	}
	if err := s.issueIdentities(ctx); err != nil {
		return err
	}
	if err := s.startGateways(ctx); err != nil {
		return err
	}
	if err := s.linkClusters(ctx); err != nil {
		return err
	}
	if err := s.startControllers(); err != nil {
		return err
	}
	return s.deployDemos(ctx)
}

// clusterBinaries finds, or builds through the checkout's script, the
// kube-apiserver and etcd binaries, streaming the build's progress.
func (s *Sandbox) clusterBinaries(ctx context.Context) (string, error) {
	done := s.step("locating the kube-apiserver and etcd binaries (built once, then cached)")
	defer done()
	if s.opts.RepoRoot == "" {
		return "", errors.New("no backbone checkout was found: the sandbox runs from one (it installs the checkout's CRDs and builds or reuses its cluster binaries with hack/cluster-binaries.sh); cd into a checkout and run make sandbox")
	}
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return filepath.Abs(dir)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(s.opts.RepoRoot, "hack", "cluster-binaries.sh"))
	cmd.Dir = s.opts.RepoRoot
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", err
	}
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		fmt.Fprintf(s.opts.Progress, "    %s\n", sc.Text())
	}
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("building the cluster binaries: %w", err)
	}
	return strings.TrimSpace(out.String()), nil
}

func (s *Sandbox) startClusters(binDir string) error {
	done := s.step("starting %d clusters (etcd + kube-apiserver each): %s", len(s.opts.Clusters), strings.Join(s.opts.Clusters, ", "))
	crdDir := filepath.Join(s.opts.RepoRoot, "config", "crd", "bases")
	bins, err := tieToSupervisor(filepath.Join(s.opts.Dir, "bin"), binDir, s.opts.Self)
	if err != nil {
		return err
	}
	s.clusters = make([]*cluster, len(s.opts.Clusters))
	errs := make([]error, len(s.opts.Clusters))
	var wg sync.WaitGroup
	for i, name := range s.opts.Clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.clusters[i], errs[i] = startCluster(name, bins, crdDir, s.net.APIAddress(), s.opts.Dir)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	configs := map[string]*rest.Config{}
	for i, c := range s.clusters {
		configs[c.name] = c.config
		s.state.Clusters = append(s.state.Clusters, ClusterState{
			Name: c.name, Cloud: cloudRegions[cloudOf(i)], APIServer: c.config.Host, Kubeconfig: c.kubeconfig,
		})
		if err := kube.EnsureNamespace(context.Background(), c.client, "backbone-system"); err != nil {
			return err
		}
		// The link reader other clusters use, and the components' RBAC.
		v := install.DefaultValues()
		v.ClusterName, v.TrustDomain = c.name, s.opts.TrustDomain
		access, err := install.Access(v)
		if err != nil {
			return err
		}
		if err := install.Apply(context.Background(), c.client, access); err != nil {
			return fmt.Errorf("cluster %s: %w", c.name, err)
		}
	}
	s.state.Kubeconfig = filepath.Join(s.opts.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kube.KubeconfigFor(configs, s.opts.Clusters[0]), s.state.Kubeconfig); err != nil {
		return err
	}
	done()
	return nil
}

func (s *Sandbox) issueIdentities(ctx context.Context) error {
	done := s.step("creating a trust anchor (%s) and a gateway identity per cluster", s.opts.TrustDomain)
	anchor := filepath.Join(s.opts.Dir, "pki", "trust-anchor")
	if _, err := s.runSelf(ctx, "certs", "trust-anchor", "--trust-domain", s.opts.TrustDomain, "--out", anchor); err != nil {
		return err
	}
	for i := range s.clusters {
		dir := filepath.Join(s.opts.Dir, "pki", s.clusters[i].name)
		if _, err := s.runSelf(ctx, "certs", "issue", "--ca-dir", anchor, "--cluster-name", s.clusters[i].name, "--out", dir); err != nil {
			return err
		}
		s.state.Clusters[i].IdentityDir = dir
	}
	done()
	return nil
}

// startGateways runs one gateway per cluster on its own workload address
// and registers it as the cluster's backbone-gateway Service.
func (s *Sandbox) startGateways(ctx context.Context) error {
	done := s.step("starting a gateway per cluster")
	for i, c := range s.clusters {
		ip := s.net.WorkloadAddress(i + 1)
		st := &s.state.Clusters[i]
		st.GatewayAddress = ip
		st.GatewayInbound = net.JoinHostPort(ip, fmt.Sprint(gatewayInboundPort+portOffset(s.net, i)))
		st.GatewayAdmin = net.JoinHostPort(ip, fmt.Sprint(gatewayAdminPort+portOffset(s.net, i)))
		id := fmt.Sprintf("spiffe://%s/cluster/%s", s.opts.TrustDomain, c.name)
		if err := registerGateway(ctx, c.client, ip, gatewayInboundPort+portOffset(s.net, i), id); err != nil {
			return err
		}
		argv := s.net.Command(append([]string{s.opts.Self, "gateway",
			"--kubeconfig", c.kubeconfig,
			"--cluster-name", c.name,
			"--identity-dir", st.IdentityDir,
			"--inbound-address", st.GatewayInbound,
			"--outbound-bind-ip", ip,
			"--admin-address", st.GatewayAdmin,
			// No kube-proxy to wait for: stop at once.
			"--shutdown-delay", "0s",
		}, s.egressResolve()...))
		if _, err := s.procs.start("gateway-"+c.name, argv); err != nil {
			return err
		}
	}
	for _, st := range s.state.Clusters {
		if err := waitHTTP(ctx, "http://"+st.GatewayAdmin+"/readyz", 60*time.Second); err != nil {
			return fmt.Errorf("gateway of %s did not become ready (see %s): %w", st.Name, filepath.Join(s.opts.Dir, "logs", "gateway-"+st.Name+".log"), err)
		}
	}
	done()
	return nil
}

// portOffset separates the ports of workloads that share one address
// (host network); in a namespace each has its own address.
func portOffset(n Network, i int) int {
	if _, ok := n.(hostNetwork); ok {
		return i * 10
	}
	return 0
}

// maxHostClusters is how many clusters' gateway ports gatewayPortRanges
// fits into the controller's default ranges (20000-29999, 30000-30999).
const maxHostClusters = 20

// gatewayPortRanges gives each cluster's controller ranges of its own to
// allocate gateway ports from where gateways share one address (host
// network): 500 mirror ports and 50 egress ports per cluster.
func gatewayPortRanges(n Network, i int) []string {
	if _, ok := n.(hostNetwork); !ok {
		return nil
	}
	mirrors, egress := 20000+500*i, 30000+50*i
	return []string{
		"--gateway-port-range", fmt.Sprintf("%d-%d", mirrors, mirrors+499),
		"--egress-port-range", fmt.Sprintf("%d-%d", egress, egress+49),
	}
}

// linkClusters puts a latency-injecting proxy on every directed link and
// applies `backbone link` of the target to the source.
func (s *Sandbox) linkClusters(ctx context.Context) error {
	done := s.step("linking every cluster to every other, through latency-injecting proxies")
	for i, from := range s.clusters {
		for j, to := range s.clusters {
			if i == j {
				continue
			}
			p, err := faultproxy.New(net.JoinHostPort(s.net.APIAddress(), "0"), s.state.Clusters[j].GatewayInbound)
			if err != nil {
				return err
			}
			s.proxies = append(s.proxies, p)
			p.SetLatency(linkLatency(i, j))
			out, err := s.runSelf(ctx, "--kubeconfig", to.kubeconfig, "link",
				"--cluster-name", to.name, "--gateway-address", p.Addr(), "--create-token")
			if err != nil {
				return err
			}
			if err := kube.ApplyYAML(ctx, from.client, out, "backbone-sandbox"); err != nil {
				return fmt.Errorf("applying the link %s -> %s: %w", from.name, to.name, err)
			}
			s.state.Links = append(s.state.Links, LinkState{
				From: from.name, To: to.name, Proxy: p.Addr(),
				OneWayMS: linkLatency(i, j).Milliseconds(), RoundTripM: (2 * linkLatency(i, j)).Milliseconds(),
			})
			fmt.Fprintf(s.opts.Progress, "    %s -> %s via %s (%d ms round trip)\n", from.name, to.name, p.Addr(), (2 * linkLatency(i, j)).Milliseconds())
		}
	}
	done()
	return nil
}

// ingressDomain makes the sandbox's default ingress hosts
// <service>.<cluster>.sandbox.backbone.test.
const ingressDomain = "sandbox.backbone.test"

func (s *Sandbox) startControllers() error {
	done := s.step("starting a controller per cluster")
	for i, c := range s.clusters {
		st := &s.state.Clusters[i]
		// The controller runs beside its gateway, on the gateway's address.
		st.ControllerAdmin = net.JoinHostPort(st.GatewayAddress, fmt.Sprint(controllerAdmin+portOffset(s.net, i)))
		argv := s.net.Command(append([]string{s.opts.Self, "controller",
			"--kubeconfig", c.kubeconfig,
			"--cluster-name", c.name,
			"--identity-dir", st.IdentityDir,
			"--admin-address", st.ControllerAdmin,
			"--ingress-domain", ingressDomain,
			// Where the controller reads the gateways' egress probes.
			"--gateway-admin-port", fmt.Sprint(gatewayAdminPort + portOffset(s.net, i)),
		}, gatewayPortRanges(s.net, i)...))
		if _, err := s.procs.start("controller-"+c.name, argv); err != nil {
			return err
		}
	}
	done()
	return nil
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		last = getOK(ctx, url)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return last
}
