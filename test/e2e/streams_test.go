package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatewayGauges reads a gateway's own process figures from /metrics.
func gatewayGauges(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "go_goroutines", "process_open_fds", "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes":
			v, _ := strconv.ParseFloat(f[1], 64)
			out[f[0]] = v
		}
	}
	return out
}

// collectGarbage makes a gateway run full collections (pprof's heap
// profile with gc=1, twice, so sync.Pools' victim caches go too): heap
// figures read after it are live memory, not garbage awaiting the next
// collection.
func collectGarbage(t *testing.T, pprofAddr string) {
	t.Helper()
	for range 2 {
		resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/heap?gc=1")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
}

func saveHeapProfile(t *testing.T, pprofAddr, path string) {
	t.Helper()
	resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/heap")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err == nil {
		err = os.WriteFile(path, data, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("heap profile: go tool pprof -sample_index=inuse_space %s", path)
}

// TestManyConcurrentStreams holds N tunnel streams open at once (2,000 by
// default; BACKBONE_E2E_STREAMS=10000 for the full soak), each an HTTP
// request the backend answers after a few seconds. Every request succeeds;
// the gateways' heap stays within a bound per stream; afterwards their
// goroutines and file descriptors return to where they were.
func TestManyConcurrentStreams(t *testing.T) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("BACKBONE_E2E_STREAMS")); err == nil && v > 0 {
		n = v
	}
	p := setupGatewayPair(t)
	admins := map[string]string{"west": p.westGW.admin, "east": p.eastGW.admin}
	pprofs := map[string]string{"west": p.westGW.pprof, "east": p.eastGW.pprof}
	before := map[string]map[string]float64{}
	for name, a := range admins {
		collectGarbage(t, pprofs[name])
		before[name] = gatewayGauges(t, a)
	}

	var okCount, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	hold := 4 * time.Second
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", p.mirrorAddr["web"], 20*time.Second)
			if err == nil {
				defer func() { _ = c.Close() }()
				_ = c.SetDeadline(time.Now().Add(60 * time.Second))
				_, err = fmt.Fprintf(c, "GET /?sleep=%s HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n", hold)
			}
			var body []byte
			if err == nil {
				body, err = io.ReadAll(c)
			}
			if err == nil && !strings.Contains(string(body), "hello from east") {
				err = fmt.Errorf("stream %d: answer %q", i, body)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			okCount.Add(1)
		}()
	}
	time.Sleep(hold / 2) // every stream is open and waiting on the backend
	during := map[string]map[string]float64{}
	for name, a := range admins {
		during[name] = gatewayGauges(t, a)
	}
	wg.Wait()
	t.Logf("%d concurrent streams: %d answered, %d failed, in %s", n, okCount.Load(), failed.Load(), time.Since(start).Round(time.Millisecond))
	if failed.Load() > 0 {
		t.Fatalf("%d streams failed, first: %v", failed.Load(), firstErr.Load())
	}
	for name := range admins {
		b, d := before[name], during[name]
		perStream := (d["go_memstats_heap_inuse_bytes"] - b["go_memstats_heap_inuse_bytes"]) / float64(n)
		t.Logf("%s gateway: goroutines %.0f → %.0f, fds %.0f → %.0f, heap in use %.1f → %.1f MiB (%.1f KiB per stream), RSS %.1f → %.1f MiB",
			name, b["go_goroutines"], d["go_goroutines"], b["process_open_fds"], d["process_open_fds"],
			b["go_memstats_heap_inuse_bytes"]/(1<<20), d["go_memstats_heap_inuse_bytes"]/(1<<20), perStream/1024,
			b["process_resident_memory_bytes"]/(1<<20), d["process_resident_memory_bytes"]/(1<<20))
		// Bounded: the copy buffers (32 KiB each way) plus HTTP/2 stream
		// state; far more would mean buffering without bound.
		if perStream > 256<<10 {
			t.Errorf("%s gateway holds %.0f KiB per stream", name, perStream/1024)
		}
	}
	// Afterwards: no goroutine or descriptor left behind.
	for name, a := range admins {
		b := before[name]
		var now map[string]float64
		waitFor(t, 30*time.Second, name+" gateway back to its goroutines and fds", func() bool {
			now = gatewayGauges(t, a)
			return now["go_goroutines"] <= b["go_goroutines"]+20 && now["process_open_fds"] <= b["process_open_fds"]+10
		})
		// The memory the streams took is given back: after full
		// collections the heap is where it was, give or take what the
		// connection pool and HTTP/2 state keep for later (bounded: far
		// from the streams' own).
		collectGarbage(t, pprofs[name])
		now = gatewayGauges(t, a)
		if dir := os.Getenv("BACKBONE_E2E_HEAP_DIR"); dir != "" { // what stays, for pprof
			saveHeapProfile(t, pprofs[name], filepath.Join(dir, name+"-gateway-after-streams.pb.gz"))
		}
		grown := now["go_memstats_heap_inuse_bytes"] - b["go_memstats_heap_inuse_bytes"]
		t.Logf("%s gateway after: goroutines %.0f, fds %.0f, heap in use %.1f MiB (%+.1f MiB from before, after full collections; the runtime keeps goroutine descriptors), RSS %.1f MiB", name,
			now["go_goroutines"], now["process_open_fds"], now["go_memstats_heap_inuse_bytes"]/(1<<20), grown/(1<<20), now["process_resident_memory_bytes"]/(1<<20))
		// The Go runtime never frees a goroutine's descriptor (~480 bytes
		// of heap; kept for reuse, so a second burst adds none): 512 bytes
		// per goroutine the burst made are allowed beside the 8 MiB.
		allowed := 8<<20 + 512*(during[name]["go_goroutines"]-b["go_goroutines"])
		if grown > allowed {
			t.Errorf("%s gateway's heap stayed %.1f MiB above where it was before the streams (allowed %.1f MiB)", name, grown/(1<<20), allowed/(1<<20))
		}
	}
}
