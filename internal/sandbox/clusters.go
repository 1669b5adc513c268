package sandbox

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	mcscrd "sigs.k8s.io/mcs-api/config/crd"
	"sigs.k8s.io/yaml"

	"github.com/backbone-mesh/backbone/internal/kube"
)

// cluster is one real control plane (etcd + kube-apiserver).
type cluster struct {
	name       string
	env        *envtest.Environment
	config     *rest.Config
	client     client.Client
	kubeconfig string
}

func freePort(ip string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}

// startCluster starts a control plane whose API server binds apiIP (its
// serving certificate names that address) and installs backbone's CRDs
// and the MCS ServiceExport CRD. bins are the etcd and kube-apiserver to
// run (tieToSupervisor's); their data lives in dir/clusters/<name>.
func startCluster(name string, bins map[string]string, crdDir, apiIP, dir string) (*cluster, error) {
	port, err := freePort(apiIP)
	if err != nil {
		return nil, err
	}
	exportCRD := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(mcscrd.ServiceExportCRD, exportCRD); err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "clusters", name)
	for _, sub := range []string{"etcd", "apiserver"} {
		if err := os.MkdirAll(filepath.Join(data, sub), 0o700); err != nil {
			return nil, err
		}
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{crdDir},
		CRDs:                  []*apiextensionsv1.CustomResourceDefinition{exportCRD},
		ErrorIfCRDPathMissing: true,
		Scheme:                kube.Scheme,
		// Generous: three control planes start at once, on two cores in CI.
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	env.ControlPlane.Etcd = &envtest.Etcd{Path: bins["etcd"], DataDir: filepath.Join(data, "etcd")}
	env.ControlPlane.APIServer = &envtest.APIServer{
		Path:          bins["kube-apiserver"],
		CertDir:       filepath.Join(data, "apiserver"),
		SecureServing: envtest.SecureServing{ListenAddr: envtest.ListenAddr{Address: apiIP, Port: port}},
	}
	cfg, err := env.Start()
	if err != nil {
		// envtest leaves the control plane running when it fails after
		// starting it (waiting for the default namespace, installing CRDs).
		_ = env.Stop()
		return nil, fmt.Errorf("starting cluster %s: %w", name, err)
	}
	cfg.Proxy = direct
	c := &cluster{name: name, env: env, config: cfg}
	if c.client, err = client.New(cfg, client.Options{Scheme: kube.Scheme}); err != nil {
		_ = env.Stop()
		return nil, err
	}
	c.kubeconfig = filepath.Join(dir, name+".kubeconfig")
	if err := clientcmd.WriteToFile(*kube.KubeconfigFor(map[string]*rest.Config{name: cfg}, name), c.kubeconfig); err != nil {
		_ = env.Stop()
		return nil, err
	}
	return c, nil
}
