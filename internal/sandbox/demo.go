package sandbox

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/kube"
)

// DemoState is one demo workload.
type DemoState struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster"`
	Address string `json:"address"`
	What    string `json:"what"`
}

const (
	demoNamespace    = "demo"
	creditScoreHost  = "credit-score.sandbox.test"
	creditScorePort  = 8443
	demoHTTPPort     = 8080
	platformLogsName = "log-collector"
)

// shuttleTemplate is the sample squads' file the sandbox renders, in the
// format of the talk backbone grew from: an egress target (a stand-in for
// a credit-score service in Azure App Service) and an ingress entry.
var shuttleTemplate = template.Must(template.New("shuttle").Parse(`# A squad's shuttle.yaml: shuttle's own keys (plan, vars) sit next to
# backbone's (targets, ingress), which ignores the others.
plan: git://github.com/example/plans#go-service
vars:
  service: credit-check
targets:
  - hostName: credit-score
    dnsName: ` + creditScoreHost + `
    environment: {{.Egress}}
    squad: maxus
    port: {{.CreditPort}}
    caBundle: |
{{.CABundle}}
ingress:
  - service: hello
    namespace: ` + demoNamespace + `
    cluster: {{.Egress}}
    exposeFrom: {{.Ingress}}
    squad: nasa
    port: ` + fmt.Sprint(demoHTTPPort) + `
`))

func (s *Sandbox) deployDemos(ctx context.Context) error {
	done := s.step("deploying demo workloads and rendering the sample shuttle.yaml")
	first, second := s.clusters[0], s.clusters[min(1, len(s.clusters)-1)]
	last := s.clusters[len(s.clusters)-1]
	addr := func(i int) string { return s.net.WorkloadAddress(len(s.clusters) + i) }

	// The demo namespaces exist everywhere, so mirrors land in them.
	for _, c := range s.clusters {
		for _, ns := range []string{demoNamespace, "logging"} {
			if err := kube.EnsureNamespace(ctx, c.client, ns); err != nil {
				return err
			}
		}
	}

	// hello: an HTTP service exported from the first cluster.
	helloIP := addr(1)
	if err := s.startDemoServer("hello-"+first.name, helloIP, demoHTTPPort+portOffset(s.net, 1), "hello from "+first.name, "", ""); err != nil {
		return err
	}
	hello := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: demoNamespace, Labels: map[string]string{v1alpha1.ExportedLabel: "true"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: demoHTTPPort, AppProtocol: ptrTo("http")}}},
	}
	if err := registerService(ctx, first.client, hello, helloIP, map[string]int32{"http": int32(demoHTTPPort + portOffset(s.net, 1))}); err != nil {
		return err
	}
	s.state.Demos = append(s.state.Demos, DemoState{Name: "hello", Cluster: first.name, Address: net.JoinHostPort(helloIP, fmt.Sprint(demoHTTPPort+portOffset(s.net, 1))), What: "HTTP service exported from " + first.name})

	// log-collector: a platform service in the last cluster, reached from
	// the others.
	logsIP := addr(2)
	if err := s.startDemoServer("log-collector-"+last.name, logsIP, demoHTTPPort+portOffset(s.net, 2), "log-collector in "+last.name+": accepted", "", ""); err != nil {
		return err
	}
	logs := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: platformLogsName, Namespace: "logging", Labels: map[string]string{v1alpha1.ExportedLabel: "true"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: demoHTTPPort}}},
	}
	if err := registerService(ctx, last.client, logs, logsIP, map[string]int32{"http": int32(demoHTTPPort + portOffset(s.net, 2))}); err != nil {
		return err
	}
	s.state.Demos = append(s.state.Demos, DemoState{Name: platformLogsName, Cluster: last.name, Address: net.JoinHostPort(logsIP, fmt.Sprint(demoHTTPPort+portOffset(s.net, 2))), What: "platform log collector"})

	// credit-score: an HTTPS server outside every cluster, with its own CA,
	// reached as an egress target through the first cluster's gateway.
	creditIP := s.creditScoreIP()
	caPEM, certFile, keyFile, err := creditScoreCerts(filepath.Join(s.opts.Dir, "pki", "credit-score"))
	if err != nil {
		return err
	}
	if err := s.addHost(creditIP, creditScoreHost); err != nil {
		return err
	}
	if err := s.startDemoServer("credit-score", creditIP, creditScorePort, "credit score: 742", certFile, keyFile); err != nil {
		return err
	}
	s.state.Demos = append(s.state.Demos, DemoState{Name: "credit-score", Cluster: "(outside)", Address: net.JoinHostPort(creditScoreHost, fmt.Sprint(creditScorePort)), What: "external HTTPS service (stands in for Azure App Service)"})

	var shuttle bytes.Buffer
	indented := "      " + strings.ReplaceAll(strings.TrimSpace(string(caPEM)), "\n", "\n      ")
	if err := shuttleTemplate.Execute(&shuttle, map[string]any{
		"Egress": first.name, "Ingress": second.name, "CABundle": indented, "CreditPort": creditScorePort,
	}); err != nil {
		return err
	}
	shuttlePath := filepath.Join(s.opts.Dir, "shuttle.yaml")
	if err := os.WriteFile(shuttlePath, shuttle.Bytes(), 0o644); err != nil {
		return err
	}
	gitops := filepath.Join(s.opts.Dir, "gitops")
	if _, err := s.runSelf(ctx, "render", "-f", shuttlePath, "--clusters", strings.Join(s.opts.Clusters, ","), "-o", gitops); err != nil {
		return err
	}
	for _, c := range s.clusters {
		files, _ := filepath.Glob(filepath.Join(gitops, c.name, "*.yaml"))
		for _, f := range files {
			if filepath.Base(f) == "kustomization.yaml" {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			for _, u := range mustNamespaces(data) {
				if err := kube.EnsureNamespace(ctx, c.client, u); err != nil {
					return err
				}
			}
			if err := kube.ApplyYAML(ctx, c.client, data, "backbone-sandbox"); err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
		}
	}
	done()
	return nil
}

// creditScoreIP is where the credit-score stand-in listens; gateways and
// controllers pin its name to it (--egress-resolve), as a private DNS zone
// would.
func (s *Sandbox) creditScoreIP() string { return s.net.WorkloadAddress(len(s.opts.Clusters) + 3) }

func (s *Sandbox) egressResolve() []string {
	return []string{"--egress-resolve", creditScoreHost + "=" + s.creditScoreIP()}
}

func ptrTo[T any](v T) *T { return &v }

// mustNamespaces lists the namespaces a rendered file's objects live in.
func mustNamespaces(data []byte) []string {
	objs, err := kube.DecodeYAML(data)
	if err != nil {
		return nil
	}
	var out []string
	for _, o := range objs {
		if ns := o.GetNamespace(); ns != "" {
			out = append(out, ns)
		}
	}
	return out
}

func (s *Sandbox) startDemoServer(name, ip string, port int, message, certFile, keyFile string) error {
	argv := []string{s.opts.Self, "sandbox", "demo-server", "--listen", net.JoinHostPort(ip, fmt.Sprint(port)), "--message", message}
	if certFile != "" {
		argv = append(argv, "--tls-cert", certFile, "--tls-key", keyFile)
	}
	if _, err := s.procs.start("demo-"+name, s.net.Command(argv)); err != nil {
		return err
	}
	return nil
}

// addHost makes a name resolve inside the sandbox's namespace: `ip netns
// exec` mounts /etc/netns/<name>/hosts over /etc/hosts.
func (s *Sandbox) addHost(ip, name string) error {
	if _, ok := s.net.(netnsNetwork); !ok {
		return nil // the host network resolves nothing extra; egress to credit-score needs the namespace
	}
	dir := filepath.Join("/etc/netns", netnsName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	hosts := "127.0.0.1 localhost\n" + ip + " " + name + "\n"
	return os.WriteFile(filepath.Join(dir, "hosts"), []byte(hosts), 0o644)
}

// creditScoreCerts creates a private CA and a server certificate for the
// stand-in credit-score service.
func creditScoreCerts(dir string) (caPEM []byte, certFile, keyFile string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", "", err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "credit-score sandbox CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, "", "", err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: creditScoreHost},
		DNSNames:  []string{creditScoreHost},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, "", "", err
	}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, "", "", err
	}
	return caPEM, certFile, keyFile, os.WriteFile(filepath.Join(dir, "ca.crt"), caPEM, 0o644)
}
