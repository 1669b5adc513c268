package mirror_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/faultproxy"
	"github.com/backbone-mesh/backbone/internal/installtest"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

var bg = context.Background()

// linkReaderKubeconfig grants what a real install grants the link reader
// (get/list/watch Services, EndpointSlices, ServiceExports) and returns a
// kubeconfig with its token, reaching the API server through server.
func linkReaderKubeconfig(t *testing.T, c *testenv.Cluster, server string) []byte {
	t.Helper()
	return linkReaderKubeconfigCA(t, c, server, c.Config.CAData)
}

// linkReaderKubeconfigCA is linkReaderKubeconfig for a server whose
// certificate ca signs (a proxy's).
func linkReaderKubeconfigCA(t *testing.T, c *testenv.Cluster, server string, ca []byte) []byte {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "backbone-link-reader", Namespace: v1alpha1.SystemNamespace}}
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "backbone-link-reader"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"multicluster.x-k8s.io"}, Resources: []string{"serviceexports"}, Verbs: []string{"get", "list", "watch"}},
	}}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "backbone-link-reader"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}}}
	for _, o := range []client.Object{sa, role, binding} {
		if err := c.Client.Create(bg, o); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	tr, err := c.Clientset.CoreV1().ServiceAccounts(sa.Namespace).CreateToken(bg, sa.Name, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kc := kube.KubeconfigFor(map[string]*rest.Config{c.Name: {Host: server, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: ca}}}, c.Name)
	raw, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func createLink(t *testing.T, in *testenv.Cluster, target string, kubeconfig []byte) *v1alpha1.Link {
	t.Helper()
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "backbone-link-" + target, Namespace: v1alpha1.SystemNamespace},
		Type: v1alpha1.RemoteKubeconfigSecretType, Data: map[string][]byte{v1alpha1.KubeconfigKey: kubeconfig}}
	if err := in.Client.Create(bg, secret); err != nil {
		t.Fatal(err)
	}
	link := &v1alpha1.Link{
		ObjectMeta: metav1.ObjectMeta{Name: target, Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.LinkSpec{
			TargetClusterName: target, CredentialsSecret: v1alpha1.SecretReference{Name: secret.Name},
			GatewayAddresses: []v1alpha1.GatewayAddress{{Host: "192.0.2.10", Port: 4143}},
			GatewayIdentity:  "spiffe://test/cluster/" + target,
			ExcludedLabels:   []string{"internal-only"},
		},
	}
	if err := in.Client.Create(bg, link); err != nil {
		t.Fatal(err)
	}
	return link
}

// linkedClusters starts east and west with namespace ns in both and a
// gateway endpoint in west, as most mirroring tests begin.
func linkedClusters(t *testing.T, ns string) (east, west *testenv.Cluster) {
	t.Helper()
	clusters := testenv.Start(t, "east", "west")
	east, west = clusters["east"], clusters["west"]
	for _, c := range []*testenv.Cluster{east, west} {
		if err := c.CreateNamespace(ns); err != nil {
			t.Fatal(err)
		}
	}
	registerGateway(t, west, "192.0.2.2")
	return east, west
}

// linkThroughProxy links west to east through a fault proxy in front of
// east's API server, and returns the proxy.
func linkThroughProxy(t *testing.T, east, west *testenv.Cluster) *faultproxy.Proxy {
	t.Helper()
	proxy := apiServerProxy(t, east)
	createLink(t, west, "east", linkReaderKubeconfig(t, east, "https://"+proxy.Addr()))
	return proxy
}

// apiServerProxy is a fault proxy in front of c's API server, closed when
// the test ends.
func apiServerProxy(t *testing.T, c *testenv.Cluster) *faultproxy.Proxy {
	t.Helper()
	apiURL, err := url.Parse(c.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.New("127.0.0.1:0", apiURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	return proxy
}

// mirroring starts east and west with namespace ns, west linked to east
// directly and its controller running, and waits until east's exported
// Service first is mirrored.
func mirroring(t *testing.T, ns, first string) (east, west *testenv.Cluster) {
	t.Helper()
	east, west = linkedClusters(t, ns)
	createLink(t, west, "east", linkReaderKubeconfig(t, east, east.Config.Host))
	runController(t, west)
	if err := east.Client.Create(bg, service(ns, first, exported(), 80)); err != nil {
		t.Fatal(err)
	}
	eventually(t, first+"-east has its slice", func() bool {
		_, ok := get(west, ns, first+"-east", &discoveryv1.EndpointSlice{})
		return ok
	})
	return east, west
}

// registerGateway gives the cluster an IPv4 gateway Service with one
// endpoint at ip, which every mirror's EndpointSlice copies.
func registerGateway(t *testing.T, c *testenv.Cluster, ip string) {
	t.Helper()
	c.ReplaceGateway(t, corev1.IPv4Protocol, ip)
}

// registerGatewayEndpoint gives the gateway Service an install made one
// endpoint at ip, as the EndpointSlice controller would.
func registerGatewayEndpoint(t *testing.T, c *testenv.Cluster, ip string) {
	t.Helper()
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "backbone-gateway-1", Namespace: v1alpha1.SystemNamespace, Labels: map[string]string{discoveryv1.LabelServiceName: v1alpha1.GatewayServiceName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
	if err := c.Client.Create(bg, slice); err != nil {
		t.Fatal(err)
	}
}

// runController runs the controller of cluster c (options adjusted by
// the given functions) until the test ends or the returned func is called.
func runController(t *testing.T, c *testenv.Cluster, adjust ...func(*controller.Options)) context.CancelFunc {
	t.Helper()
	opts := controller.Options{ClusterName: c.Name, Ports: mirror.PortRange{Low: 20000, High: 20999},
		MetricsAddress: "0", HealthProbeAddress: "0", Resync: 2 * time.Second}
	for _, f := range adjust {
		f(&opts)
	}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	// With the installed RBAC, not as an admin.
	as := installtest.AsController(t, c)
	go func() { done <- controller.Run(ctx, as.Config, opts) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("controller: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return stop
}

func service(ns, name string, labels map[string]string, ports ...int32) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
	for i, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: fmt.Sprintf("p%d", i), Port: p})
	}
	return s
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func get[T client.Object](c *testenv.Cluster, ns, name string, obj T) (T, bool) {
	err := c.Client.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, obj)
	return obj, err == nil
}

func linkReady(c *testenv.Cluster, name string) *metav1.Condition {
	l, ok := get(c, v1alpha1.SystemNamespace, name, &v1alpha1.Link{})
	if !ok {
		return nil
	}
	return meta.FindStatusCondition(l.Status.Conditions, v1alpha1.ConditionReady)
}

func exported() map[string]string { return map[string]string{v1alpha1.ExportedLabel: "true"} }

func TestMirroringFollowsTheRemoteCluster(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	proxy := linkThroughProxy(t, east, west)
	stop := runController(t, west)
	parent := t // controllers restarted in subtests live as long as the test

	cart := service("shop", "cart", map[string]string{v1alpha1.ExportedLabel: "true", "app": "cart", "internal-only": "x"}, 8080)
	if err := east.Client.Create(bg, cart); err != nil {
		t.Fatal(err)
	}
	var mirrorSvc *corev1.Service
	eventually(t, "cart-east is mirrored", func() bool {
		var ok bool
		mirrorSvc, ok = get(west, "shop", "cart-east", &corev1.Service{})
		return ok
	})
	if mirrorSvc.Labels[v1alpha1.MirroredFromLabel] != "east" || mirrorSvc.Labels["app"] != "cart" || mirrorSvc.Labels["internal-only"] != "" {
		t.Errorf("mirror labels %v", mirrorSvc.Labels)
	}
	var slice *discoveryv1.EndpointSlice
	eventually(t, "the mirror's EndpointSlice points at the gateway", func() bool {
		var ok bool
		slice, ok = get(west, "shop", "cart-east", &discoveryv1.EndpointSlice{})
		return ok && len(slice.Endpoints) == 1 && slice.Endpoints[0].Addresses[0] == "192.0.2.2"
	})
	port := *slice.Ports[0].Port
	if port < 20000 || port > 20999 {
		t.Errorf("allocated port %d outside the range", port)
	}
	eventually(t, "the Link is Ready", func() bool { c := linkReady(west, "east"); return c != nil && c.Status == metav1.ConditionTrue })

	t.Run("a port change follows and keeps the gateway port", func(t *testing.T) {
		cur, _ := get(east, "shop", "cart", &corev1.Service{})
		cur.Spec.Ports[0].Port = 9090
		if err := east.Client.Update(bg, cur); err != nil {
			t.Fatal(err)
		}
		eventually(t, "port 9090 mirrored", func() bool {
			s, ok := get(west, "shop", "cart-east", &corev1.Service{})
			return ok && s.Spec.Ports[0].Port == 9090
		})
		sl, _ := get(west, "shop", "cart-east", &discoveryv1.EndpointSlice{})
		if *sl.Ports[0].Port != port {
			t.Errorf("gateway port moved from %d to %d", port, *sl.Ports[0].Port)
		}
	})

	t.Run("a headless StatefulSet-style service gets per-pod mirrors on allocated ports", func(t *testing.T) {
		db := service("shop", "db", exported(), 5432)
		db.Spec.ClusterIP = corev1.ClusterIPNone
		if err := east.Client.Create(bg, db); err != nil {
			t.Fatal(err)
		}
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "db-pods", Labels: map[string]string{discoveryv1.LabelServiceName: "db", corev1.IsHeadlessService: ""}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("p0"), Port: ptr.To[int32](5432)}},
		}
		for i, ip := range []string{"10.9.0.10", "10.9.0.11"} {
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Hostname: ptr.To(fmt.Sprintf("db-%d", i)),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
		}
		if err := east.Client.Create(bg, slice); err != nil {
			t.Fatal(err)
		}
		ports := map[int32]string{}
		for _, pod := range []string{"db-0", "db-1"} {
			name := pod + "-db-east"
			eventually(t, name+" is mirrored on a gateway port", func() bool {
				sl, ok := get(west, "shop", name, &discoveryv1.EndpointSlice{})
				return ok && len(sl.Ports) == 1 && sl.Ports[0].Port != nil && len(sl.Endpoints) == 1 && sl.Endpoints[0].Addresses[0] == "192.0.2.2"
			})
			sl, _ := get(west, "shop", name, &discoveryv1.EndpointSlice{})
			p := *sl.Ports[0].Port
			if p < 20000 || p > 20999 || ports[p] != "" {
				t.Fatalf("%s got gateway port %d (taken by %q)", name, p, ports[p])
			}
			ports[p] = name
		}
		// The headless mirror resolves to the per-pod mirrors.
		eventually(t, "db-east is headless with the per-pod mirrors behind it", func() bool {
			svc, ok := get(west, "shop", "db-east", &corev1.Service{})
			if !ok || svc.Spec.ClusterIP != corev1.ClusterIPNone {
				return false
			}
			var list discoveryv1.EndpointSliceList
			if west.Client.List(bg, &list, client.InNamespace("shop"), client.MatchingLabels{discoveryv1.LabelServiceName: "db-east"}) != nil {
				return false
			}
			n := 0
			for _, sl := range list.Items {
				for _, ep := range sl.Endpoints {
					if ep.Hostname != nil && strings.HasPrefix(*ep.Hostname, "db-") {
						n++
					}
				}
			}
			return n == 2
		})

		// A pod that stops being ready there stops being ready here, in
		// the headless mirror (peer discovery) and its own mirror.
		slice.Endpoints[1].Conditions.Ready = ptr.To(false)
		if err := east.Client.Update(bg, slice); err != nil {
			t.Fatal(err)
		}
		readiness := func(sliceName, hostname string) (ready, found bool) {
			sl, ok := get(west, "shop", sliceName, &discoveryv1.EndpointSlice{})
			if !ok {
				return false, false
			}
			for _, ep := range sl.Endpoints {
				if hostname == "" || ep.Hostname != nil && *ep.Hostname == hostname {
					return ep.Conditions.Ready != nil && *ep.Conditions.Ready, true
				}
			}
			return false, false
		}
		eventually(t, "db-1 is not ready in db-east and db-1-db-east, db-0 still is", func() bool {
			h1, ok1 := readiness("db-east", "db-1")
			p1, ok2 := readiness("db-1-db-east", "")
			h0, ok3 := readiness("db-east", "db-0")
			return ok1 && ok2 && ok3 && !h1 && !p1 && h0
		})
	})

	t.Run("a ServiceExport exports a Service without the label", func(t *testing.T) {
		if err := east.Client.Create(bg, service("shop", "orders", nil, 80)); err != nil {
			t.Fatal(err)
		}
		if err := east.Client.Create(bg, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "orders-east is mirrored", func() bool { _, ok := get(west, "shop", "orders-east", &corev1.Service{}); return ok })
	})

	t.Run("a conflict, a long name and a missing namespace are reported and nothing is overwritten", func(t *testing.T) {
		mine := service("shop", "conflict-east", map[string]string{"owner": "me"}, 1234)
		if err := west.Client.Create(bg, mine); err != nil {
			t.Fatal(err)
		}
		if err := east.Client.Create(bg, service("shop", "conflict", exported(), 80)); err != nil {
			t.Fatal(err)
		}
		if err := east.Client.Create(bg, service("shop", strings.Repeat("l", 60), exported(), 80)); err != nil {
			t.Fatal(err)
		}
		if err := east.CreateNamespace("billing"); err != nil {
			t.Fatal(err)
		}
		if err := east.Client.Create(bg, service("billing", "invoices", exported(), 80)); err != nil {
			t.Fatal(err)
		}
		eventually(t, "three problems are reported", func() bool {
			l, _ := get(west, v1alpha1.SystemNamespace, "east", &v1alpha1.Link{})
			return len(l.Status.Problems) == 3
		})
		got, _ := get(west, "shop", "conflict-east", &corev1.Service{})
		if got.Labels["owner"] != "me" || got.Spec.Ports[0].Port != 1234 || got.ResourceVersion != mine.ResourceVersion {
			t.Errorf("the user's Service was changed: %+v", got)
		}
		if c := linkReady(west, "east"); c == nil || c.Reason != mirror.ReasonSyncedWithProblems {
			t.Errorf("Ready = %+v", c)
		}
		for _, cleanup := range []client.Object{service("shop", "conflict", nil), service("shop", strings.Repeat("l", 60), nil), service("billing", "invoices", nil)} {
			_ = east.Client.Delete(bg, cleanup)
		}
	})

	t.Run("a restarted controller rewrites nothing", func(t *testing.T) {
		eventually(t, "problems cleared", func() bool {
			l, _ := get(west, v1alpha1.SystemNamespace, "east", &v1alpha1.Link{})
			return len(l.Status.Problems) == 0
		})
		before := snapshot(t, west)
		stop()
		stop = runController(parent, west)
		time.Sleep(6 * time.Second) // a few resyncs
		if after := snapshot(t, west); after != before {
			t.Fatalf("mirrors changed across a restart:\nbefore %s\nafter  %s", before, after)
		}
	})

	t.Run("an unreachable remote leaves the mirrors exactly as they were", func(t *testing.T) {
		before := snapshot(t, west)
		proxy.SetRefuse(true)
		proxy.ResetAll()
		eventually(t, "the Link reports the outage", func() bool {
			c := linkReady(west, "east")
			return c != nil && c.Reason == mirror.ReasonRemoteUnreachable
		})
		if err := east.Client.Create(bg, service("shop", "during-outage", exported(), 80)); err != nil {
			t.Fatal(err)
		}
		if err := east.Client.Delete(bg, service("shop", "orders", nil)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		if after := snapshot(t, west); after != before {
			t.Fatalf("mirrors changed while the remote was unreachable:\nbefore %s\nafter  %s", before, after)
		}
		proxy.SetRefuse(false)
		eventually(t, "changes made during the outage converge", func() bool {
			_, added := get(west, "shop", "during-outage-east", &corev1.Service{})
			_, stale := get(west, "shop", "orders-east", &corev1.Service{})
			return added && !stale
		})
	})

	t.Run("unexporting removes the mirror", func(t *testing.T) {
		cur, _ := get(east, "shop", "cart", &corev1.Service{})
		delete(cur.Labels, v1alpha1.ExportedLabel)
		if err := east.Client.Update(bg, cur); err != nil {
			t.Fatal(err)
		}
		eventually(t, "cart-east is gone", func() bool {
			_, svc := get(west, "shop", "cart-east", &corev1.Service{})
			_, sl := get(west, "shop", "cart-east", &discoveryv1.EndpointSlice{})
			return !svc && !sl
		})
	})

	t.Run("deleting the Link removes its mirrors and nothing else", func(t *testing.T) {
		if err := west.Client.Delete(bg, &v1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: "east"}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the Link and its mirrors are gone", func() bool {
			_, link := get(west, v1alpha1.SystemNamespace, "east", &v1alpha1.Link{})
			_, m := get(west, "shop", "during-outage-east", &corev1.Service{})
			return !link && !m
		})
		if _, ok := get(west, "shop", "conflict-east", &corev1.Service{}); !ok {
			t.Error("the user's Service was deleted with the Link")
		}
	})
}

// snapshot is the identity of every mirror object: UIDs and
// resourceVersions, so any write shows.
func snapshot(t *testing.T, c *testenv.Cluster) string {
	t.Helper()
	var svcs corev1.ServiceList
	var slices discoveryv1.EndpointSliceList
	if err := c.Client.List(bg, &svcs, client.HasLabels{v1alpha1.MirroredFromLabel}); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.List(bg, &slices, client.MatchingLabels{discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy}); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, s := range svcs.Items {
		fmt.Fprintf(&b, "svc %s/%s %s %s; ", s.Namespace, s.Name, s.UID, s.ResourceVersion)
	}
	for _, s := range slices.Items {
		fmt.Fprintf(&b, "slice %s/%s %s %s; ", s.Namespace, s.Name, s.UID, s.ResourceVersion)
	}
	return b.String()
}

// TestExecCredentialsAreNeverRun: a Link whose kubeconfig carries an exec
// plugin is refused, and the plugin provably does not run.
func TestExecCredentialsAreNeverRun(t *testing.T) {
	west := testenv.Start(t, "west")["west"]
	marker := filepath.Join(t.TempDir(), "plugin-ran")
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: east, cluster: {server: "https://192.0.2.1:6443", certificate-authority-data: Y2E=}}]
users: [{name: x, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: ["-c", "touch %s"]}}}]
contexts: [{name: east, context: {cluster: east, user: x}}]
current-context: east
`, marker)
	createLink(t, west, "east", []byte(kubeconfig))
	runController(t, west)
	eventually(t, "the Link reports InsecureCredentials", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonInsecureCredentials && c.Status == metav1.ConditionFalse
	})
	time.Sleep(3 * time.Second) // a resync more
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("the exec plugin ran (%s exists)", marker)
	}
}

// TestRevokedCredentialsKeepMirrors: the link reader's token is revoked
// (its ServiceAccount deleted): the Link says the credentials are
// rejected, and the mirrors stay exactly as they were.
func TestRevokedCredentialsKeepMirrors(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	if err := east.Client.Create(bg, service("shop", "cart", exported(), 8080)); err != nil {
		t.Fatal(err)
	}
	createLink(t, west, "east", linkReaderKubeconfig(t, east, east.Config.Host))
	runController(t, west)
	eventually(t, "cart-east is mirrored", func() bool {
		_, ok := get(west, "shop", "cart-east", &discoveryv1.EndpointSlice{})
		return ok
	})
	eventually(t, "the Link is Ready", func() bool { c := linkReady(west, "east"); return c != nil && c.Status == metav1.ConditionTrue })
	before := snapshot(t, west)

	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "backbone-link-reader", Namespace: v1alpha1.SystemNamespace}}
	if err := east.Client.Delete(bg, sa); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Link reports rejected credentials", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonCredentialsRejected && strings.Contains(c.Message, "backbone --context east link")
	})
	time.Sleep(3 * time.Second)
	if after := snapshot(t, west); after != before {
		t.Fatalf("mirrors changed after the credentials were revoked:\nbefore %s\nafter  %s", before, after)
	}
}

// TestLeaderSwitchRewritesNothing: two controller replicas elect a leader;
// the leader stops and the other takes over the Lease. No mirror is
// deleted, recreated or rewritten on the way.
func TestLeaderSwitchRewritesNothing(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	for _, name := range []string{"cart", "orders", "payments"} {
		if err := east.Client.Create(bg, service("shop", name, exported(), 8080, 9090)); err != nil {
			t.Fatal(err)
		}
	}
	createLink(t, west, "east", linkReaderKubeconfig(t, east, east.Config.Host))
	replica := func() context.CancelFunc {
		return runController(t, west, func(o *controller.Options) { o.LeaderElection = true })
	}
	stopFirst := replica()
	eventually(t, "three mirrors and the Link ready", func() bool {
		var list discoveryv1.EndpointSliceList
		c := linkReady(west, "east")
		return west.Client.List(bg, &list, client.InNamespace("shop")) == nil && len(list.Items) == 3 && c != nil && c.Status == metav1.ConditionTrue
	})
	replica() // the standby
	before := snapshot(t, west)
	lease := func() string {
		var l coordinationv1.Lease
		if err := west.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "backbone-controller"}, &l); err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	first := lease()
	if first == "" {
		t.Fatal("no leader holds the Lease")
	}
	stopFirst() // releases the Lease on the way out
	eventually(t, "the standby takes the Lease", func() bool { h := lease(); return h != "" && h != first })
	time.Sleep(5 * time.Second) // the new leader's first syncs and resyncs
	if after := snapshot(t, west); after != before {
		t.Fatalf("mirrors changed across the leader switch:\nbefore %s\nafter  %s", before, after)
	}
}

// TestTwoLinksToOneClusterShareItsMirrors: a Link renamed in git the
// usual way (the new one created, then the old one deleted) keeps every
// mirror as it is — no deletion, no new cluster IP. While both exist the
// newer one waits and says why; when the older goes, the newer takes the
// mirrors over; deleting the newer one while the older mirrors changes
// nothing either.
func TestTwoLinksToOneClusterShareItsMirrors(t *testing.T) {
	east, west := mirroring(t, "shop", "cart")
	cart, _ := get(west, "shop", "cart-east", &corev1.Service{})

	second := func(name string) {
		t.Helper()
		var old v1alpha1.Link
		if err := west.Client.Get(bg, client.ObjectKey{Namespace: v1alpha1.SystemNamespace, Name: "east"}, &old); err != nil {
			t.Fatal(err)
		}
		l := &v1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: v1alpha1.SystemNamespace}, Spec: old.Spec}
		if err := west.Client.Create(bg, l); err != nil {
			t.Fatal(err)
		}
		eventually(t, name+" waits for the older Link", func() bool {
			c := linkReady(west, name)
			return c != nil && c.Reason == mirror.ReasonDuplicateTarget && strings.Contains(c.Message, "Link east")
		})
	}
	unchanged := func(when string) {
		t.Helper()
		time.Sleep(2 * time.Second)
		now, ok := get(west, "shop", "cart-east", &corev1.Service{})
		if !ok || now.UID != cart.UID || now.Spec.ClusterIP != cart.Spec.ClusterIP {
			t.Fatalf("%s: cart-east was deleted or recreated (present %v)", when, ok)
		}
	}
	deleteLink := func(name string) {
		t.Helper()
		l := &v1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: v1alpha1.SystemNamespace}}
		if err := west.Client.Delete(bg, l); err != nil {
			t.Fatal(err)
		}
		eventually(t, name+" is gone", func() bool {
			_, ok := get(west, v1alpha1.SystemNamespace, name, &v1alpha1.Link{})
			return !ok
		})
	}

	second("east-b")
	deleteLink("east-b")
	unchanged("after the newer Link's deletion")

	second("east-c")
	deleteLink("east")
	unchanged("after the older Link's deletion")
	eventually(t, "east-c mirrors", func() bool { c := linkReady(west, "east-c"); return c != nil && c.Reason == mirror.ReasonSynced })
	if err := east.Client.Create(bg, service("shop", "pay", exported(), 80)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a new Service is mirrored by east-c", func() bool {
		_, ok := get(west, "shop", "pay-east", &discoveryv1.EndpointSlice{})
		return ok
	})
	unchanged("after east-c took over")
}

// remoteUp reads backbone_remote_api_up for cluster from the controller's
// registry; -1 when it has no series.
func remoteUp(t *testing.T, cluster string) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "backbone_remote_api_up" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "target_cluster" && l.GetValue() == cluster {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// TestBrokenCredentialsTakeTheRemoteDown: a Link whose Secret no longer
// parses cannot reach its cluster, and backbone_remote_api_up says so —
// an alert on it must fire, not keep the last answer's 1.
func TestBrokenCredentialsTakeTheRemoteDown(t *testing.T) {
	_, west := mirroring(t, "shop", "cart")
	eventually(t, "east is up", func() bool { return remoteUp(t, "east") == 1 })
	var secret corev1.Secret
	if err := west.Client.Get(bg, client.ObjectKey{Namespace: v1alpha1.SystemNamespace, Name: "backbone-link-east"}, &secret); err != nil {
		t.Fatal(err)
	}
	secret.Data[v1alpha1.KubeconfigKey] = []byte("not: [a kubeconfig")
	if err := west.Client.Update(bg, &secret); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Link reports invalid credentials", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonInvalidCredentials
	})
	if up := remoteUp(t, "east"); up != 0 {
		t.Errorf("backbone_remote_api_up = %v with credentials that do not parse, want 0", up)
	}
}

// TestALinkGoneWithoutItsFinalizerLeavesNoMirror: a Link deleted after its
// finalizer was removed by hand (here while no controller ran, which
// would have put it back) never runs its cleanup; its mirrors, which
// would route to a gateway no Link reaches, are swept anyway.
func TestALinkGoneWithoutItsFinalizerLeavesNoMirror(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	createLink(t, west, "east", linkReaderKubeconfig(t, east, east.Config.Host))
	stop := runController(t, west)
	if err := east.Client.Create(bg, service("shop", "cart", exported(), 80)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "cart-east has its slice", func() bool {
		_, ok := get(west, "shop", "cart-east", &discoveryv1.EndpointSlice{})
		return ok
	})
	stop()
	var l v1alpha1.Link
	if err := west.Client.Get(bg, client.ObjectKey{Namespace: v1alpha1.SystemNamespace, Name: "east"}, &l); err != nil {
		t.Fatal(err)
	}
	l.Finalizers = nil
	if err := west.Client.Update(bg, &l); err != nil {
		t.Fatal(err)
	}
	if err := west.Client.Delete(bg, &l); err != nil {
		t.Fatal(err)
	}
	runController(t, west)
	eventually(t, "cart-east and its slice are gone", func() bool {
		_, svc := get(west, "shop", "cart-east", &corev1.Service{})
		_, sl := get(west, "shop", "cart-east", &discoveryv1.EndpointSlice{})
		return !svc && !sl
	})
}
