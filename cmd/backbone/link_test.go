package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	"sigs.k8s.io/yaml"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// run executes the backbone CLI in-process and returns stdout and stderr.
func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCmd()
	var stdout, stderr bytes.Buffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return stdout.String(), stderr.String(), err
}

func decodeDocs(t *testing.T, stream string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, doc := range strings.Split(stream, "\n---\n") {
		doc = strings.TrimPrefix(doc, "---\n")
		if strings.TrimSpace(doc) == "" {
			continue
		}
		obj := map[string]any{}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("decoding %q: %v", doc, err)
		}
		out = append(out, &unstructured.Unstructured{Object: obj})
	}
	return out
}

// installBackbone applies `backbone install` for the named cluster, as a
// real install would, so tests run with the RBAC users get.
func installBackbone(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	v := install.DefaultValues()
	v.ClusterName = c.Name
	objs, err := install.Objects(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := install.Apply(context.Background(), c.Client, objs); err != nil {
		t.Fatal(err)
	}
}

// TestLinkGrantsOnlyReadingExports runs `backbone link --create-token`
// against east, applies its output to west as an admin, and uses the
// kubeconfig west now holds against east: it reads exports and is refused
// everything else.
func TestLinkGrantsOnlyReadingExports(t *testing.T) {
	ctx := context.Background()
	clusters := testenv.Start(t, "east", "west")
	east, west := clusters["east"], clusters["west"]
	installBackbone(t, east)

	// What a cloud load balancer would report.
	gw := &corev1.Service{}
	if err := east.Client.Get(ctx, client.ObjectKey{Namespace: backbonev1alpha1.SystemNamespace, Name: backbonev1alpha1.GatewayServiceName}, gw); err != nil {
		t.Fatal(err)
	}
	gw.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "gw.east.example"}, {IP: "203.0.113.10"}}
	if err := east.Client.Status().Update(ctx, gw); err != nil {
		t.Fatal(err)
	}

	_, _, err := run(t, "--kubeconfig", east.Kubeconfig, "link", "--cluster-name", "east")
	if err == nil || !strings.Contains(err.Error(), "--create-token") {
		t.Fatalf("without a token: want an error naming --create-token, got %v", err)
	}

	stdout, stderr, err := run(t, "--kubeconfig", east.Kubeconfig, "link", "--cluster-name", "east", "--create-token")
	if err != nil {
		t.Fatalf("backbone link: %v\n%s", err, stderr)
	}
	docs := decodeDocs(t, stdout)
	if len(docs) != 2 || docs[0].GetKind() != "Secret" || docs[1].GetKind() != "Link" {
		t.Fatalf("want a Secret and a Link, got:\n%s", stdout)
	}
	for _, d := range docs {
		if err := west.Client.Create(ctx, d); err != nil {
			t.Fatalf("applying %s to west: %v", d.GetKind(), err)
		}
	}

	var l backbonev1alpha1.Link
	if err := west.Client.Get(ctx, client.ObjectKey{Namespace: backbonev1alpha1.SystemNamespace, Name: "east"}, &l); err != nil {
		t.Fatal(err)
	}
	wantAddrs := []backbonev1alpha1.GatewayAddress{{Host: "203.0.113.10", Port: 4143}, {Host: "gw.east.example", Port: 4143}}
	if len(l.Spec.GatewayAddresses) != 2 || l.Spec.GatewayAddresses[0] != wantAddrs[0] || l.Spec.GatewayAddresses[1] != wantAddrs[1] {
		t.Errorf("gateway addresses: got %v, want %v", l.Spec.GatewayAddresses, wantAddrs)
	}
	if l.Spec.GatewayIdentity != "spiffe://backbone.local/cluster/east" || l.Spec.TargetClusterName != "east" {
		t.Errorf("link spec: %+v", l.Spec)
	}

	var secret corev1.Secret
	if err := west.Client.Get(ctx, client.ObjectKey{Namespace: backbonev1alpha1.SystemNamespace, Name: l.Spec.CredentialsSecret.Name}, &secret); err != nil {
		t.Fatal(err)
	}
	if secret.Type != backbonev1alpha1.RemoteKubeconfigSecretType {
		t.Errorf("secret type %q", secret.Type)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(secret.Data[backbonev1alpha1.KubeconfigKey])
	if err != nil {
		t.Fatal(err)
	}
	reader, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	readerClient, err := client.New(cfg, client.Options{Scheme: testenv.Scheme})
	if err != nil {
		t.Fatal(err)
	}

	// Allowed: reading exports, cluster-wide.
	if _, err := reader.CoreV1().Services("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("link reader listing Services: %v", err)
	}
	if _, err := reader.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("link reader listing EndpointSlices: %v", err)
	}
	if err := readerClient.List(ctx, &mcsv1beta1.ServiceExportList{}); err != nil {
		t.Errorf("link reader listing ServiceExports: %v", err)
	}

	// Refused: Secrets anywhere, writes, backbone's own objects.
	forbidden := map[string]error{
		"getting a Secret in backbone-system": func() error {
			_, err := reader.CoreV1().Secrets(backbonev1alpha1.SystemNamespace).Get(ctx, secret.Name, metav1.GetOptions{})
			return err
		}(),
		"listing Secrets cluster-wide": func() error {
			_, err := reader.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
			return err
		}(),
		"creating a Service": func() error {
			_, err := reader.CoreV1().Services("default").Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "intruder"},
				Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
			}, metav1.CreateOptions{})
			return err
		}(),
		"deleting the gateway Service": reader.CoreV1().Services(backbonev1alpha1.SystemNamespace).Delete(ctx, backbonev1alpha1.GatewayServiceName, metav1.DeleteOptions{}),
		"listing Links":                readerClient.List(ctx, &backbonev1alpha1.LinkList{}),
		"creating a token": func() error {
			_, err := reader.CoreV1().ServiceAccounts(backbonev1alpha1.SystemNamespace).Get(ctx, install.LinkReaderServiceAccount, metav1.GetOptions{})
			return err
		}(),
	}
	for what, err := range forbidden {
		if !apierrors.IsForbidden(err) {
			t.Errorf("link reader %s: want Forbidden, got %v", what, err)
		}
	}
}

// TestLinkOutputIsDeterministic checks that, given the same token, two runs
// print the same bytes, and that --secret-output keeps the credential out
// of stdout in an owner-only file.
func TestLinkOutputIsDeterministic(t *testing.T) {
	clusters := testenv.Start(t, "east")
	east := clusters["east"]
	installBackbone(t, east)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("not-a-real-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--kubeconfig", east.Kubeconfig, "link", "--cluster-name", "east",
		"--gateway-address", "gw.east.example:4143", "--gateway-identity", "spiffe://bank.example/cluster/east", "--token-file", tokenFile}
	first, _, err := run(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	second, _, err := run(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	if first != second {
		t.Errorf("two runs differ:\n%s\n---\n%s", first, second)
	}
	if !strings.Contains(first, "token: not-a-real-token\n") || !strings.Contains(first, "certificate-authority-data:") {
		t.Errorf("kubeconfig lacks the token or inline CA:\n%s", first)
	}

	secretFile := filepath.Join(t.TempDir(), "east-secret.yaml")
	linkOnly, _, err := run(t, append(args, "--secret-output", secretFile)...)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(linkOnly, "kind: Secret") || !strings.Contains(linkOnly, "kind: Link") {
		t.Errorf("with --secret-output, stdout must hold the Link alone:\n%s", linkOnly)
	}
	info, err := os.Stat(secretFile)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("secret file mode %v, want 0600", info.Mode().Perm())
	}
	raw, _ := os.ReadFile(secretFile)
	if docs := decodeDocs(t, string(raw)); len(docs) != 1 || docs[0].GetKind() != "Secret" {
		t.Errorf("secret file:\n%s", raw)
	}

	jsonOut, _, err := run(t, append(args, "-o", "json")...)
	if err != nil || !strings.Contains(jsonOut, `"kind": "List"`) {
		t.Errorf("-o json: %v\n%s", err, jsonOut)
	}
}
