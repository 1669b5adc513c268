package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/faultproxy"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// The gateway's bounds on a dead link: HTTP/2 pings after 30 s without a
// frame, the connection is dropped 15 s after an unanswered ping, and a
// new stream waits for the peer's answer at most the dial timeout (5 s)
// per attempt. A stream must end within these, with room to spare.
const (
	inFlightBound  = 60 * time.Second
	newStreamBound = 30 * time.Second
)

// openStreams opens n tunnel streams to the echo backend and sends a byte
// on each without half-closing: they stay open until the tunnel ends them.
func openStreams(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for range n {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetDeadline(time.Now().Add(2 * inFlightBound))
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	return conns
}

// inboundStreams is how many tunnel streams the gateway at admin serves now.
func inboundStreams(t *testing.T, admin string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	n := 0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "backbone_gateway_streams_active{") && strings.Contains(line, `direction="inbound"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += int(v)
		}
	}
	return n
}

// waitEnded waits until every stream was ended by the gateway and returns
// how long the slowest took from start, and how many ended with an error
// or EOF (as opposed to running into the test's own deadline).
func waitEnded(conns []net.Conn, start time.Time) (slowest time.Duration, ended int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := io.ReadAll(c) // the echo backend answers nothing before our half-close
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return
			}
			ended++
			slowest = max(slowest, took)
		}()
	}
	wg.Wait()
	return slowest, ended
}

// request sends one HTTP request through the mirror of web.
func request(addr string, timeout time.Duration) error {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err == nil && string(body) != "hello from east via HTTP/1.1" {
		err = fmt.Errorf("answer %q", body)
	}
	return err
}

// reconnected waits for the first request that succeeds after a fault
// was cleared, then requires the next ones to succeed as well.
func reconnected(t *testing.T, addr string) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, newStreamBound, "a request to succeed after the fault", func() bool { return request(addr, 10*time.Second) == nil })
	took := time.Since(start)
	for i := range 20 {
		if err := request(addr, 10*time.Second); err != nil {
			t.Fatalf("request %d after reconnecting: %v", i, err)
		}
	}
	return took
}

// settledGauges reads the gateways' goroutines and fds once two readings a
// second apart agree.
func settledGauges(t *testing.T, admins map[string]string) map[string]map[string]float64 {
	t.Helper()
	read := func() map[string]map[string]float64 {
		out := map[string]map[string]float64{}
		for name, a := range admins {
			out[name] = gatewayGauges(t, a)
		}
		return out
	}
	prev := read()
	var cur map[string]map[string]float64
	waitFor(t, 30*time.Second, "the gateways' goroutines and fds to settle", func() bool {
		time.Sleep(time.Second)
		cur = read()
		same := true
		for name := range admins {
			for _, k := range []string{"go_goroutines", "process_open_fds"} {
				if cur[name][k] != prev[name][k] {
					same = false
				}
			}
		}
		prev = cur
		return same
	})
	return cur
}

// TestLinkFaultsFailFastAndLeakNothing puts a fault proxy on the link from
// west's gateway to east's, then resets it, black-holes it and limits its
// bandwidth while tunnel streams are open. Streams caught by a reset or a
// stall end within the gateway's timeouts (none hangs), a new stream
// during a stall fails within its bound, the pool reconnects once the
// fault is gone, streams through a slow link all complete, a saturated
// link keeps the streams open on it while new ones still get through, and
// afterwards both gateway processes are back to their goroutines and
// open file descriptors.
func TestLinkFaultsFailFastAndLeakNothing(t *testing.T) {
	p := setupGatewayPair(t)
	proxy, err := faultproxy.New(net.JoinHostPort(testenv.NetnsAddr(20), "0"), p.eastGW.inbound)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })

	// West's Link now points at the proxy.
	ctx := context.Background()
	var link v1alpha1.Link
	if err := p.west.Client.Get(ctx, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "east"}, &link); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(proxy.Addr())
	n, _ := strconv.Atoi(port)
	link.Spec.GatewayAddresses = []v1alpha1.GatewayAddress{{Host: host, Port: int32(n)}}
	if err := p.west.Client.Update(ctx, &link); err != nil {
		t.Fatal(err)
	}
	web, echo, sink := p.mirrorAddr["web"], p.mirrorAddr["echo"], p.mirrorAddr["sink"]
	waitFor(t, 30*time.Second, "west to tunnel through the fault proxy", func() bool {
		return request(web, 10*time.Second) == nil && proxy.Accepted() > 0
	})

	admins := map[string]string{"west": p.westGW.admin, "east": p.eastGW.admin}
	base := settledGauges(t, admins)
	for name := range admins {
		t.Logf("%s gateway baseline: %.0f goroutines, %.0f open fds", name, base[name]["go_goroutines"], base[name]["process_open_fds"])
	}

	const streams = 20
	t.Run("a reset ends the streams in flight and the pool reconnects", func(t *testing.T) {
		conns := openStreams(t, echo, streams)
		waitFor(t, 30*time.Second, "the streams to reach east", func() bool { return inboundStreams(t, p.eastGW.admin) >= streams })
		before := proxy.Accepted()
		start := time.Now()
		proxy.ResetAll()
		slowest, ended := waitEnded(conns, start)
		if ended != streams || slowest > inFlightBound {
			t.Fatalf("%d of %d streams ended after the reset, the slowest after %s", ended, streams, slowest)
		}
		took := reconnected(t, web)
		t.Logf("reset: %d of %d streams in flight ended, the slowest %s after the reset; first request through the new connection %s later; %d new link connections",
			ended, streams, slowest.Round(time.Millisecond), took.Round(time.Millisecond), proxy.Accepted()-before)
	})

	t.Run("a black-holed link ends the streams in flight and a new stream fails within its bound", func(t *testing.T) {
		conns := openStreams(t, echo, streams)
		waitFor(t, 30*time.Second, "the streams to reach east", func() bool { return inboundStreams(t, p.eastGW.admin) >= streams })
		before := proxy.Accepted()
		start := time.Now()
		proxy.SetStalled(true)
		// Traffic goes on: a new request arrives while the link is dead.
		newErr := request(web, 2*newStreamBound)
		newTook := time.Since(start)
		slowest, ended := waitEnded(conns, start)
		proxy.SetStalled(false)
		if newErr == nil {
			t.Fatal("a request succeeded through a black-holed link")
		}
		if newTook > newStreamBound {
			t.Errorf("the new request hung for %s (bound %s)", newTook, newStreamBound)
		}
		if ended != streams || slowest > inFlightBound {
			t.Fatalf("%d of %d streams ended during the stall, the slowest after %s", ended, streams, slowest)
		}
		took := reconnected(t, web)
		t.Logf("stall: the new request failed after %s (%v); %d of %d streams in flight ended, the slowest %s after the stall began; after the stall the first request succeeded %s later; %d new link connections",
			newTook.Round(time.Millisecond), newErr, ended, streams, slowest.Round(time.Millisecond), took.Round(time.Millisecond), proxy.Accepted()-before)
	})

	t.Run("streams through a slow link complete, and abandoned ones are cleaned up", func(t *testing.T) {
		// Limited, not saturated: the next subtest saturates it.
		const bandwidth = 1 << 20
		proxy.SetBandwidth(bandwidth)
		proxy.SetLatency(15 * time.Millisecond)
		defer func() { proxy.SetBandwidth(0); proxy.SetLatency(0) }()
		start := time.Now()

		var wg sync.WaitGroup
		errs := make(chan error, 2*streams+1)
		payload := make([]byte, 2<<20)
		_, _ = rand.Read(payload)
		wg.Add(1)
		go func() { // a bulk upload shares the slow link with everything else
			defer wg.Done()
			want := sha256.Sum256(payload)
			c, err := net.Dial("tcp", sink)
			if err != nil {
				errs <- err
				return
			}
			defer func() { _ = c.Close() }()
			_ = c.SetDeadline(time.Now().Add(inFlightBound))
			go func() { _, _ = c.Write(payload); _ = c.(*net.TCPConn).CloseWrite() }()
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(got, want[:]) {
				err = fmt.Errorf("upload checksum %x, want %x", got, want)
			}
			errs <- err
		}()
		for range streams {
			wg.Add(2)
			go func() { defer wg.Done(); errs <- request(web, inFlightBound) }()
			go func() {
				defer wg.Done()
				c, err := net.DialTimeout("tcp", echo, 10*time.Second)
				if err != nil {
					errs <- err
					return
				}
				defer func() { _ = c.Close() }()
				_ = c.SetDeadline(time.Now().Add(inFlightBound))
				_, _ = c.Write([]byte("x"))
				_ = c.(*net.TCPConn).CloseWrite()
				got, err := io.ReadAll(c)
				if err == nil && string(got) != "X" {
					err = fmt.Errorf("echo answered %q", got)
				}
				errs <- err
			}()
		}
		// Callers that give up half-way: their streams must go too.
		abandoned := openStreams(t, sink, streams)
		for _, c := range abandoned {
			_, _ = c.Write(payload[:8<<10])
			_ = c.Close()
		}
		wg.Wait()
		close(errs)
		failed := 0
		for err := range errs {
			if err != nil {
				failed++
				t.Errorf("through the slow link: %v", err)
			}
		}
		t.Logf("bandwidth %d KiB/s, 15 ms each way: 2 MiB upload, %d requests and %d echo streams in %s, %d failed; %d streams abandoned half-way",
			bandwidth>>10, streams, streams, time.Since(start).Round(time.Millisecond), failed, streams)
	})

	t.Run("a saturated link keeps its streams and still opens new ones", func(t *testing.T) {
		// 256 KiB/s for the whole link, shared by its connections, and an
		// upload that keeps megabytes queued on the pooled connection: a
		// new stream's CONNECT would wait behind them for longer than the
		// dial timeout.
		const bandwidth = 256 << 10
		healthy := openStreams(t, echo, streams)
		waitFor(t, 30*time.Second, "the streams to reach east", func() bool { return inboundStreams(t, p.eastGW.admin) >= streams })
		proxy.SetLinkBandwidth(bandwidth)
		proxy.SetLatency(15 * time.Millisecond)
		defer func() { proxy.SetLinkBandwidth(0); proxy.SetLatency(0) }()
		before := proxy.Accepted()
		start := time.Now()

		payload := make([]byte, 3<<20)
		_, _ = rand.Read(payload)
		uploaded := make(chan error, 1)
		go func() {
			want := sha256.Sum256(payload)
			c, err := net.Dial("tcp", sink)
			if err != nil {
				uploaded <- err
				return
			}
			defer func() { _ = c.Close() }()
			_ = c.SetDeadline(time.Now().Add(2 * inFlightBound))
			go func() { _, _ = c.Write(payload); _ = c.(*net.TCPConn).CloseWrite() }()
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(got, want[:]) {
				err = fmt.Errorf("upload checksum %x, want %x", got, want)
			}
			uploaded <- err
		}()
		waitFor(t, 30*time.Second, "the upload to queue up on the link", func() bool { return proxy.Queued() >= 1<<20 })
		queued := proxy.Queued()

		// New requests arrive while the backlog drains, one every 400 ms.
		var mu sync.Mutex
		var wg sync.WaitGroup
		var took []time.Duration
		failed := 0
		for range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := time.Now()
				err := request(web, inFlightBound)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed++
					t.Errorf("new request through the saturated link: %v", err)
					return
				}
				took = append(took, time.Since(s))
			}()
			time.Sleep(400 * time.Millisecond)
		}
		wg.Wait()
		slices.Sort(took)
		uploadErr := <-uploaded
		uploadTook := time.Since(start)
		if uploadErr != nil {
			t.Errorf("the upload on the saturated connection: %v", uploadErr)
		}

		// The streams that were open all along still work end to end.
		survived := 0
		for _, c := range healthy {
			_ = c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err == nil && string(got) == "X" {
				survived++
			}
		}
		if survived != streams {
			t.Errorf("%d of %d streams open through the saturation still answer", survived, streams)
		}
		var fastest, median, slowest time.Duration
		if len(took) > 0 {
			fastest, median, slowest = took[0], took[len(took)/2], took[len(took)-1]
		}
		t.Logf("saturated: link %d KiB/s shared, 15 ms each way, %.1f MiB queued by a 3 MiB upload; %d new requests, %d failed, answered in %s (fastest) / %s (median) / %s (slowest); the upload ended after %s (error: %v); %d of %d streams open throughout still answer; %d new link connections",
			bandwidth>>10, float64(queued)/(1<<20), streams, failed, fastest.Round(time.Millisecond), median.Round(time.Millisecond), slowest.Round(time.Millisecond),
			uploadTook.Round(100*time.Millisecond), uploadErr, survived, streams, proxy.Accepted()-before)
	})

	// Afterwards: every stream the faults ended, and every connection the
	// pool dropped, has let go of its goroutines and descriptors.
	if err := request(web, 10*time.Second); err != nil {
		t.Fatalf("after the faults: %v", err)
	}
	for name, a := range admins {
		b := base[name]
		var now map[string]float64
		start := time.Now()
		waitFor(t, 2*inFlightBound, name+" gateway back to its baseline goroutines and fds", func() bool {
			now = gatewayGauges(t, a)
			return now["go_goroutines"] <= b["go_goroutines"]+10 && now["process_open_fds"] <= b["process_open_fds"]+5
		})
		t.Logf("%s gateway after the faults: goroutines %.0f → %.0f, open fds %.0f → %.0f (settled %s after the last fault)", name,
			b["go_goroutines"], now["go_goroutines"], b["process_open_fds"], now["process_open_fds"], time.Since(start).Round(100*time.Millisecond))
	}
}
