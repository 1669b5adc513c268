// Package testenv starts real, named Kubernetes control planes (etcd +
// kube-apiserver, through controller-runtime's envtest) for integration and
// end-to-end tests, with backbone's CRDs installed. The binaries come from
// hack/cluster-binaries.sh, cached by version in the user cache directory.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	mcscrd "sigs.k8s.io/mcs-api/config/crd"
	"sigs.k8s.io/yaml"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/kube"
)

// Cluster is one running control plane.
type Cluster struct {
	// Name is the cluster's name, also its context name in Kubeconfig.
	Name string
	// Config is an admin rest.Config.
	Config *rest.Config
	// Client is an admin controller-runtime client with backbone's types.
	Client client.Client
	// Clientset is an admin client-go clientset.
	Clientset kubernetes.Interface
	// Kubeconfig is the path of an admin kubeconfig file whose only context
	// is Name.
	Kubeconfig string

	env *envtest.Environment
}

// Scheme knows the built-in types, backbone's and the MCS API's.
var Scheme = kube.Scheme

// RepoRoot is the directory holding backbone's go.mod.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// BinaryDir returns the directory holding kube-apiserver and etcd:
// KUBEBUILDER_ASSETS if set, else the cache hack/cluster-binaries.sh fills.
// It reports an error naming the command to run when they are missing.
func BinaryDir() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		out, err := exec.Command("bash", "-c", `
			set -e
			k8s=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' hack/tools/k8s/go.mod)
			etcd=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' hack/tools/etcd/go.mod)
			echo "${BACKBONE_CLUSTER_BINARIES:-${XDG_CACHE_HOME:-$HOME/.cache}/backbone/k8s-${k8s}-etcd-${etcd}}"
		`).Output()
		if err != nil {
			return "", fmt.Errorf("locating the cluster binary cache: %w", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("%s not found in %s: run hack/cluster-binaries.sh (or make test) to build it", bin, dir)
		}
	}
	return dir, nil
}

// RequireBinaries skips the test when the cluster binaries are missing, or
// fails it when CI=true: in CI a missing binary is a broken setup, never a
// reason to pass.
func RequireBinaries(t testing.TB) string {
	t.Helper()
	dir, err := binaryDirFromRoot()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and the cluster binaries are missing: %v", err)
		}
		t.Skipf("skipping: needs real clusters: %v", err)
	}
	return dir
}

func binaryDirFromRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	if err := os.Chdir(RepoRoot()); err != nil {
		return "", err
	}
	defer func() { _ = os.Chdir(wd) }()
	return BinaryDir()
}

var binaryDirOnce = sync.OnceValues(binaryDirFromRoot)

// Options add to what Start installs.
type Options struct {
	// CRDPaths are CRD files or directories installed beside backbone's
	// CRDs (GatewayAPICRDs, for one).
	CRDPaths []string
	// ServiceCIDRs is the API server's --service-cluster-ip-range; its
	// first family is the cluster's primary one ("fd00:10:96::/112,
	// 10.96.0.0/16" makes an IPv6-first dual-stack cluster). Empty: the
	// IPv4 10.96.0.0/16.
	ServiceCIDRs string
}

// Start starts one control plane per name, in parallel, installs
// backbone's CRDs and the backbone-system namespace, and stops them all
// when the test ends.
func Start(t testing.TB, names ...string) map[string]*Cluster {
	t.Helper()
	return StartWith(t, Options{}, names...)
}

// StartWith is Start with more installed.
func StartWith(t testing.TB, opts Options, names ...string) map[string]*Cluster {
	t.Helper()
	if _, err := binaryDirOnce(); err != nil {
		RequireBinaries(t)
	}
	dir, _ := binaryDirOnce()
	clusters := make(map[string]*Cluster, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := startCluster(t.TempDir(), dir, name, opts)
			if err != nil {
				errs[i] = fmt.Errorf("starting cluster %s: %w", name, err)
				return
			}
			mu.Lock()
			clusters[name] = c
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range clusters {
			if err := c.Stop(); err != nil {
				t.Logf("stopping cluster %s: %v", c.Name, err)
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return clusters
}

// StartCluster starts one control plane outside a test (the bench
// harness); the caller stops it.
func StartCluster(tmp, name string) (*Cluster, error) {
	dir, err := binaryDirOnce()
	if err != nil {
		return nil, err
	}
	return startCluster(tmp, dir, name, Options{})
}

func startCluster(tmp, binDir, name string, opts Options) (*Cluster, error) {
	env := &envtest.Environment{
		BinaryAssetsDirectory: binDir,
		CRDDirectoryPaths:     append([]string{filepath.Join(RepoRoot(), "config", "crd", "bases")}, opts.CRDPaths...),
		CRDs:                  []*apiextensionsv1.CustomResourceDefinition{serviceExportCRD()},
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme,
		// Generous: several control planes and builds share two cores in CI.
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	// Room for thousands of Services (scale tests); the default is a /24.
	api := env.ControlPlane.GetAPIServer()
	cidrs := opts.ServiceCIDRs
	if cidrs == "" {
		cidrs = "10.96.0.0/16"
	}
	api.Configure().Set("service-cluster-ip-range", cidrs)
	if strings.Contains(strings.SplitN(cidrs, ",", 2)[0], ":") {
		// The advertised address must be of the primary family (envtest
		// advertises the IPv4 documentation address 192.0.2.2).
		api.Configure().Set("advertise-address", "2001:db8::2")
	}
	// Certificates and keys in the cluster's temporary directory, so a
	// restarted API server (RestartAPIServer) reuses them and they go with
	// the directory: envtest removes only a directory it made, and only
	// when the process it started is the one stopped.
	api.CertDir = filepath.Join(tmp, name+"-apiserver")
	if err := os.MkdirAll(api.CertDir, 0o700); err != nil {
		return nil, err
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Name: name, Config: cfg, env: env}
	if c.Client, err = client.New(cfg, client.Options{Scheme: Scheme}); err != nil {
		_ = env.Stop()
		return nil, err
	}
	if c.Clientset, err = kubernetes.NewForConfig(cfg); err != nil {
		_ = env.Stop()
		return nil, err
	}
	c.Kubeconfig = filepath.Join(tmp, name+".kubeconfig")
	if err := clientcmd.WriteToFile(*kube.KubeconfigFor(map[string]*rest.Config{name: cfg}, name), c.Kubeconfig); err != nil {
		_ = env.Stop()
		return nil, err
	}
	if err := createNamespace(c, backbonev1alpha1.SystemNamespace); err != nil {
		_ = env.Stop()
		return nil, err
	}
	return c, nil
}

// Stop stops the control plane.
func (c *Cluster) Stop() error { return c.env.Stop() }

// MergedKubeconfig writes one kubeconfig with a context per cluster and
// returns its path.
func MergedKubeconfig(t testing.TB, clusters map[string]*Cluster) string {
	t.Helper()
	configs := make(map[string]*rest.Config, len(clusters))
	for name, c := range clusters {
		configs[name] = c.Config
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kube.KubeconfigFor(configs, ""), path); err != nil {
		t.Fatal(err)
	}
	return path
}

// GatewayAPICRDs are the standard-channel Gateway and HTTPRoute CRDs
// shipped in the sigs.k8s.io/gateway-api module this build uses (its
// version is go.mod's), for StartWith.
func GatewayAPICRDs(t testing.TB) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	cmd.Dir = RepoRoot()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("locating the gateway-api module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "standard")
	var paths []string
	for _, kind := range []string{"gateways", "httproutes"} {
		p := filepath.Join(dir, "gateway.networking.k8s.io_"+kind+".yaml")
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the gateway-api module has no %s CRD: %v", kind, err)
		}
		paths = append(paths, p)
	}
	return paths
}

// serviceExportCRD is the MCS API's ServiceExport CRD, the second way to
// export a Service.
func serviceExportCRD() *apiextensionsv1.CustomResourceDefinition {
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(mcscrd.ServiceExportCRD, crd); err != nil {
		panic(fmt.Sprintf("decoding the embedded ServiceExport CRD: %v", err))
	}
	return crd
}
