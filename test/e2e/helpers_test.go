package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/certs"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

const trustDomain = "e2e.backbone.test"

var buildOnce = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(testenv.RepoRoot(), "bin", "backbone-e2e")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/backbone")
	cmd.Dir = testenv.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building backbone: %v\n%s", err, out)
	}
	return bin, nil
})

// backboneBinary builds bin/backbone-e2e once per test run.
func backboneBinary(t *testing.T) string {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// pki is a trust anchor with a helper to issue identity directories.
type pki struct {
	anchor *certs.Anchor
	dir    string
}

func newPKI(t *testing.T, domain string) *pki {
	t.Helper()
	a, err := certs.NewAnchor(domain, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{anchor: a, dir: t.TempDir()}
}

func (p *pki) issue(t *testing.T, cluster string) string {
	t.Helper()
	dir := filepath.Join(p.dir, cluster+strconv.FormatInt(time.Now().UnixNano(), 36))
	c, k, err := p.anchor.Issue(cluster, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteIdentity(dir, c, k, p.anchor.CertPEM()); err != nil {
		t.Fatal(err)
	}
	return dir
}

// process is a backbone process started by a test.
type process struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// logBytes is a copy of what the process printed so far.
func (p *process) logBytes() []byte {
	p.log.mu.Lock()
	defer p.log.mu.Unlock()
	return bytes.Clone(p.log.buf.Bytes())
}

const (
	stopSignal = syscall.SIGSTOP
	contSignal = syscall.SIGCONT
)

// syncBuffer collects a process's output. The buffer is a field, not
// embedded: an embedded bytes.Buffer's ReadFrom would let os/exec copy
// into it without the lock.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func startProcess(t *testing.T, name string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(backboneBinary(t), args...)
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, log: &log, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			log.mu.Lock()
			t.Logf("--- %s log ---\n%s", name, log.buf.String())
			log.mu.Unlock()
		}
	})
	return p
}

func (p *process) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

func (p *process) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("process did not exit within %s", timeout)
	}
}

// gatewayProc is a running `backbone gateway`.
type gatewayProc struct {
	*process
	identityDir string
	ip          string
	inbound     string
	admin       string
	pprof       string // net/http/pprof, for collectGarbage
}

func startGateway(t *testing.T, c *testenv.Cluster, ipIndex int, identityDir string, extra ...string) *gatewayProc {
	t.Helper()
	return startGatewayAt(t, c, testenv.NetnsAddr(ipIndex), identityDir, extra...)
}

// startGatewayAt is startGateway on any address of the namespace.
func startGatewayAt(t *testing.T, c *testenv.Cluster, ip, identityDir string, extra ...string) *gatewayProc {
	t.Helper()
	g := &gatewayProc{identityDir: identityDir, ip: ip, inbound: net.JoinHostPort(ip, "4143"), admin: net.JoinHostPort(ip, "9990"), pprof: net.JoinHostPort(ip, "6060")}
	args := append([]string{"gateway", "--kubeconfig", c.Kubeconfig, "--cluster-name", c.Name,
		"--identity-dir", identityDir, "--inbound-address", g.inbound, "--outbound-bind-ip", ip,
		"--admin-address", g.admin, "--pprof-address", g.pprof, "--drain-timeout", "10s", "--shutdown-delay", "0s"}, extra...)
	g.process = startProcess(t, "gateway "+c.Name+" "+ip, args...)
	waitFor(t, 60*time.Second, "gateway "+ip+" ready", func() bool {
		resp, err := http.Get("http://" + g.admin + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return g
}

// exportHTTP serves "hello from <from>" on l and registers it in c as the
// exported Service ns/name, port 80 (http) on l's address.
func exportHTTP(t *testing.T, c *testenv.Cluster, l net.Listener, ns, name, from string) {
	t.Helper()
	httpBackend(t, l, from)
	addr := l.Addr().(*net.TCPAddr)
	registerService(t, c, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{v1alpha1.ExportedLabel: "true"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, []string{addr.IP.String()}, map[string]int32{"http": int32(addr.Port)})
}

func waitFor(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ensureNamespace(t *testing.T, c *testenv.Cluster, ns string) {
	t.Helper()
	if err := c.CreateNamespace(ns); err != nil {
		t.Fatal(err)
	}
}

// registerService points a Service at addresses inside the test
// namespace, as a Deployment would have.
func registerService(t *testing.T, c *testenv.Cluster, svc *corev1.Service, addrs []string, ports map[string]int32) {
	t.Helper()
	if err := kube.RegisterService(context.Background(), c.Client, svc, addrs, ports, "e2e"); err != nil {
		t.Fatal(err)
	}
}

// createLink creates in `in` the Link to `target`'s gateways (no
// credentials needed by the gateway itself).
func createLink(t *testing.T, in *testenv.Cluster, target string, gateways ...string) {
	t.Helper()
	link := &v1alpha1.Link{
		ObjectMeta: metav1.ObjectMeta{Name: target, Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.LinkSpec{
			TargetClusterName: target,
			CredentialsSecret: v1alpha1.SecretReference{Name: "backbone-link-" + target},
			GatewayIdentity:   "spiffe://" + trustDomain + "/cluster/" + target,
		},
	}
	for _, g := range gateways {
		host, port, _ := net.SplitHostPort(g)
		p, _ := strconv.Atoi(port)
		link.Spec.GatewayAddresses = append(link.Spec.GatewayAddresses, v1alpha1.GatewayAddress{Host: host, Port: int32(p)})
	}
	if err := in.Client.Create(context.Background(), link); err != nil {
		t.Fatal(err)
	}
}

// createMirror writes by hand what the mirror controller writes: the
// mirror Service and its EndpointSlice, whose endpoints are the local
// gateways and whose ports are the allocated gateway ports.
func createMirror(t *testing.T, in *testenv.Cluster, from, ns, remote string, ports []corev1.ServicePort, allocated map[string]int32, gateways ...string) {
	t.Helper()
	ensureNamespace(t, in, ns)
	mirror := remote + "-" + from
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: mirror, Namespace: ns,
			Labels:      map[string]string{v1alpha1.MirroredFromLabel: from, v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue},
			Annotations: map[string]string{v1alpha1.RemoteNameAnnotation: remote},
		},
		Spec: corev1.ServiceSpec{Ports: ports},
	}
	ctx := context.Background()
	if err := in.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: mirror, Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: mirror, discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy, v1alpha1.MirroredFromLabel: from},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, g := range gateways {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{g}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	for _, p := range ports {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.Name), Port: ptr.To(allocated[p.Name]), Protocol: ptr.To(corev1.ProtocolTCP)})
	}
	if err := in.Client.Create(ctx, slice); err != nil {
		t.Fatal(err)
	}
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	waitFor(t, 30*time.Second, addr+" listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
}

// linkedMesh is two clusters, each with a controller and a gateway
// process, west linked to east with `backbone link`.
type linkedMesh struct {
	east, west     *testenv.Cluster
	eastID, westID string // identity directories
	eastGW, westGW *gatewayProc
}

// startLinkedMesh starts a linkedMesh whose clusters both have namespaces
// (as the platform makes them); eastGatewayArgs go to east's gateway.
func startLinkedMesh(t *testing.T, namespaces []string, eastGatewayArgs ...string) *linkedMesh {
	t.Helper()
	clusters := testenv.Start(t, "east", "west")
	m := &linkedMesh{east: clusters["east"], west: clusters["west"]}
	for _, c := range clusters {
		installRBAC(t, c)
		for _, ns := range namespaces {
			ensureNamespace(t, c, ns)
		}
	}
	p := newPKI(t, trustDomain)
	m.eastID, m.westID = p.issue(t, "east"), p.issue(t, "west")
	m.eastGW = startGateway(t, m.east, 1, m.eastID, eastGatewayArgs...)
	m.westGW = startGateway(t, m.west, 2, m.westID)
	registerGateway(t, m.east, m.eastGW)
	registerGateway(t, m.west, m.westGW)
	out := run(t, "--kubeconfig", m.east.Kubeconfig, "link", "--cluster-name", "east",
		"--gateway-address", m.eastGW.inbound, "--create-token")
	if err := kube.ApplyYAML(context.Background(), m.west.Client, out, "e2e"); err != nil {
		t.Fatalf("applying backbone link output: %v\n%s", err, out)
	}
	startController(t, m.east, m.eastID, 1)
	startController(t, m.west, m.westID, 2)
	return m
}
