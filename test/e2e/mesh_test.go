package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/linkmatrix"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

const creditScoreHost = "resource-a.azurewebsites.net"

// TestMesh runs the whole system: two clusters, each with a real
// controller and gateway process, linked with `backbone link`; an exported
// service is mirrored and called across; an egress target rendered with
// `backbone render` from a squad's shuttle.yaml is reached from the other
// cluster through both gateways; the link probe feeds Link status, and a
// dead gateway marks the mirrors' endpoints not ready until it recovers.
func TestMesh(t *testing.T) {
	testenv.RequireNetns(t)
	clusters := testenv.Start(t, "east", "west")
	east, west := clusters["east"], clusters["west"]
	ctx := context.Background()
	for _, c := range clusters {
		installRBAC(t, c)
	}
	p := newPKI(t, trustDomain)
	eastID, westID := p.issue(t, "east"), p.issue(t, "west")

	// The stand-in for a managed cloud resource: HTTPS with its own CA,
	// answering only when SNI and Host are its name.
	scoreL := testenv.ListenNetns(t, 14)
	scoreIP := scoreL.Addr().(*net.TCPAddr).IP.String()
	caPEM := creditScoreServer(t, scoreL)
	_, scorePort, _ := net.SplitHostPort(scoreL.Addr().String())
	resolve := creditScoreHost + "=" + scoreIP

	eastGW := startGateway(t, east, 1, eastID, "--egress-resolve", resolve)
	westGW := startGateway(t, west, 2, westID)
	registerGateway(t, east, eastGW)
	registerGateway(t, west, westGW)

	// An exported service in east.
	exportHTTP(t, east, testenv.ListenNetns(t, 10), "demo", "hello", "east")
	ensureNamespace(t, west, "demo")

	// Link west -> east the way a user does: backbone link against east,
	// applied to west; then a short probe period for the test.
	out := run(t, "--kubeconfig", east.Kubeconfig, "link", "--cluster-name", "east",
		"--gateway-address", eastGW.inbound, "--create-token")
	if err := kube.ApplyYAML(ctx, west.Client, out, "e2e"); err != nil {
		t.Fatalf("applying backbone link output: %v\n%s", err, out)
	}
	link := &v1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: "east"}}
	if err := west.Client.Patch(ctx, link, client.RawPatch(types.MergePatchType,
		[]byte(`{"spec":{"probe":{"period":"500ms","timeout":"400ms","failureThreshold":2}}}`))); err != nil {
		t.Fatal(err)
	}

	startController(t, east, eastID, 1)
	startController(t, west, westID, 2)

	// The mirror appears in west, and a call through it reaches east.
	mirrorAddr := waitMirror(t, west, "demo", "hello-east", westGW.ip)
	waitListening(t, mirrorAddr)
	body := get(t, "http://"+mirrorAddr+"/")
	if body != "hello from east via HTTP/1.1" {
		t.Fatalf("cross-cluster call answered %q", body)
	}

	// The squads' file, rendered and applied to east as Flux would.
	shuttle := filepath.Join(t.TempDir(), "shuttle.yaml")
	writeFile(t, shuttle, fmt.Sprintf(`plan: git://example.com/plan.git
targets:
  - hostName: resource-a
    dnsName: %s
    environment: east
    squad: maxus
    port: %s
    probePath: /healthz
    caBundle: |
%s
`, creditScoreHost, scorePort, indent(caPEM, "      ")))
	rendered := filepath.Join(t.TempDir(), "clusters")
	run(t, "render", "-f", shuttle, "--clusters", "east,west", "-o", rendered)
	eastObjs, err := os.ReadFile(filepath.Join(rendered, "east", "egresstarget-resource-a.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.ApplyYAML(ctx, east.Client, eastObjs, "flux"); err != nil {
		t.Fatal(err)
	}

	// The egress target is served in east, mirrored to west as
	// resource-a-east, and reached through both gateways.
	egressAddr := waitMirror(t, west, v1alpha1.SystemNamespace, "resource-a-east", westGW.ip)
	waitListening(t, egressAddr)
	body = get(t, "http://"+egressAddr+"/score?customer=42")
	if body != "score 742 for "+creditScoreHost {
		t.Fatalf("egress call answered %q", body)
	}
	waitFor(t, 10*time.Second, "the egress access log line in east's gateway", func() bool {
		return bytes.Contains(eastGW.logBytes(), []byte(`"msg":"egress access"`)) &&
			bytes.Contains(eastGW.logBytes(), []byte(`"caller":"west"`))
	})
	line := grepLine(eastGW.logBytes(), `"msg":"egress access"`)
	for _, want := range []string{`"squad":"maxus"`, `"method":"GET"`, `"path":"/score"`, `"status":200`, `"target":"backbone-system/resource-a"`} {
		if !strings.Contains(line, want) {
			t.Errorf("access log line lacks %s: %s", want, line)
		}
	}
	waitFor(t, 30*time.Second, "EgressTarget resource-a Ready and alive", func() bool {
		var et v1alpha1.EgressTarget
		if east.Client.Get(ctx, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "resource-a"}, &et) != nil {
			return false
		}
		return meta.IsStatusConditionTrue(et.Status.Conditions, v1alpha1.ConditionReady) && et.Status.Alive != nil && *et.Status.Alive
	})

	// The link probe: alive, with latencies, GatewayReachable.
	waitFor(t, 30*time.Second, "Link east probed alive", func() bool {
		if west.Client.Get(ctx, client.ObjectKeyFromObject(link), link) != nil || link.Status.Probe == nil {
			return false
		}
		return link.Status.Probe.Alive && link.Status.Probe.LatencyP50 != nil &&
			meta.IsStatusConditionTrue(link.Status.Conditions, v1alpha1.ConditionGatewayReachable)
	})

	// A dead gateway: endpoints not ready, mirrors kept; recovery restores.
	// With period 500ms and threshold 2, the link is declared dead after
	// about 1s of failed probes; the mirror follows on the Link's update.
	westMetrics := "http://" + net.JoinHostPort(testenv.NetnsAddr(2), "9091") + "/metrics"
	linkUp := `backbone_link_up{source_cluster="west",target_cluster="east"} `
	if m := get(t, westMetrics); !strings.Contains(m, linkUp+"1") {
		t.Fatalf("west's metrics lack %s1", linkUp)
	}
	stopped := time.Now()
	eastGW.signal(stopSignal)
	waitFor(t, 30*time.Second, "mirror endpoints not ready while east's gateway is stopped", func() bool {
		return mirrorReady(t, west, "demo", "hello-east") == "false"
	})
	t.Logf("dead link to not-ready endpoints: %s (period 500ms, timeout 400ms, threshold 2)", time.Since(stopped).Round(10*time.Millisecond))
	if m := get(t, westMetrics); !strings.Contains(m, linkUp+"0") {
		t.Errorf("with east's gateway stopped west's metrics lack %s0", linkUp)
	}
	restarted := time.Now()
	eastGW.signal(contSignal)
	waitFor(t, 30*time.Second, "mirror endpoints ready again", func() bool {
		return mirrorReady(t, west, "demo", "hello-east") == "true"
	})
	t.Logf("recovered link to ready endpoints: %s", time.Since(restarted).Round(10*time.Millisecond))
	if m := get(t, westMetrics); !strings.Contains(m, linkUp+"1") {
		t.Errorf("after recovery west's metrics lack %s1", linkUp)
	}
	if body := get(t, "http://"+mirrorAddr+"/"); body != "hello from east via HTTP/1.1" {
		t.Fatalf("after recovery the call answered %q", body)
	}

	// backbone links reads west's Link status: west -> east is up with a
	// latency; east has no Link.
	out = run(t, "--kubeconfig", testenv.MergedKubeconfig(t, clusters), "links", "--contexts", "east,west", "-o", "json")
	var m linkmatrix.Matrix
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("backbone links -o json: %v\n%s", err, out)
	}
	if len(m.Links) != 1 || m.Links[0].Source != "west" || m.Links[0].Target != "east" || m.Links[0].State != "up" || m.Links[0].P50Millis == nil {
		t.Fatalf("backbone links: %s", out)
	}
}

// installRBAC applies what `backbone install` gives a cluster, except the
// workloads (the test runs them as processes).
func installRBAC(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	v := install.DefaultValues()
	v.ClusterName, v.TrustDomain = c.Name, trustDomain
	objs, err := install.Access(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := install.Apply(context.Background(), c.Client, objs); err != nil {
		t.Fatal(err)
	}
}

// registerGateway creates the backbone-gateway Service (with the gateway's
// identity) and its endpoints, as the gateway Deployment would have.
func registerGateway(t *testing.T, c *testenv.Cluster, g *gatewayProc) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: v1alpha1.GatewayServiceName, Namespace: v1alpha1.SystemNamespace,
			Annotations: map[string]string{v1alpha1.GatewayIdentityAnnotation: "spiffe://" + trustDomain + "/cluster/" + c.Name},
		},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: v1alpha1.GatewayInboundPortName, Port: 4143}}},
	}
	registerService(t, c, svc, []string{g.ip}, map[string]int32{v1alpha1.GatewayInboundPortName: 4143})
}

func startController(t *testing.T, c *testenv.Cluster, identityDir string, ipIndex int, extra ...string) *process {
	t.Helper()
	return startControllerAt(t, c, identityDir, testenv.NetnsAddr(ipIndex), extra...)
}

// startControllerAt is startController with its admin port on any address
// of the namespace.
func startControllerAt(t *testing.T, c *testenv.Cluster, identityDir, ip string, extra ...string) *process {
	t.Helper()
	// The gateways' admin port (startGateway's) is where the controller
	// reads their egress probes.
	args := append([]string{"controller", "--kubeconfig", c.Kubeconfig, "--cluster-name", c.Name,
		"--identity-dir", identityDir, "--admin-address", net.JoinHostPort(ip, "9091"), "--resync", "5s",
		"--gateway-admin-port", "9990"}, extra...)
	p := startProcess(t, "controller "+c.Name, args...)
	waitFor(t, 60*time.Second, "controller "+c.Name+" ready", func() bool {
		resp, err := http.Get("http://" + net.JoinHostPort(ip, "9091") + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// waitMirror waits for a mirror Service and its EndpointSlice on the
// gateway, and returns the gateway address a client dials.
func waitMirror(t *testing.T, c *testenv.Cluster, ns, name, gatewayIP string) string {
	t.Helper()
	var addr string
	waitFor(t, 60*time.Second, "mirror "+ns+"/"+name+" in "+c.Name, func() bool {
		var svc corev1.Service
		if c.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &svc) != nil {
			return false
		}
		var slices discoveryv1.EndpointSliceList
		if c.Client.List(context.Background(), &slices, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: name}) != nil {
			return false
		}
		for _, sl := range slices.Items {
			for _, ep := range sl.Endpoints {
				if len(ep.Addresses) > 0 && ep.Addresses[0] == gatewayIP && len(sl.Ports) > 0 && sl.Ports[0].Port != nil {
					addr = net.JoinHostPort(gatewayIP, fmt.Sprint(*sl.Ports[0].Port))
					return true
				}
			}
		}
		return false
	})
	return addr
}

// mirrorReady is the ready condition of a mirror's endpoint ("" if none).
func mirrorReady(t *testing.T, c *testenv.Cluster, ns, name string) string {
	t.Helper()
	var slices discoveryv1.EndpointSliceList
	if err := c.Client.List(context.Background(), &slices, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: name}); err != nil {
		return ""
	}
	for _, sl := range slices.Items {
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil {
				return fmt.Sprint(*ep.Conditions.Ready)
			}
		}
	}
	return ""
}

func run(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(backboneBinary(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("backbone %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func get(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n"+prefix)
}

func grepLine(log []byte, substr string) string {
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, substr) {
			return l
		}
	}
	return ""
}

// creditScoreServer serves HTTPS with a certificate for creditScoreHost
// from a fresh CA, and returns the CA (PEM). It refuses requests whose SNI
// or Host is not creditScoreHost.
func creditScoreServer(t *testing.T, l net.Listener) string {
	t.Helper()
	cert, caPEM := creditScoreIdentity(t)
	serveCreditScore(t, l, cert, nil)
	return caPEM
}

// creditScoreIdentity is a certificate for creditScoreHost from a fresh CA,
// and that CA (PEM).
func creditScoreIdentity(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "credit score test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: creditScoreHost},
		DNSNames: []string{creditScoreHost}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
}

// serveCreditScore serves the credit score stand-in on l with cert until
// the test ends or the returned server is closed; seen, if set, is told
// of every request it answers.
func serveCreditScore(t *testing.T, l net.Listener, cert tls.Certificate, seen func(*http.Request)) *http.Server {
	t.Helper()
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if seen != nil {
				seen(r)
			}
			host, _, _ := net.SplitHostPort(r.Host)
			if host == "" {
				host = r.Host
			}
			if r.TLS.ServerName != creditScoreHost || host != creditScoreHost {
				http.Error(w, fmt.Sprintf("wrong name: SNI %q Host %q", r.TLS.ServerName, r.Host), http.StatusMisdirectedRequest)
				return
			}
			if r.URL.Path == "/healthz" {
				_, _ = io.WriteString(w, "ok")
				return
			}
			_, _ = io.WriteString(w, "score 742 for "+host)
		}),
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}
