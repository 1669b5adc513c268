package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
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
	"github.com/backbone-mesh/backbone/internal/faultproxy"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/link"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// controllerLogLevel is the mirroring controller's --log-level; its log
// is <dir>/mirror-<n>/controller.log.
var controllerLogLevel = "warn"

// mirrorResync is the controller's --resync (its default, the install's):
// a whole-Link pass this long after the previous one ended.
const mirrorResync = 30 * time.Second

// steadyPasses is how many whole-Link passes the steady-state window
// holds.
const steadyPasses = 2

// mirrorResult is one size of the mirroring measurement.
// mirrorRun is one size to mirror: n Services with cluster IPs, or n
// headless ones — whose mirrors need no cluster IP, so the API servers'
// allocator (see the apiserver section) is out of the way and the first
// sync shows the controller's own pace.
type mirrorRun struct {
	n        int
	headless bool
}

// slug names the run's files.
func (r mirrorRun) slug() string { return strings.ReplaceAll(r.String(), " ", "-") }

func (r mirrorRun) String() string {
	if r.headless {
		return fmt.Sprintf("%d headless", r.n)
	}
	return strconv.Itoa(r.n)
}

type mirrorResult struct {
	services int
	headless bool
	// mirrorAll: from the controller's start to every mirror and its
	// EndpointSlice existing in west.
	mirrorAll time.Duration
	syncCPU   float64 // controller CPU seconds during it
	syncReqs  float64 // API requests the controller made during it
	syncWrite float64 // the mirror controller's writes (mirrors, slices, the Link's finalizer)
	// Propagation of single changes: isolated, sustained, and right
	// after the remote API server comes back from an outage.
	props []propagation
	// Steady state: nothing changes. steadyWindow runs from the end of
	// one whole-Link pass to the end of the steadyPasses-th after it; the
	// figures are scaled from it to a minute. steadyWritesPerMin are the
	// mirror controller's writes (backbone_mirror_api_writes_total),
	// steadyAllWritesPerMin every POST, PUT, PATCH and DELETE the process
	// sent (rest_client_requests_total): status, Events and Lease renewals
	// too.
	steadyWindow                           time.Duration
	steadyReqsPerMin, steadyWritesPerMin   float64
	steadyAllWritesPerMin, steadyCPUPerMin float64
	peakRSSMiB                             float64
}

// label names the run in the report.
func (m mirrorResult) label() string { return mirrorRun{n: m.services, headless: m.headless}.String() }

// measureMirroring runs, for each size, two fresh clusters: n exported
// Services in east, a `backbone controller` process for west with a Link
// holding the link reader's real, least-privilege credentials, and
// measures the first sync, single changes at a sustained rate and the
// steady state, from the controller's own metrics and /proc.
func measureMirroring(ctx context.Context, dir string, runs []mirrorRun, rate int, changeFor, outage time.Duration) ([]mirrorResult, error) {
	if !testenv.InNetns() {
		return nil, errors.New("mirroring needs the private network namespace (run the bench as root)")
	}
	bin, err := buildBackbone(dir)
	if err != nil {
		return nil, err
	}
	var out []mirrorResult
	for _, run := range runs {
		log.Printf("mirroring %s services", run)
		res, err := mirrorOnce(ctx, filepath.Join(dir, "mirror-"+run.slug()), bin, run, rate, changeFor, outage)
		if err != nil {
			return out, fmt.Errorf("%s services: %w", run, err)
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

func mirrorOnce(ctx context.Context, dir, bin string, run mirrorRun, rate int, changeFor, outage time.Duration) (mirrorResult, error) {
	n := run.n
	res := mirrorResult{services: n, headless: run.headless}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	east, stopEast, err := startCluster(dir, "east")
	if err != nil {
		return res, err
	}
	defer stopEast()
	west, stopWest, err := startCluster(dir, "west")
	if err != nil {
		return res, err
	}
	defer stopWest()
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
	if err := createScaleServices(ctx, east.Client, n, run.headless); err != nil {
		return res, err
	}
	log.Printf("  %s exported services created in east in %s", run, time.Since(began).Round(time.Millisecond))

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
	// The link reaches east's API server through a proxy that can take it
	// away, as a SIGSTOPped API server would: connections hang.
	apiURL, err := url.Parse(east.Config.Host)
	if err != nil {
		return res, err
	}
	apiProxy, err := faultproxy.New("127.0.0.1:0", apiURL.Host)
	if err != nil {
		return res, err
	}
	defer func() { _ = apiProxy.Close() }()
	l, err := link.Generate(ctx, east.Config, cs, link.Options{
		ClusterName: "east", APIServer: "https://" + apiProxy.Addr(), GatewayAddresses: []string{net.JoinHostPort(testenv.NetnsAddr(1), "4143")},
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
	// With leader election, as the install runs it (its Lease renewals are
	// part of the steady state), but without --identity-dir: east has no
	// gateway for the link probe to reach.
	cmd := exec.Command(bin, "controller", "--kubeconfig", west.Kubeconfig, "--cluster-name", "west", "--leader-elect", "--resync", mirrorResync.String(),
		"--admin-address", admin, "--gateway-port-range", "20000-39999", "--egress-port-range", "40000-40999", "--log-level", controllerLogLevel)
	pprofAddr := "127.0.0.1:6060"
	if heapDir != "" {
		cmd.Args = append(cmd.Args, "--pprof-address", pprofAddr)
	}
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
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	defer func() { _ = cmd.Process.Kill(); <-exited }()
	pid := []int{cmd.Process.Pid}

	// First sync: every mirror and slice exists.
	rssLogged := 0.0
	for {
		select {
		case <-exited:
			// A controller that refused its flags or crashed: say so, rather
			// than wait for mirrors that will never come.
			return res, fmt.Errorf("the controller exited during the first sync (%v); its log is %s", exitErr, logf.Name())
		default:
		}
		svcs, err := countMeta(ctx, west.Client, &metav1.PartialObjectMetadataList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceList"}})
		if err != nil {
			return res, err
		}
		sls, err := countMeta(ctx, west.Client, &metav1.PartialObjectMetadataList{TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSliceList"}})
		if err != nil {
			return res, err
		}
		if rss := procStatusMiB(cmd.Process.Pid, "VmRSS:"); rss > rssLogged+20 {
			log.Printf("  first sync at %s: %d mirrors, %d slices, RSS %.0f MiB", time.Since(start).Round(time.Second), svcs, sls, rss)
			rssLogged = rss
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
	log.Printf("  mirrored in %s: %.0f API requests, %.0f writes, %.1f CPU s, %.0f single changes queued (the controller's own writes must not come back as work)",
		res.mirrorAll.Round(time.Millisecond), res.syncReqs, res.syncWrite, res.syncCPU, m.singles)
	saveHeap(pprofAddr, run, "after-first-sync")
	log.Printf("  peak RSS so far (first sync): %.0f MiB", peakRSS(cmd.Process.Pid))

	// Let the follow-up passes (status) settle, then single changes:
	// isolated, then at a sustained rate.
	time.Sleep(3 * time.Second)
	ch, err := newChanger(ctx, east, west, n, run.headless)
	if err != nil {
		return res, err
	}
	defer ch.stop()
	record := func(p propagation, err error) error {
		if err != nil {
			return err
		}
		all, acked := p.all(), p.allAcked()
		log.Printf("  %s: %d changes, p50 %s, p99 %s, max %s, %d not seen; east's write p50 %s; update/create/delete p50 %s/%s/%s; from east's answer p50 %s p99 %s; east's own create p50 %s p99 %s", p.mode, p.changes,
			pct(all, 0.5), pct(all, 0.99), pct(all, 1), p.lost, pct(p.byOp["write"], 0.5), pct(p.byOp["update"], 0.5), pct(p.byOp["create"], 0.5), pct(p.byOp["delete"], 0.5),
			pct(acked, 0.5), pct(acked, 0.99), pct(p.byOp["write create"], 0.5), pct(p.byOp["write create"], 0.99))
		res.props = append(res.props, p)
		return nil
	}
	if err := record(ch.isolated(ctx, 60)); err != nil {
		return res, err
	}
	if err := record(ch.sustained(ctx, rate, changeFor)); err != nil {
		return res, err
	}
	log.Printf("  peak RSS so far (single changes): %.0f MiB", peakRSS(cmd.Process.Pid))

	// Steady state: from the end of a whole-Link pass to the end of the
	// steadyPasses-th after it, so that the window holds that many passes
	// and the resync periods between them whatever a pass takes; a fixed
	// window would hold one pass more or less depending on where it fell.
	time.Sleep(3 * time.Second)
	m, err = scrape(admin)
	if err != nil {
		return res, err
	}
	before, err := awaitPasses(admin, m.passes+1, mirrorResync+time.Minute)
	if err != nil {
		return res, err
	}
	windowStart, cpu0 := time.Now(), cpuSeconds(pid)
	if heapDir != "" {
		// What the steady state spends its CPU on: the window's passes.
		go saveProfile(pprofAddr, fmt.Sprintf("profile?seconds=%d", int((steadyPasses*mirrorResync).Seconds())),
			filepath.Join(heapDir, "controller-"+run.slug()+"-cpu-steady.pb.gz"))
	}
	// No pass ends sooner than a resync period after the previous one:
	// the metrics are read (every passPoll) only near the window's end.
	time.Sleep(steadyPasses*mirrorResync - 2*time.Second)
	after, err := awaitPasses(admin, before.passes+steadyPasses, 2*time.Minute)
	if err != nil {
		return res, err
	}
	res.steadyWindow = time.Since(windowStart)
	cpu := cpuSeconds(pid) - cpu0
	perMin := float64(time.Minute) / float64(res.steadyWindow)
	res.steadyReqsPerMin = (after.requests - before.requests) * perMin
	res.steadyWritesPerMin = (after.writes - before.writes) * perMin
	res.steadyAllWritesPerMin = (after.allWrites - before.allWrites) * perMin
	res.steadyCPUPerMin = cpu * perMin
	log.Printf("  steady (%d passes in %s): %.1f requests/min, %.1f mirror writes/min, %.1f API writes/min (Lease renewals included), %.2f CPU s/min",
		steadyPasses, res.steadyWindow.Round(100*time.Millisecond), res.steadyReqsPerMin, res.steadyWritesPerMin, res.steadyAllWritesPerMin, res.steadyCPUPerMin)
	log.Printf("  peak RSS so far (steady state): %.0f MiB", peakRSS(cmd.Process.Pid))

	// The remote API server is away (hung connections) for outage; the
	// changes made right after it returns are timed.
	if outage > 0 {
		apiProxy.SetStalled(true)
		time.Sleep(outage)
		apiProxy.SetStalled(false)
		p, err := ch.isolated(ctx, 3)
		p.mode = fmt.Sprintf("right after a %s outage", outage)
		if err := record(p, err); err != nil {
			return res, err
		}
	}
	res.peakRSSMiB = peakRSS(cmd.Process.Pid)
	log.Printf("  peak RSS %.0f MiB", res.peakRSSMiB)
	saveHeap(pprofAddr, run, "at-end")
	return res, nil
}

// saveProfile writes the pprof profile at path (relative to
// /debug/pprof/) into file.
func saveProfile(addr, path, file string) {
	resp, err := http.Get("http://" + addr + "/debug/pprof/" + path)
	if err != nil {
		log.Printf("  profile %s: %v", path, err)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err == nil {
		err = os.WriteFile(file, data, 0o644)
	}
	if err != nil {
		log.Printf("  profile %s: %v", path, err)
		return
	}
	log.Printf("  profile %s: %s", path, file)
}

// heapDir, if set, receives the mirroring controller's heap profiles
// (-mirror-heap-dir).
var heapDir string

// saveHeap writes the controller's heap profile (after a GC) into heapDir
// and logs the Go heap figures next to the process's RSS.
func saveHeap(addr string, run mirrorRun, when string) {
	if heapDir != "" {
		saveProfile(addr, "heap?gc=1", filepath.Join(heapDir, "controller-"+run.slug()+"-heap-"+when+".pb.gz"))
	}
}

func createScaleServices(ctx context.Context, c client.Client, n int, headless bool) error {
	return createParallel(ctx, c, n, func(i int) client.Object { return scaleService(fmt.Sprintf("svc-%05d", i), headless) })
}

func scaleService(name string, headless bool) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "scale",
			Labels: map[string]string{v1alpha1.ExportedLabel: "true", "app": "scale"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}},
	}
	if headless {
		s.Spec.ClusterIP = corev1.ClusterIPNone
	}
	return s
}

func countMeta(ctx context.Context, c client.Client, list *metav1.PartialObjectMetadataList) (int, error) {
	if err := c.List(ctx, list, client.InNamespace("scale"), client.MatchingLabels{v1alpha1.MirroredFromLabel: "east"}); err != nil {
		return 0, err
	}
	return len(list.Items), nil
}

// changer makes single changes in east — updates of existing Services,
// creations of new ones, deletions of those — and times each from its
// write (the API round trip included) to the mirror's event reaching a
// watch on west: Added, Modified with the change, Deleted.
type changer struct {
	east     *testenv.Cluster
	n        int
	headless bool // creations are headless Services
	mu       sync.Mutex
	sent     map[string]time.Time // "op/mirror[#seq]" → when written
	acked    map[string]time.Time // → when east's API server answered the write
	seenAt   map[string]time.Time // → when the mirror's event reached west's watch
	took     map[string][]time.Duration
	created  []string        // remote names whose mirror was seen
	writes   []time.Duration // how long east's API server took for each write
	// writesByOp are the same by operation: a creation costs the API
	// server a cluster IP, the part of its path the mirror's creation in
	// west pays again.
	writesByOp map[string][]time.Duration
	slowest    []timedChange // every change seen, for the slowest in the log
	next       int
	stop       func()
}

var ops = []string{"update", "create", "delete"}

func newChanger(ctx context.Context, east, west *testenv.Cluster, n int, headless bool) (*changer, error) {
	wc, err := client.NewWithWatch(west.Config, client.Options{Scheme: west.Client.Scheme()})
	if err != nil {
		return nil, err
	}
	var list corev1.ServiceList
	if err := wc.List(ctx, &list, client.InNamespace("scale"), client.Limit(1)); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	w, err := wc.Watch(wctx, &corev1.ServiceList{}, client.InNamespace("scale"), client.MatchingLabels{v1alpha1.MirroredFromLabel: "east"},
		&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
	if err != nil {
		cancel()
		return nil, err
	}
	c := &changer{east: east, n: n, headless: headless, sent: map[string]time.Time{}, acked: map[string]time.Time{}, seenAt: map[string]time.Time{},
		took: map[string][]time.Duration{}, writesByOp: map[string][]time.Duration{}, stop: func() { w.Stop(); cancel() }}
	go func() {
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*corev1.Service)
			if !ok {
				continue
			}
			seen := time.Now()
			remote := s.Annotations[v1alpha1.RemoteNameAnnotation]
			var key string
			switch ev.Type {
			case watch.Added:
				key = "create/" + remote
			case watch.Modified:
				key = "update/" + remote + "#" + s.Labels["bench-seq"]
			case watch.Deleted:
				key = "delete/" + remote
			}
			c.mu.Lock()
			if t, ok := c.sent[key]; ok {
				op, _, _ := strings.Cut(key, "/")
				c.took[op] = append(c.took[op], seen.Sub(t))
				c.seenAt[key] = seen
				c.slowest = append(c.slowest, timedChange{key, seen.Sub(t), len(c.slowest) + 1})
				delete(c.sent, key)
				if op == "create" {
					c.created = append(c.created, remote)
				}
			}
			c.mu.Unlock()
		}
	}()
	return c, nil
}

// change makes the i-th change: update, create, delete in turn (a
// delete removes the oldest Service whose creation was seen mirrored;
// without one it updates). It returns the key it waits for.
func (c *changer) change(ctx context.Context, i int) (string, error) {
	op := ops[i%len(ops)]
	c.mu.Lock()
	if op == "delete" && len(c.created) == 0 {
		op = "update"
	}
	var victim string
	if op == "delete" {
		victim, c.created = c.created[0], c.created[1:]
	}
	c.next++
	seq := c.next
	c.mu.Unlock()
	key, write := "", func() error { return nil }
	switch op {
	case "update":
		var s corev1.Service
		name := fmt.Sprintf("svc-%05d", (seq*7919)%c.n)
		if err := c.east.Client.Get(ctx, client.ObjectKey{Namespace: "scale", Name: name}, &s); err != nil {
			return "", err
		}
		s.Labels["bench-seq"] = strconv.Itoa(seq)
		key, write = "update/"+name+"#"+strconv.Itoa(seq), func() error { return c.east.Client.Update(ctx, &s) }
	case "create":
		name := fmt.Sprintf("new-%05d", seq)
		key, write = "create/"+name, func() error { return c.east.Client.Create(ctx, scaleService(name, c.headless)) }
	case "delete":
		key, write = "delete/"+victim, func() error {
			return c.east.Client.Delete(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "scale", Name: victim}})
		}
	}
	c.mu.Lock()
	c.sent[key] = time.Now()
	c.mu.Unlock()
	began := time.Now()
	err := write()
	c.mu.Lock()
	c.acked[key] = time.Now()
	c.writes = append(c.writes, time.Since(began))
	c.writesByOp[op] = append(c.writesByOp[op], time.Since(began))
	c.mu.Unlock()
	return key, err
}

// wait waits until key was seen (false after timeout).
func (c *changer) wait(key string, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		c.mu.Lock()
		_, pending := c.sent[key]
		c.mu.Unlock()
		if !pending {
			return true
		}
	}
	return false
}

// collect returns the times measured since the last collect, by
// operation, and how many changes were never seen (within 30 s).
func (c *changer) collect() (map[string][]time.Duration, int) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		c.mu.Lock()
		pending := len(c.sent)
		c.mu.Unlock()
		if pending == 0 {
			break
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	took, lost := c.took, len(c.sent)
	took["write"] = c.writes
	for op, ds := range c.writesByOp {
		took["write "+op] = ds
	}
	// From east's answer to the mirror's event: the propagation itself,
	// without east's own write (an event may even arrive first: 0).
	for key, ack := range c.acked {
		if seen, ok := c.seenAt[key]; ok {
			op, _, _ := strings.Cut(key, "/")
			took[ackedOp(op)] = append(took[ackedOp(op)], max(0, seen.Sub(ack)))
		}
	}
	c.took, c.sent, c.writes = map[string][]time.Duration{}, map[string]time.Time{}, nil
	slices.SortFunc(c.slowest, func(a, b timedChange) int { return cmp.Compare(b.took, a.took) })
	for i, tc := range c.slowest[:min(3, len(c.slowest))] {
		log.Printf("    slowest #%d: %s in %s (seq %d of this run)", i+1, tc.key, tc.took.Round(100*time.Microsecond), tc.seq)
	}
	c.acked, c.seenAt, c.writesByOp, c.slowest = map[string]time.Time{}, map[string]time.Time{}, map[string][]time.Duration{}, nil
	return took, lost
}

// timedChange is one change seen on west.
type timedChange struct {
	key  string
	took time.Duration
	seq  int
}

// propagation is one way of changing: its times by operation.
type propagation struct {
	mode    string
	changes int
	lost    int
	byOp    map[string][]time.Duration
}

func (p propagation) all() []time.Duration {
	var all []time.Duration
	for _, op := range ops {
		all = append(all, p.byOp[op]...)
	}
	slices.Sort(all)
	return all
}

// ackedOp names the times of op measured from east's answer.
func ackedOp(op string) string { return "acked " + op }

// allAcked is all() measured from east's answer to each write.
func (p propagation) allAcked() []time.Duration {
	var all []time.Duration
	for _, op := range ops {
		all = append(all, p.byOp[ackedOp(op)]...)
	}
	slices.Sort(all)
	return all
}

// pct is the p-quantile of ds by nearest rank, as the path latencies'.
func pct(ds []time.Duration, p float64) time.Duration { return nearestRank(ds, p) }

// isolated makes count changes one at a time, each after the previous
// one was seen.
func (c *changer) isolated(ctx context.Context, count int) (propagation, error) {
	for i := range count {
		key, err := c.change(ctx, i)
		if err != nil {
			return propagation{}, err
		}
		c.wait(key, 10*time.Second)
		time.Sleep(100 * time.Millisecond)
	}
	byOp, lost := c.collect()
	return propagation{mode: "isolated", changes: count, lost: lost, byOp: byOp}, nil
}

// sustained makes changes at rate per second for d.
func (c *changer) sustained(ctx context.Context, rate int, d time.Duration) (propagation, error) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	count := 0
	for end := time.Now().Add(d); time.Now().Before(end); count++ {
		<-tick.C
		if _, err := c.change(ctx, count); err != nil {
			return propagation{}, err
		}
	}
	byOp, lost := c.collect()
	return propagation{mode: fmt.Sprintf("%d/s for %s", rate, d), changes: count, lost: lost, byOp: byOp}, nil
}

type controllerMetrics struct {
	// requests: every API request of the process; writes: the mirror
	// controller's writes; allWrites: the requests that write (POST, PUT,
	// PATCH, DELETE), whoever in the process sent them.
	requests, writes, allWrites float64
	// passes are the mirror controller's reconciles of a Link: whole-Link
	// passes, a resync period apart when nothing changes.
	passes float64
	// singles are the single changes queued (remote events, and local ones
	// that are not the controller's own writes).
	singles float64
}

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
	// sumWhere sums the series of name whose label has a value in values.
	sumWhere := func(name, label string, values ...string) float64 {
		var t float64
		if f, ok := families[name]; ok {
			for _, mm := range f.GetMetric() {
				for _, l := range mm.GetLabel() {
					if l.GetName() == label && slices.Contains(values, l.GetValue()) {
						t += mm.GetCounter().GetValue()
					}
				}
			}
		}
		return t
	}
	m.requests = sum("rest_client_requests_total")
	m.writes = sum("backbone_mirror_api_writes_total")
	m.allWrites = sumWhere("rest_client_requests_total", "method", writeVerbs...)
	m.passes = sumWhere("controller_runtime_reconcile_total", "controller", "mirror")
	m.singles = sumWhere("workqueue_adds_total", "name", "mirror_service")
	if _, ok := families["rest_client_requests_total"]; !ok {
		return m, errors.New("the controller does not export rest_client_requests_total")
	}
	return m, nil
}

// writeVerbs are the HTTP methods of client-go's requests that write.
var writeVerbs = []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// passPoll is how often awaitPasses reads the controller's metrics.
const passPoll = 500 * time.Millisecond

// awaitPasses reads the controller's metrics every passPoll until its
// whole-Link passes number at least passes, and returns those metrics.
func awaitPasses(admin string, passes float64, within time.Duration) (controllerMetrics, error) {
	for deadline := time.Now().Add(within); ; time.Sleep(passPoll) {
		m, err := scrape(admin)
		if err != nil {
			return m, err
		}
		if m.passes >= passes {
			return m, nil
		}
		if time.Now().After(deadline) {
			return m, fmt.Errorf("waiting for whole-Link pass %.0f of the mirror controller: %.0f after %s (a resync every %s)", passes, m.passes, within, mirrorResync)
		}
	}
}

// peakRSS is the process's high-water resident set (VmHWM), in MiB.
func peakRSS(pid int) float64 { return procStatusMiB(pid, "VmHWM:") }

// procStatusMiB is a kB field of /proc/<pid>/status, in MiB.
func procStatusMiB(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
