package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/certs"
	"github.com/backbone-mesh/backbone/internal/faultproxy"
	"github.com/backbone-mesh/backbone/internal/gateway"
	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// benchTrustDomain is the trust domain of the bench's gateway identities.
const benchTrustDomain = "bench.backbone.test"

// backbonePaths sets up backbone's own cross-cluster path: two real
// clusters (etcd + kube-apiserver each), a `backbone gateway` process per
// cluster with real mTLS between them, the backends exported from east and
// mirrored in west (the mirror controller's output, written directly so
// the data path is measured alone). The WAN variant is a second link to
// east's gateway through a latency-injecting proxy. The second path is
// the same but for the answering gateway, a second one of east running
// net/http's HTTP/2 server (--inbound-server=net/http). With a baseline
// binary, a third path is a pair of gateways of that build, one in each
// cluster, with its own Link and mirrors.
func backbonePaths(ctx context.Context, dir, httpBackend, sinkBackend string, wan time.Duration, baseline string, procs int) ([]*path, error) {
	if !testenv.InNetns() {
		return nil, errors.New("backbone's path needs the private network namespace (run the bench as root)")
	}
	bin, err := buildBackbone(dir)
	if err != nil {
		return nil, err
	}
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	fail := func(err error) ([]*path, error) { stop(); return nil, err }

	east, stopEast, err := startCluster(dir, "east")
	if err != nil {
		return fail(err)
	}
	stops = append(stops, stopEast)
	west, stopWest, err := startCluster(dir, "west")
	if err != nil {
		return fail(err)
	}
	stops = append(stops, stopWest)

	anchor, err := certs.NewAnchor(benchTrustDomain, 24*time.Hour)
	if err != nil {
		return fail(err)
	}
	issueIdentity := func(cluster string) (string, error) {
		d := filepath.Join(dir, "identity-"+cluster)
		c, k, err := anchor.Issue(cluster, 24*time.Hour)
		if err != nil {
			return "", err
		}
		return d, certs.WriteIdentity(d, c, k, anchor.CertPEM())
	}
	// east2 is a second gateway of east answering with net/http's HTTP/2
	// server: the same tunnels through the same west gateway, to compare
	// the inbound servers in one run.
	eastIP, westIP, east2IP := testenv.NetnsAddr(1), testenv.NetnsAddr(2), testenv.NetnsAddr(3)
	eastBaseIP, westBaseIP := testenv.NetnsAddr(4), testenv.NetnsAddr(5)
	type gw struct {
		c             *testenv.Cluster
		ip, inbound   string
		name          string
		issueIdentity bool
		bin           string
	}
	gws := []gw{{east, eastIP, gateway.InboundServerBackbone, "east", true, bin}, {west, westIP, gateway.InboundServerBackbone, "west", true, bin}, {east, east2IP, gateway.InboundServerNetHTTP, "east2", false, bin}}
	if baseline != "" {
		// The baseline's --inbound-server is left at its default: a
		// build from before the flag has none.
		gws = append(gws, gw{east, eastBaseIP, "", "east-baseline", false, baseline}, gw{west, westBaseIP, "", "west-baseline", false, baseline})
	}
	var pids []int
	for _, g := range gws {
		id := filepath.Join(dir, "identity-"+g.c.Name)
		if g.issueIdentity {
			if id, err = issueIdentity(g.c.Name); err != nil {
				return fail(err)
			}
		}
		args := []string{"gateway", "--kubeconfig", g.c.Kubeconfig, "--cluster-name", g.c.Name,
			"--identity-dir", id, "--inbound-address", net.JoinHostPort(g.ip, "4143"),
			"--outbound-bind-ip", g.ip, "--admin-address", net.JoinHostPort(g.ip, "9990"), "--log-level", "warn"}
		if g.inbound != "" {
			args = append(args, "--inbound-server", g.inbound)
		}
		cmd := exec.Command(g.bin, args...)
		if procs > 0 {
			cmd.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", procs))
		}
		logf, err := os.Create(filepath.Join(dir, "gateway-"+g.name+".log"))
		if err != nil {
			return fail(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return fail(err)
		}
		stops = append(stops, func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); _ = logf.Close() })
		pids = append(pids, cmd.Process.Pid)
	}

	// east exports the backends.
	for name, addr := range map[string]string{"web": httpBackend, "sink": sinkBackend} {
		if err := exportService(ctx, east.Client, name, addr); err != nil {
			return fail(err)
		}
	}
	// west links to east directly and, for the WAN test, through a proxy.
	fp, err := faultproxy.New(net.JoinHostPort(westIP, "0"), net.JoinHostPort(eastIP, "4143"))
	if err != nil {
		return fail(err)
	}
	fp.SetLatency(wan)
	stops = append(stops, func() { _ = fp.Close() })
	eastID := "spiffe://" + benchTrustDomain + "/cluster/east"
	if err := createLink(ctx, west.Client, "east", eastIP, 4143, eastID); err != nil {
		return fail(err)
	}
	_, fpPort, _ := net.SplitHostPort(fp.Addr())
	n, _ := strconv.Atoi(fpPort)
	if err := createLink(ctx, west.Client, "east-wan", westIP, int32(n), eastID); err != nil {
		return fail(err)
	}
	if err := createLink(ctx, west.Client, "east-nethttp", east2IP, 4143, eastID); err != nil {
		return fail(err)
	}
	mirrors := []struct {
		remote, from string
		port         int32
	}{{"web", "east", 20001}, {"sink", "east", 20002}, {"web", "east-wan", 20003}, {"web", "east-nethttp", 20011}, {"sink", "east-nethttp", 20012}}
	if baseline != "" {
		if err := createLink(ctx, west.Client, "east-baseline", eastBaseIP, 4143, eastID); err != nil {
			return fail(err)
		}
		mirrors = append(mirrors, mirrors[0], mirrors[1])
		mirrors[len(mirrors)-2].from, mirrors[len(mirrors)-2].port = "east-baseline", 20021
		mirrors[len(mirrors)-1].from, mirrors[len(mirrors)-1].port = "east-baseline", 20022
	}
	for _, m := range mirrors {
		if err := createMirror(ctx, west.Client, m.from, m.remote, m.port, westIP); err != nil {
			return fail(err)
		}
	}
	addr := func(port int) string { return net.JoinHostPort(westIP, strconv.Itoa(port)) }
	// The link probe, from west's identity as west's controller sends it.
	westID, err := identity.Load(filepath.Join(dir, "identity-west"))
	if err != nil {
		return fail(err)
	}
	pool := gateway.NewPool(westID, 5*time.Second, slog.New(slog.DiscardHandler), nil)
	stops = append(stops, pool.Close)
	pool.Ensure(v1alpha1.Link{Spec: v1alpha1.LinkSpec{TargetClusterName: "east",
		GatewayAddresses: []v1alpha1.GatewayAddress{{Host: eastIP, Port: 4143}}, GatewayIdentity: eastID}})
	p := &path{
		name: "backbone", httpAddr: addr(20001), bulkAddr: addr(20002), wanAddr: addr(20003),
		pids: pids[:2], stop: stop,
		probe: func() (time.Duration, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return pool.Probe(ctx, "east")
		},
	}
	nethttp := &path{
		name: "backbone, net/http inbound", httpAddr: addr(20011), bulkAddr: addr(20012),
		pids: []int{pids[2], pids[1]}, stop: func() {},
	}
	paths := []*path{p, nethttp}
	if baseline != "" {
		baseAddr := func(port int) string { return net.JoinHostPort(westBaseIP, strconv.Itoa(port)) }
		paths = append(paths, &path{name: "backbone, baseline", httpAddr: baseAddr(20021), bulkAddr: baseAddr(20022),
			pids: pids[3:5], stop: func() {}})
	}
	// Wait for the listeners, and warm the pooled tunnels: a pod's first
	// connection after the gateway starts pays the handshake once.
	addrs := []string{p.wanAddr}
	for _, q := range paths {
		addrs = append(addrs, q.httpAddr)
	}
	for _, a := range addrs {
		var err error
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if err = get(nil, "http://"+a+"/"); err == nil {
				break
			}
		}
		if err != nil {
			return fail(fmt.Errorf("backbone's path %s does not answer: %w", a, err))
		}
	}
	return paths, nil
}

// exportService exports a backend from a cluster, as a Deployment and
// the EndpointSlice controller would.
func exportService(ctx context.Context, c client.Client, name, backend string) error {
	host, port, _ := net.SplitHostPort(backend)
	n, _ := strconv.Atoi(port)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "bench", Labels: map[string]string{v1alpha1.ExportedLabel: "true"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 80}}},
	}
	return kube.RegisterService(ctx, c, svc, []string{host}, map[string]int32{"tcp": int32(n)}, "bench")
}

func createLink(ctx context.Context, c client.Client, cluster, host string, port int32, identity string) error {
	return c.Create(ctx, &v1alpha1.Link{
		ObjectMeta: metav1.ObjectMeta{Name: cluster, Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.LinkSpec{
			TargetClusterName: cluster,
			CredentialsSecret: v1alpha1.SecretReference{Name: "unused"},
			GatewayAddresses:  []v1alpha1.GatewayAddress{{Host: host, Port: port}},
			GatewayIdentity:   identity,
		},
	})
}

// createMirror writes what the mirror controller writes for one remote
// Service: the mirror and its EndpointSlice on the local gateway.
func createMirror(ctx context.Context, c client.Client, from, remote string, gatewayPort int32, gatewayIP string) error {
	if err := kube.EnsureNamespace(ctx, c, "bench"); err != nil {
		return err
	}
	name := remote + "-" + from
	if err := c.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "bench",
			Labels:      map[string]string{v1alpha1.MirroredFromLabel: from, v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue},
			Annotations: map[string]string{v1alpha1.RemoteNameAnnotation: remote}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 80}}},
	}); err != nil {
		return err
	}
	return c.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "bench",
			Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy, v1alpha1.MirroredFromLabel: from}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{gatewayIP}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("tcp"), Port: ptr.To(gatewayPort), Protocol: ptr.To(corev1.ProtocolTCP)}},
	})
}
