package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/link"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// mirrorResult is one size of the mirroring measurement.
type mirrorResult struct {
	services int
	// mirrorAll: from the controller's start to every mirror and its
	// EndpointSlice existing in west.
	mirrorAll time.Duration
	syncCPU   float64 // controller CPU seconds during it
	syncReqs  float64 // API requests the controller made during it
	syncWrite float64 // of which writes (mirrors, slices, status)
	// Propagation of single changes made at a sustained rate.
	changes, rate     int
	p50, p99, maxProp time.Duration
	lost              int
	// Steady state: nothing changes.
	steadyReqsPerMin, steadyWritesPerMin, steadyCPUPerMin float64
	peakRSSMiB                                            float64
}

// measureMirroring runs, for each size, two fresh clusters: n exported
// Services in east, a `backbone controller` process for west with a Link
// holding the link reader's real, least-privilege credentials, and
// measures the first sync, single changes at a sustained rate and the
// steady state, from the controller's own metrics and /proc.
func measureMirroring(ctx context.Context, dir string, sizes []int, rate int, changeFor time.Duration) ([]mirrorResult, error) {
	if !testenv.InNetns() {
		return nil, errors.New("mirroring needs the private network namespace (run the bench as root)")
	}
	bin, err := buildBackbone(dir)
	if err != nil {
		return nil, err
	}
	var out []mirrorResult
	for _, n := range sizes {
		log.Printf("mirroring %d services", n)
		res, err := mirrorOnce(ctx, filepath.Join(dir, fmt.Sprintf("mirror-%d", n)), bin, n, rate, changeFor)
		if err != nil {
			return out, fmt.Errorf("%d services: %w", n, err)
		}
		out = append(out, res)
	}
	return out, nil
}

func buildBackbone(dir string) (string, error) {
	bin := filepath.Join(dir, "backbone")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	build := exec.Command("go", "build", "-o", bin, "./cmd/backbone")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

func mirrorOnce(ctx context.Context, dir, bin string, n, rate int, changeFor time.Duration) (mirrorResult, error) {
	res := mirrorResult{services: n, rate: rate}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	east, err := testenv.StartCluster(dir, "east")
	if err != nil {
		return res, err
	}
	defer func() { _ = east.Stop() }()
	west, err := testenv.StartCluster(dir, "west")
	if err != nil {
		return res, err
	}
	defer func() { _ = west.Stop() }()
	for _, c := range []*testenv.Cluster{east, west} {
		for _, ns := range []string{v1alpha1.SystemNamespace, "scale"} {
			if err := kube.EnsureNamespace(ctx, c.Client, ns); err != nil {
				return res, err
			}
		}
		v := install.DefaultValues()
		v.ClusterName = c.Name
		access, err := install.Access(v)
		if err != nil {
			return res, err
		}
		if err := install.Apply(ctx, c.Client, access); err != nil {
			return res, err
		}
	}
	began := time.Now()
	if err := createScaleServices(ctx, east.Client, n); err != nil {
		return res, err
	}
	log.Printf("  %d exported services created in east in %s", n, time.Since(began).Round(time.Millisecond))

	// west's gateway, as its Service: what every mirror slice points at.
	westIP := testenv.NetnsAddr(2)
	gw := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.GatewayServiceName, Namespace: v1alpha1.SystemNamespace},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tls", Port: 4143}}}}
	if err := kube.RegisterService(ctx, west.Client, gw, []string{westIP}, map[string]int32{"tls": 4143}, "bench"); err != nil {
		return res, err
	}
	// The Link, as `backbone link --create-token` makes it.
	cs, err := kubernetes.NewForConfig(east.Config)
	if err != nil {
		return res, err
	}
	l, err := link.Generate(ctx, east.Config, cs, link.Options{
		ClusterName: "east", GatewayAddresses: []string{net.JoinHostPort(testenv.NetnsAddr(1), "4143")},
		GatewayIdentity: "spiffe://" + benchTrustDomain + "/cluster/east", CreateToken: true, TokenDuration: time.Hour,
	})
	if err != nil {
		return res, err
	}
	l.Secret.Data = map[string][]byte{v1alpha1.KubeconfigKey: []byte(l.Secret.StringData[v1alpha1.KubeconfigKey])}
	l.Secret.StringData = nil
	if err := west.Client.Create(ctx, l.Secret); err != nil {
		return res, err
	}
	if err := west.Client.Create(ctx, l.Link); err != nil {
		return res, err
	}

	admin := net.JoinHostPort(westIP, "9991")
	cmd := exec.Command(bin, "controller", "--kubeconfig", west.Kubeconfig, "--cluster-name", "west",
		"--admin-address", admin, "--gateway-port-range", "20000-39999", "--log-level", "warn")
	logf, err := os.Create(filepath.Join(dir, "controller.log"))
	if err != nil {
		return res, err
	}
	defer func() { _ = logf.Close() }()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := []int{cmd.Process.Pid}

	// First sync: every mirror and slice exists.
	for {
		svcs, err := countMeta(ctx, west.Client, &metav1.PartialObjectMetadataList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceList"}})
		if err != nil {
			return res, err
		}
		sls, err := countMeta(ctx, west.Client, &metav1.PartialObjectMetadataList{TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSliceList"}})
		if err != nil {
			return res, err
		}
		if svcs == n && sls == n {
			break
		}
		if time.Since(start) > 15*time.Minute {
			return res, fmt.Errorf("after 15 minutes %d of %d mirrors and %d slices exist (see %s)", svcs, n, sls, logf.Name())
		}
		time.Sleep(250 * time.Millisecond)
	}
	res.mirrorAll = time.Since(start)
	res.syncCPU = cpuSeconds(pid)
	m, err := scrape(admin)
	if err != nil {
		return res, err
	}
	res.syncReqs, res.syncWrite = m.requests, m.writes
	log.Printf("  mirrored in %s: %.0f API requests, %.0f writes, %.1f CPU s", res.mirrorAll.Round(time.Millisecond), res.syncReqs, res.syncWrite, res.syncCPU)

	// Let the follow-up passes (status) settle, then single changes at a
	// sustained rate, each to another Service.
	time.Sleep(3 * time.Second)
	if res.p50, res.p99, res.maxProp, res.changes, res.lost, err = propagation(ctx, east, west, n, rate, changeFor); err != nil {
		return res, err
	}
	log.Printf("  %d changes at %d/s: p50 %s, p99 %s, max %s, %d not seen", res.changes, rate, res.p50, res.p99, res.maxProp, res.lost)

	// Steady state: a full resync period (30s) and then some.
	time.Sleep(3 * time.Second)
	before, err := scrape(admin)
	if err != nil {
		return res, err
	}
	cpu0 := cpuSeconds(pid)
	const steady = 40 * time.Second
	time.Sleep(steady)
	after, err := scrape(admin)
	if err != nil {
		return res, err
	}
	perMin := float64(time.Minute) / float64(steady)
	res.steadyReqsPerMin = (after.requests - before.requests) * perMin
	res.steadyWritesPerMin = (after.writes - before.writes) * perMin
	res.steadyCPUPerMin = (cpuSeconds(pid) - cpu0) * perMin
	res.peakRSSMiB = peakRSS(cmd.Process.Pid)
	log.Printf("  steady: %.1f requests/min, %.1f writes/min, %.2f CPU s/min; peak RSS %.0f MiB", res.steadyReqsPerMin, res.steadyWritesPerMin, res.steadyCPUPerMin, res.peakRSSMiB)
	return res, nil
}

func createScaleServices(ctx context.Context, c client.Client, n int) error {
	work := make(chan int)
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range work {
				svc := &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%05d", i), Namespace: "scale",
						Labels: map[string]string{v1alpha1.ExportedLabel: "true", "app": "scale"}},
					Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}},
				}
				if err := c.Create(ctx, svc); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	return <-errs
}

func countMeta(ctx context.Context, c client.Client, list *metav1.PartialObjectMetadataList) (int, error) {
	if err := c.List(ctx, list, client.InNamespace("scale"), client.MatchingLabels{v1alpha1.MirroredFromLabel: "east"}); err != nil {
		return 0, err
	}
	return len(list.Items), nil
}

// propagation changes a label on one Service after another at rate per
// second for d and times each change from its write in east to the
// mirror's update reaching a watch on west.
func propagation(ctx context.Context, east, west *testenv.Cluster, n, rate int, d time.Duration) (p50, p99, maxd time.Duration, changes, lost int, err error) {
	wc, err := client.NewWithWatch(west.Config, client.Options{Scheme: west.Client.Scheme()})
	if err != nil {
		return
	}
	var list corev1.ServiceList
	if err = wc.List(ctx, &list, client.InNamespace("scale"), client.Limit(1)); err != nil {
		return
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := wc.Watch(wctx, &corev1.ServiceList{}, client.InNamespace("scale"), client.MatchingLabels{v1alpha1.MirroredFromLabel: "east"},
		&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
	if err != nil {
		return
	}
	defer w.Stop()
	var mu sync.Mutex
	sent := map[string]time.Time{}
	var took []time.Duration
	go func() {
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*corev1.Service)
			if !ok || ev.Type != watch.Modified {
				continue
			}
			seen := time.Now()
			mu.Lock()
			if t, ok := sent[s.Labels["bench-seq"]]; ok {
				took = append(took, seen.Sub(t))
				delete(sent, s.Labels["bench-seq"])
			}
			mu.Unlock()
		}
	}()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		var s corev1.Service
		name := fmt.Sprintf("svc-%05d", (i*7919)%n)
		if err = east.Client.Get(ctx, client.ObjectKey{Namespace: "scale", Name: name}, &s); err != nil {
			return
		}
		seq := strconv.Itoa(i)
		s.Labels["bench-seq"] = seq
		mu.Lock()
		sent[seq] = time.Now()
		mu.Unlock()
		if err = east.Client.Update(ctx, &s); err != nil {
			return
		}
		changes++
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		pending := len(sent)
		mu.Unlock()
		if pending == 0 {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	lost = len(sent)
	if len(took) == 0 {
		err = errors.New("no change reached the mirrors")
		return
	}
	slices.Sort(took)
	pct := func(p float64) time.Duration { return took[min(len(took)-1, int(p*float64(len(took))))] }
	return pct(0.50), pct(0.99), took[len(took)-1], changes, lost, nil
}

type controllerMetrics struct{ requests, writes float64 }

// scrape reads the controller's API request and write counters.
func scrape(admin string) (controllerMetrics, error) {
	var m controllerMetrics
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return m, err
	}
	defer func() { _ = resp.Body.Close() }()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return m, err
	}
	sum := func(name string) float64 {
		var t float64
		if f, ok := families[name]; ok {
			for _, mm := range f.GetMetric() {
				t += mm.GetCounter().GetValue()
			}
		}
		return t
	}
	m.requests = sum("rest_client_requests_total")
	m.writes = sum("backbone_mirror_api_writes_total")
	if _, ok := families["rest_client_requests_total"]; !ok {
		return m, errors.New("the controller does not export rest_client_requests_total")
	}
	return m, nil
}

// peakRSS is the process's high-water resident set (VmHWM), in MiB.
func peakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
