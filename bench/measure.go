package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type rateResult struct {
	rate           int
	p50, p99, p999 time.Duration
	errors         int64
}

type result struct {
	name          string
	rates         []rateResult
	saturationRPS float64
	cpuPer100k    float64
	newConn       time.Duration
	bulkMBps      float64
	bulkCPU       float64
	parallelMBps  float64
	parallelCPU   float64
	// bulkFailed and parallelFailed count the rounds whose transfer
	// failed, left out of the medians above.
	bulkFailed, parallelFailed int
	rounds                     []round // what the medians are of
}

func durMedian(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}

// round is one pass of every measurement over one path.
type round struct {
	p50, p99, p999  []time.Duration // per rate
	errors          []int64
	rps, cpuPer100k float64 // cpuPer100k is 0 when nothing was served
	newConn         []time.Duration
	one, oneCPU     float64
	par, parCPU     float64
	// oneFailed and parFailed: the transfer failed (one and par are 0).
	oneFailed, parFailed bool
}

// measureLatency measures every path at each fixed rate, interleaved
// (interleavedRate), and returns each path's round with its latency
// figures filled in.
func measureLatency(ctx context.Context, paths []*path, o options) []round {
	rs := make([]round, len(paths))
	urls := make([]string, len(paths))
	for i, p := range paths {
		urls[i] = "http://" + p.httpAddr + "/"
	}
	for _, rate := range o.rates {
		lats, errs := interleavedRate(ctx, urls, rate, 64, o.duration)
		for i := range paths {
			r := &rs[i]
			r.p50 = append(r.p50, lats[i].percentile(0.5))
			r.p99 = append(r.p99, lats[i].percentile(0.99))
			r.p999 = append(r.p999, lats[i].percentile(0.999))
			r.errors = append(r.errors, errs[i])
		}
	}
	return rs
}

// measureRound measures p once at saturation, for new connections and
// in bulk, into r. The harness runs rounds over every path in turn, so
// that a slow minute of a shared machine falls on all of them rather
// than on the one measured then.
func measureRound(ctx context.Context, p *path, o options, r round) round {
	url := "http://" + p.httpAddr + "/"
	c, _ := measureCPU(p.pids, profiled(o, p, "saturation", func() { r.rps, _ = saturate(ctx, url, 64, o.duration) }))
	if r.rps > 0 {
		r.cpuPer100k = c / (r.rps * o.duration.Seconds()) * 100000
	}
	if p.wanAddr != "" {
		for range 5 {
			d, err := firstByte(p.wanAddr, "bench")
			if err != nil {
				log.Printf("%s: new connection: %v", p.name, err)
				continue
			}
			r.newConn = append(r.newConn, d)
		}
	}
	var err error
	r.oneCPU, _ = measureCPU(p.pids, profiled(o, p, "bulk", func() { r.one, err = bulk(p.bulkAddr, o.bulkBytes, 1) }))
	if err != nil {
		r.oneFailed = true
		log.Printf("%s: bulk: %v", p.name, err)
	}
	r.parCPU, _ = measureCPU(p.pids, func() { r.par, err = bulk(p.bulkAddr, o.bulkBytes, 64) })
	if err != nil {
		r.parFailed = true
		log.Printf("%s: parallel bulk: %v", p.name, err)
	}
	return r
}

// combine reports the medians of a path's rounds.
func combine(name string, rates []int, rounds []round) result {
	res := result{name: name, rounds: rounds}
	for i, rate := range rates {
		var p50s, p99s, p999s []time.Duration
		var errs int64
		for _, r := range rounds {
			p50s, p99s, p999s = append(p50s, r.p50[i]), append(p99s, r.p99[i]), append(p999s, r.p999[i])
			errs += r.errors[i]
		}
		res.rates = append(res.rates, rateResult{rate: rate, p50: durMedian(p50s), p99: durMedian(p99s), p999: durMedian(p999s), errors: errs})
	}
	var rps, cpu, one, oneCPU, par, parCPU []float64
	var nc []time.Duration
	for _, r := range rounds {
		rps = append(rps, r.rps)
		if r.cpuPer100k > 0 {
			cpu = append(cpu, r.cpuPer100k)
		}
		nc = append(nc, r.newConn...)
		// A failed transfer has no throughput: it is counted, not taken
		// for 0 MB/s into the median.
		if r.oneFailed {
			res.bulkFailed++
		} else {
			one, oneCPU = append(one, r.one), append(oneCPU, r.oneCPU)
		}
		if r.parFailed {
			res.parallelFailed++
		} else {
			par, parCPU = append(par, r.par), append(parCPU, r.parCPU)
		}
	}
	res.saturationRPS, res.cpuPer100k = median(rps), median(cpu)
	if len(nc) > 0 {
		res.newConn = durMedian(nc)
	}
	res.bulkMBps, res.bulkCPU = median(one), median(oneCPU)
	res.parallelMBps, res.parallelCPU = median(par), median(parCPU)
	return res
}

type report struct {
	machine string
	opts    options
	results []result
	// probe is the link probe's median round trip; tcpRTT a bare TCP
	// round trip on the same loopback, for its overhead.
	probe, tcpRTT time.Duration
	// linkRT: round trips of the simulated WAN link itself, the floor
	// under the new-connection figures.
	linkRT    []time.Duration
	mirroring []mirrorResult
	apiServer *apiServerResult
}

// measureProbe times 200 link probes (GET /ready over the pooled mTLS
// connection, as the controller sends them) and 200 one-byte TCP echoes.
func measureProbe(probe func() (time.Duration, error)) (time.Duration, time.Duration) {
	var ps, rs []time.Duration
	for range 200 {
		if d, err := probe(); err == nil {
			ps = append(ps, d)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return durMedian(ps), 0
	}
	defer func() { _ = l.Close() }()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(c, c)
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return durMedian(ps), 0
	}
	defer func() { _ = c.Close() }()
	buf := make([]byte, 1)
	for range 200 {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			break
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			break
		}
		rs = append(rs, time.Since(start))
	}
	return durMedian(ps), durMedian(rs)
}

func (r *report) add(res result) { r.results = append(r.results, res) }

// linkRoundTrips opens a keep-alive connection to addr (an HTTP backend
// behind the latency proxy), lets a first request cross, then times n
// requests from writing to the answer's first byte.
func linkRoundTrips(addr string, n int) ([]time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	br := bufio.NewReader(c)
	var out []time.Duration
	for i := range n + 1 {
		start := time.Now()
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
			return nil, err
		}
		if _, err := br.Peek(1); err != nil {
			return nil, err
		}
		took := time.Since(start)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if i > 0 { // the first one also paid the link's handshake
			out = append(out, took)
		}
	}
	return out, nil
}

// bulkFigure formats a median of the rounds whose bulk transfer
// completed, saying how many of all rounds failed.
func bulkFigure(format string, median float64, failed, rounds int) string {
	switch {
	case failed == 0:
		return fmt.Sprintf(format, median)
	case failed >= rounds:
		return fmt.Sprintf("– (all %d failed)", rounds)
	default:
		return fmt.Sprintf(format+" (%d of %d failed)", median, failed, rounds)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/1e6) }

func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func (r *report) write(path string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# backbone benchmark results\n\nMachine: %s  \nRun: %s, %d repeats of %s, medians reported.  \n%s\n\n", r.machine, time.Now().UTC().Format(time.RFC3339), r.opts.repeat, r.opts.duration, procsLine(r.opts.gatewayProcs))
	if len(r.results) > 0 {
		r.writePaths(&b)
	}
	if len(r.mirroring) > 0 {
		r.writeMirroring(&b)
	}
	if r.apiServer != nil {
		r.writeAPIServer(&b)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(b.String())
	return nil
}

func (r *report) writeMirroring(b *strings.Builder) {
	b.WriteString("\n## Mirroring at scale\n\nTwo fresh clusters per size; n exported Services in east; a `backbone controller` process for west with the link reader's real credentials, reaching east's API server through a proxy that can take it away. " +
		"The controller runs with `--leader-elect`, as installed, but without `--identity-dir` (no link probe: east has no gateway). " +
		"First sync: from the controller's start to every mirror Service and EndpointSlice existing. " +
		fmt.Sprintf("Steady state, nothing changing: from the end of one whole-Link pass to the end of the %d-th after it (a pass %s after the previous one ended), ", steadyPasses, mirrorResync) +
		"the window's length given, its counts scaled to a minute. " +
		"Requests and writes are the controller's own counters: requests every `rest_client_requests_total`; writes `backbone_mirror_api_writes_total` (the mirror controller's writes); " +
		"all API writes the POST, PUT, PATCH and DELETE requests of `rest_client_requests_total`, status, Events and the leader-election Lease renewals (one every 2 s) included; one run per size.\n\n")
	b.WriteString("| services | first sync | API requests | writes | CPU s | steady window | steady requests/min | steady writes/min | steady all API writes/min | steady CPU s/min | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, m := range r.mirroring {
		fmt.Fprintf(b, "| %s | %.1f s | %.0f | %.0f | %.1f | %d passes, %.1f s | %.1f | %.1f | %.1f | %.2f | %.0f |\n",
			m.label(), m.mirrorAll.Seconds(), m.syncReqs, m.syncWrite, m.syncCPU, steadyPasses, m.steadyWindow.Seconds(),
			m.steadyReqsPerMin, m.steadyWritesPerMin, m.steadyAllWritesPerMin, m.steadyCPUPerMin, m.peakRSSMiB)
	}
	b.WriteString("\nSingle-change propagation: updates of existing Services, creations and deletions in turn, each timed from its write to east (the API round trip included) " +
		"to the mirror's event (Modified with the change, Added, Deleted) reaching a watch on west. Isolated: each change after the previous one was seen. " +
		"After an outage: east's API server unreachable (connections hang) for the time given, then changes made at once.\n\n")
	b.WriteString("East's write p50 is how long east's API server took to accept the change itself (part of every figure before it): the API servers' own share of the path. " +
		"The next two columns time the same changes from east's answer to the write instead of from its start, i.e. without east's own write; " +
		"the last is east's own creations (a Service with a cluster IP, which the mirror's creation in west costs again).\n\n")
	b.WriteString("| services | changes | count | p50 ms | p99 ms | max ms | update p50 | create p50 | delete p50 | not seen | east's write p50 ms | from east's answer: p50 ms | p99 ms | east's creates p50 / p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, m := range r.mirroring {
		for _, p := range m.props {
			all, acked := p.all(), p.allAcked()
			fmt.Fprintf(b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %d | %s | %s | %s | %s / %s |\n", m.label(), p.mode, p.changes,
				ms(pct(all, 0.5)), ms(pct(all, 0.99)), ms(pct(all, 1)), ms(pct(p.byOp["update"], 0.5)), ms(pct(p.byOp["create"], 0.5)), ms(pct(p.byOp["delete"], 0.5)), p.lost,
				ms(pct(p.byOp["write"], 0.5)), ms(pct(acked, 0.5)), ms(pct(acked, 0.99)), ms(pct(p.byOp["write create"], 0.5)), ms(pct(p.byOp["write create"], 0.99)))
		}
	}
}

func (r *report) writePaths(b *strings.Builder) {
	var direct *result
	for i := range r.results {
		if r.results[i].name == "direct" {
			direct = &r.results[i]
		}
	}
	for ri, rate := range r.opts.rates {
		fmt.Fprintf(b, "## Latency at %d req/s (1 KiB responses, keep-alive, 64 connections)\n\n| path | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | errors |\n|---|---|---|---|---|---|---|---|\n", rate)
		for _, res := range r.results {
			rr := res.rates[ri]
			added := func(d, base time.Duration) string {
				if direct == nil || res.name == "direct" {
					return "–"
				}
				return ms(d - base)
			}
			var d rateResult
			if direct != nil {
				d = direct.rates[ri]
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %d |\n", res.name, ms(rr.p50), ms(rr.p99), ms(rr.p999), added(rr.p50, d.p50), added(rr.p99, d.p99), added(rr.p999, d.p999), rr.errors)
		}
		b.WriteString("\n")
	}
	b.WriteString("## Saturation, new connections across a WAN-like link, bulk\n\n")
	fmt.Fprintf(b, "| path | req/s at saturation | proxy CPU s per 100k req | connect→first byte, %s one way | 1 stream MB/s | CPU s | 64 streams MB/s | CPU s |\n|---|---|---|---|---|---|---|---|\n", r.opts.wanOneWay)
	for _, res := range r.results {
		nc := "–"
		if res.newConn > 0 {
			nc = ms(res.newConn) + " ms"
		}
		rounds := len(res.rounds)
		fmt.Fprintf(b, "| %s | %.0f | %.2f | %s | %s | %s | %s | %s |\n", res.name, res.saturationRPS, res.cpuPer100k, nc,
			bulkFigure("%.0f", res.bulkMBps, res.bulkFailed, rounds), bulkFigure("%.2f", res.bulkCPU, res.bulkFailed, rounds),
			bulkFigure("%.0f", res.parallelMBps, res.parallelFailed, rounds), bulkFigure("%.2f", res.parallelCPU, res.parallelFailed, rounds))
	}
	b.WriteString("\nBulk figures are medians of the rounds whose transfer completed; a failed transfer is counted beside them, not taken for 0 MB/s.\n")
	if floor := durMedian(r.linkRT); floor > 0 {
		fmt.Fprintf(b, "\nThe simulated link itself: one request on a connection already open through the same latency proxy, straight to the backend: median %s ms of %d (the floor of one round trip on this machine).", ms(floor), len(r.linkRT))
		for _, res := range r.results {
			if res.newConn > 0 {
				fmt.Fprintf(b, " %s: %s ms above one such round trip.", res.name, ms(res.newConn-floor))
			}
		}
		b.WriteString("\n")
	}
	var bb *result
	for i := range r.results {
		if r.results[i].name == "backbone" {
			bb = &r.results[i]
		}
	}
	if bb != nil {
		b.WriteString("\n## Ratios: backbone / peer (lower is better for latency and CPU, higher for throughput)\n\n| peer | added p99 @ first rate | req/s per CPU s | new connection | 1-stream MB/s |\n|---|---|---|---|---|\n")
		for _, res := range r.results {
			if res.name == "backbone" || res.name == "direct" || direct == nil {
				continue
			}
			addedBB := float64(bb.rates[0].p99 - direct.rates[0].p99)
			addedPeer := float64(res.rates[0].p99 - direct.rates[0].p99)
			eff := func(x result) float64 {
				if x.cpuPer100k == 0 {
					return 0
				}
				return 100000 / x.cpuPer100k
			}
			bulkRatio := "–" // no completed transfer on one side
			if bb.bulkMBps > 0 && res.bulkMBps > 0 {
				bulkRatio = ratio(bb.bulkMBps, res.bulkMBps)
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", res.name, ratio(addedBB, addedPeer), ratio(eff(*bb), eff(res)), ratio(float64(bb.newConn), float64(res.newConn)), bulkRatio)
		}
		// The same two ratios round by round: each round measured every
		// path within minutes of the others, so their spread is the
		// machine's.
		b.WriteString("\nRound by round (each round measures the paths' latency in 250 ms turns, then their saturation one after another):\n\n| peer | added p99 @ first rate | req/s per CPU s |\n|---|---|---|\n")
		for _, res := range r.results {
			if res.name == "backbone" || res.name == "direct" || direct == nil {
				continue
			}
			var added, eff []string
			for i := range min(len(bb.rounds), len(res.rounds), len(direct.rounds)) {
				bbR, peerR, dR := bb.rounds[i], res.rounds[i], direct.rounds[i]
				added = append(added, ratio(float64(bbR.p99[0]-dR.p99[0]), float64(peerR.p99[0]-dR.p99[0])))
				eff = append(eff, ratio(peerR.cpuPer100k, bbR.cpuPer100k))
			}
			fmt.Fprintf(b, "| %s | %s | %s |\n", res.name, strings.Join(added, ", "), strings.Join(eff, ", "))
		}
	}
	if r.probe > 0 {
		fmt.Fprintf(b, "\n## Link probe\n\nGET /ready over the pooled mTLS HTTP/2 connection between the gateways, as the controller probes: median %s ms; a bare TCP round trip on the same loopback: %s ms; the probe's overhead: %s ms.\n",
			ms(r.probe), ms(r.tcpRTT), ms(r.probe-r.tcpRTT))
	}
}

// profiled records where the proxies' CPU goes while fn runs, with perf
// (call graphs by frame pointer, which Go keeps), into
// <perf-dir>/<path>-<phase>.perf; without -perf-dir it is fn. Read with
// perf report -i FILE --no-children --sort sym. Only the path's own
// processes are recorded: nginx's workers, its children, are not.
func profiled(o options, p *path, phase string, fn func()) func() {
	if o.perfDir == "" || len(p.pids) == 0 {
		return fn
	}
	return func() {
		pids := make([]string, len(p.pids))
		for i, pid := range p.pids {
			pids[i] = strconv.Itoa(pid)
		}
		out := filepath.Join(o.perfDir, strings.ReplaceAll(p.name, " ", "-")+"-"+phase+".perf")
		cmd := exec.Command("perf", "record", "--quiet", "-F", "999", "-g", "-p", strings.Join(pids, ","), "-o", out)
		if err := cmd.Start(); err != nil {
			log.Printf("%s: perf: %v", p.name, err)
			fn()
			return
		}
		fn()
		_ = cmd.Process.Signal(os.Interrupt)
		if err := cmd.Wait(); err != nil {
			log.Printf("%s: perf: %v", p.name, err)
		}
	}
}

// procsLine says how the proxies were configured for threads.
func procsLine(procs int) string {
	g := "Go's default (one per core)"
	if procs > 0 {
		g = fmt.Sprint(procs)
	}
	return "Threads: backbone's gateways GOMAXPROCS " + g + " (the install sets it from the gateway's CPU request); nginx 2 workers, HAProxy 2 threads."
}
