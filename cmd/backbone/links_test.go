package main

import (
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/linkmatrix"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

func createProbedLink(t *testing.T, c *testenv.Cluster, target string, alive bool, p50 time.Duration) {
	t.Helper()
	ctx := context.Background()
	l := &v1alpha1.Link{
		ObjectMeta: metav1.ObjectMeta{Name: target, Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.LinkSpec{
			TargetClusterName: target,
			CredentialsSecret: v1alpha1.SecretReference{Name: "link-" + target},
			GatewayAddresses:  []v1alpha1.GatewayAddress{{Host: "10.0.0.1", Port: 4143}},
			GatewayIdentity:   "spiffe://backbone.test/cluster/" + target,
		},
	}
	if err := c.Client.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	l.Status.Probe = &v1alpha1.LinkProbeStatus{Alive: alive, LastProbeTime: &now, LatencyP50: &metav1.Duration{Duration: p50}}
	if err := c.Client.Status().Update(ctx, l); err != nil {
		t.Fatal(err)
	}
}

// TestLinksReadsEveryContext runs `backbone links` against two real
// clusters through one kubeconfig with a context per cluster.
func TestLinksReadsEveryContext(t *testing.T) {
	clusters := testenv.Start(t, "east", "west")
	createProbedLink(t, clusters["west"], "east", true, 30*time.Millisecond)
	createProbedLink(t, clusters["east"], "west", false, 60*time.Millisecond)
	kubeconfig := testenv.MergedKubeconfig(t, clusters)

	out, _, err := run(t, "--kubeconfig", kubeconfig, "links", "--all-contexts")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"30 ms", "DEAD"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}

	out, _, err = run(t, "--kubeconfig", kubeconfig, "links", "--contexts", "east,west", "-o", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var m linkmatrix.Matrix
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(m.Links) != 2 || m.Links[1].Source != "west" || m.Links[1].Target != "east" || *m.Links[1].P50Millis != 30 {
		t.Errorf("matrix: %+v", m.Links)
	}

	out, _, err = run(t, "--kubeconfig", kubeconfig, "links", "--contexts", "east,nowhere")
	if err == nil || !strings.Contains(out, "nowhere: could not read links") {
		t.Errorf("an unknown context must fail and be named; err=%v\n%s", err, out)
	}

	// A script piping -o json|yaml must not mistake a partial matrix for
	// a whole one: the output is still printed, and the exit is non-zero.
	for _, format := range []string{"json", "yaml"} {
		out, _, err = run(t, "--kubeconfig", kubeconfig, "links", "--contexts", "east,nowhere", "-o", format)
		if err == nil {
			t.Errorf("-o %s: an unknown context must fail the command\n%s", format, out)
		}
		var m linkmatrix.Matrix
		if err := yaml.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("-o %s: %v\n%s", format, err, out)
		}
		if m.Errors["nowhere"] == "" || len(m.Links) == 0 {
			t.Errorf("-o %s: the matrix must hold east's links and nowhere's error: %+v", format, m)
		}
	}

	// An API server that takes the connection and never answers is that
	// context's error, not a hang of the whole command.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = silent.Close() }()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer func() { _ = c.Close() }()
		}
	}()
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	east := cfg.Contexts["east"]
	cfg.Clusters["silent"] = &clientcmdapi.Cluster{Server: "https://" + silent.Addr().String(), InsecureSkipTLSVerify: true}
	cfg.Contexts["silent"] = &clientcmdapi.Context{Cluster: "silent", AuthInfo: east.AuthInfo}
	withSilent := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, withSilent); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		out, _, err = run(t, "--kubeconfig", withSilent, "links", "--contexts", "east,silent", "--request-timeout", "1s")
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("links hangs on an API server that never answers")
	}
	if err == nil || !strings.Contains(out, "silent: could not read links") {
		t.Errorf("a silent API server must fail and be named; err=%v\n%s", err, out)
	}
}
