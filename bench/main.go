// Command bench measures backbone's cross-cluster path against the peers
// platform teams run today — a pair of nginx stream proxies and a pair of
// HAProxy proxies with mTLS between them — in the same run, on loopback,
// and writes a table of ratios and absolute figures. See
// docs/benchmarks.md.
//
//	go run ./bench -out bench/results.md
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/backbone-mesh/backbone/internal/faultproxy"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

type options struct {
	out       string
	repeat    int
	duration  time.Duration
	rates     []int
	peers     []string
	wanOneWay time.Duration
	bulkBytes int64
	sections  map[string]bool
	perfDir   string // profiles of the proxies under load, if set
	// baseline is a backbone binary built from another commit: its own
	// pair of gateways joins the paths, so a change is measured against
	// the code before it in the same run, apart from the machine's state.
	baseline string
	// gatewayProcs is the GOMAXPROCS of backbone's gateways.
	gatewayProcs int
	// Mirroring at scale.
	mirrorSizes []int
	// mirrorHeadless are sizes mirrored again with headless Services.
	mirrorHeadless []int
	mirrorRate     int
	mirrorFor      time.Duration
	outage         time.Duration
	keep           bool
}

// path is one way from the client to the backend.
type path struct {
	name     string
	httpAddr string // where the client sends HTTP
	bulkAddr string // where bulk streams go (to the sink)
	wanAddr  string // HTTP, with the WAN-like latency between the two sides
	pids     []int  // the proxy processes, for CPU accounting
	stop     func()
	// probe measures one link probe (backbone only).
	probe func() (time.Duration, error)
}

// startCluster starts a cluster that is stopped on return of stop or,
// if the bench is interrupted, before it exits: an interrupted run leaves
// no API server behind.
func startCluster(dir, name string) (*testenv.Cluster, func(), error) {
	c, err := testenv.StartCluster(dir, name)
	if err != nil {
		return nil, nil, err
	}
	stop := sync.OnceFunc(func() { _ = c.Stop() })
	clustersMu.Lock()
	clusters = append(clusters, stop)
	clustersMu.Unlock()
	return c, stop, nil
}

var (
	clustersMu sync.Mutex
	clusters   []func()
)

func stopClustersOnSignal() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		log.Printf("%s: stopping the clusters", s)
		clustersMu.Lock()
		for _, stop := range clusters {
			stop()
		}
		clustersMu.Unlock()
		os.Exit(130)
	}()
}

func main() {
	ctrllog.SetLogger(logr.Discard()) // the clients' own logs are not the bench's output
	stopClustersOnSignal()
	// Backbone's path runs real API servers, which refuse loopback
	// endpoints: the whole bench runs in a private network namespace.
	if testenv.EnterNetns() {
		backendHost = testenv.NetnsAddr(10)
	} else {
		log.Print("no private network namespace (not root): measuring the peers only")
	}
	var o options
	var rates, peers, sections, sizes, headless string
	flag.StringVar(&o.out, "out", "bench/results.md", "file to write the results to")
	flag.IntVar(&o.repeat, "repeat", 5, "rounds of every measurement over every path in turn; medians are reported")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of each fixed-rate and saturation run")
	flag.StringVar(&rates, "rates", "1000,10000", "fixed request rates (req/s)")
	flag.StringVar(&peers, "peers", "nginx,haproxy", "peers to compare with (nginx, haproxy)")
	flag.DurationVar(&o.wanOneWay, "wan-latency", 30*time.Millisecond, "one-way latency between the clusters for the new-connection test")
	flag.Int64Var(&o.bulkBytes, "bulk-bytes", 1<<30, "bytes of the single-stream bulk transfer")
	flag.StringVar(&o.baseline, "baseline", "", "a backbone binary built from another commit (git worktree add /tmp/base REF && cd /tmp/base && go build -o /tmp/backbone-base ./cmd/backbone): its own pair of gateways is measured as the path \"backbone, baseline\", in turns with the others")
	flag.IntVar(&o.gatewayProcs, "gateway-procs", 1, "GOMAXPROCS of backbone's gateways: the install sets it from the gateway's CPU request, rounded up (200m by default: 1); 0 leaves Go's default (one per core)")
	flag.StringVar(&o.perfDir, "perf-dir", "", "record perf profiles of the proxies during saturation and the single-stream bulk transfer into this directory (perturbs the figures: a diagnostic, not a measurement)")
	flag.StringVar(&sections, "sections", "paths,mirroring,apiserver", "what to measure: paths (latency, throughput, new connections against the peers), mirroring (at scale), apiserver (what an API server alone accepts: the floor under mirroring's first sync)")
	flag.StringVar(&sizes, "mirror-services", "1000,5000,10000", "numbers of exported services to mirror")
	flag.StringVar(&headless, "mirror-headless-services", "10000", "numbers of exported headless services to mirror as well (their mirrors need no cluster IP: the controller's own pace); empty for none")
	flag.IntVar(&o.mirrorRate, "mirror-rate", 10, "single changes per second while sustained propagation is measured")
	flag.BoolVar(&o.keep, "keep", false, "keep the working directory (clusters' data, processes' logs)")
	flag.StringVar(&controllerLogLevel, "mirror-controller-log-level", controllerLogLevel, "--log-level of the mirroring controller (debug logs every single change's time)")
	flag.StringVar(&heapDir, "mirror-heap-dir", "", "save the mirroring controller's heap profiles (after the first sync, at the end) into this directory")
	flag.DurationVar(&o.outage, "mirror-outage", 30*time.Second, "how long the remote API server is away before changes are timed (0: no outage)")
	flag.DurationVar(&o.mirrorFor, "mirror-changes-for", 15*time.Second, "how long single changes are made")
	flag.Parse()
	o.rates = positiveInts("-rates", rates)
	o.mirrorSizes = positiveInts("-mirror-services", sizes)
	if headless != "" {
		o.mirrorHeadless = positiveInts("-mirror-headless-services", headless)
	}
	o.sections = map[string]bool{}
	for _, s := range strings.Split(sections, ",") {
		if s != "paths" && s != "mirroring" && s != "apiserver" {
			log.Fatalf("-sections: %q is none of paths, mirroring, apiserver", s)
		}
		o.sections[s] = true
	}
	o.peers = strings.Split(peers, ",")
	if err := run(context.Background(), o); err != nil {
		log.Fatal(err)
	}
}

func positiveInts(flag, list string) []int {
	var out []int
	for _, r := range strings.Split(list, ",") {
		var n int
		if _, err := fmt.Sscan(r, &n); err != nil || n <= 0 {
			log.Fatalf("%s: %q is not a positive number", flag, r)
		}
		out = append(out, n)
	}
	return out
}

// backendHost is where the backends listen: an address the API servers
// accept in EndpointSlices when the bench runs in its namespace.
var backendHost = "127.0.0.1"

func listenBackend() net.Listener {
	l, err := net.Listen("tcp", net.JoinHostPort(backendHost, "0"))
	if err != nil {
		log.Fatal(err)
	}
	return l
}

func listen() net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	return l
}

func freeAddr() string {
	l := listen()
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

func run(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "backbone-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		log.Printf("keeping %s (logs of every process)", dir)
	} else {
		defer func() { _ = os.RemoveAll(dir) }()
	}
	r := &report{machine: machine(), opts: o}
	if o.sections["paths"] {
		if err := measurePaths(ctx, dir, o, r); err != nil {
			return err
		}
	}
	if o.sections["mirroring"] {
		var err error
		var runs []mirrorRun
		for _, n := range o.mirrorSizes {
			runs = append(runs, mirrorRun{n: n})
		}
		for _, n := range o.mirrorHeadless {
			runs = append(runs, mirrorRun{n: n, headless: true})
		}
		if r.mirroring, err = measureMirroring(ctx, dir, runs, o.mirrorRate, o.mirrorFor, o.outage); err != nil {
			return err
		}
	}
	if o.sections["apiserver"] {
		a, err := measureAPIServer(ctx, dir, slices.Max(o.mirrorSizes))
		if err != nil {
			return err
		}
		r.apiServer = &a
	}
	return r.write(o.out)
}

func measurePaths(ctx context.Context, dir string, o options, r *report) error {
	if err := peerPKI(dir); err != nil {
		return err
	}
	httpL, sinkL := listenBackend(), listenBackend()
	srv := httpBackend(httpL)
	defer func() { _ = srv.Close() }()
	sinkBackend(sinkL)
	defer func() { _ = sinkL.Close() }()

	paths := []*path{{name: "direct", httpAddr: httpL.Addr().String(), bulkAddr: sinkL.Addr().String(), stop: func() {}}}
	for _, kind := range o.peers {
		p, err := peerPath(kind, dir, httpL.Addr().String(), sinkL.Addr().String(), o.wanOneWay)
		if err != nil {
			return err
		}
		defer p.stop()
		paths = append(paths, p)
	}
	bb, err := backbonePaths(ctx, dir, httpL.Addr().String(), sinkL.Addr().String(), o.wanOneWay, o.baseline, o.gatewayProcs)
	if err != nil {
		log.Printf("backbone's path is not measured: %v", err)
	} else {
		defer bb[0].stop()
		paths = append(paths, bb...)
	}
	for _, p := range paths {
		var err error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if err = get(nil, "http://"+p.httpAddr+"/"); err == nil {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("%s path does not answer: %w", p.name, err)
		}
	}

	// The floor under the new-connection figures: one request on a
	// connection already open through the same latency proxy, measured
	// in every round beside the paths.
	link, err := faultproxy.New("127.0.0.1:0", httpL.Addr().String())
	if err != nil {
		return err
	}
	defer func() { _ = link.Close() }()
	link.SetLatency(o.wanOneWay)

	rounds := make([][]round, len(paths))
	for i := range o.repeat {
		if d, err := linkRoundTrips(link.Addr(), 5); err != nil {
			log.Printf("the simulated link's round trip: %v", err)
		} else {
			r.linkRT = append(r.linkRT, d...)
		}
		log.Printf("round %d of %d: latency at fixed rates, every path in turn", i+1, o.repeat)
		lat := measureLatency(ctx, paths, o)
		for j, p := range paths {
			log.Printf("round %d of %d: measuring %s", i+1, o.repeat, p.name)
			rounds[j] = append(rounds[j], measureRound(ctx, p, o, lat[j]))
		}
	}
	for j, p := range paths {
		r.add(combine(p.name, o.rates, rounds[j]))
		if p.probe != nil {
			r.probe, r.tcpRTT = measureProbe(p.probe)
		}
	}
	return nil
}

// peerPath starts one pair of proxies for HTTP and one for bulk, plus the
// WAN-latency variant for the new-connection test.
func peerPath(kind, dir, httpBackend, sinkBackend string, wan time.Duration) (*path, error) {
	var pairs []*pair
	var proxies []*faultproxy.Proxy
	mk := func(backend string, latency time.Duration) (string, error) {
		west, east := freeAddr(), freeAddr()
		via := east
		if latency > 0 {
			fp, err := faultproxy.New("127.0.0.1:0", east)
			if err != nil {
				return "", err
			}
			fp.SetLatency(latency)
			proxies = append(proxies, fp)
			via = fp.Addr()
		}
		p, err := startPair(kind, dir, west, east, via, backend)
		if err != nil {
			return "", err
		}
		pairs = append(pairs, p)
		return west, nil
	}
	httpAddr, err := mk(httpBackend, 0)
	if err != nil {
		return nil, err
	}
	bulkAddr, err := mk(sinkBackend, 0)
	if err != nil {
		return nil, err
	}
	wanAddr, err := mk(httpBackend, wan)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range pairs {
		pids = append(pids, p.pids()...)
	}
	return &path{
		name: kind + " pair", httpAddr: httpAddr, bulkAddr: bulkAddr, wanAddr: wanAddr,
		pids: pids,
		stop: func() {
			for _, p := range pairs {
				p.stop()
			}
			for _, fp := range proxies {
				_ = fp.Close()
			}
		},
	}, nil
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	versions := []string{runtime.Version()}
	for _, c := range [][]string{{"nginx", "-v"}, {"haproxy", "-v"}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err == nil {
			versions = append(versions, strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
		}
	}
	return fmt.Sprintf("%d CPUs (%s), %s/%s; %s", runtime.NumCPU(), cpu, runtime.GOOS, runtime.GOARCH, strings.Join(versions, "; "))
}
