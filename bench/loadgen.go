package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// latencies holds request latencies for percentiles.
type latencies []time.Duration

// percentile is the q-quantile by nearest rank (nearestRank).
func (l latencies) percentile(q float64) time.Duration { return nearestRank(l, q) }

// latencySlice is how long each path is measured before the next one's
// turn: short against the seconds a shared machine's busy spells last.
const latencySlice = 250 * time.Millisecond

// interleavedRate measures every url at rate requests per second for d
// each, open loop over conns keep-alive connections per url, in slices
// of latencySlice taken in turn, the order rotating every cycle: a busy
// second of a shared machine then falls on every path alike, where
// measuring one path after another lays it on whichever was measured
// then. Each url keeps its connections across its slices; a first
// unrecorded slice opens them.
func interleavedRate(ctx context.Context, urls []string, rate, conns int, d time.Duration) ([]latencies, []int64) {
	clients := make([]*http.Client, len(urls))
	for i := range urls {
		tr := &http.Transport{MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}
		defer tr.CloseIdleConnections()
		clients[i] = &http.Client{Transport: tr, Timeout: 10 * time.Second}
		openLoop(ctx, clients[i], urls[i], rate, conns, latencySlice)
	}
	lats := make([]latencies, len(urls))
	errs := make([]int64, len(urls))
	cycles := max(1, int(d/latencySlice))
	for cycle := range cycles {
		for k := range urls {
			i := (k + cycle) % len(urls)
			l, e := openLoop(ctx, clients[i], urls[i], rate, conns, latencySlice)
			lats[i] = append(lats[i], l...)
			errs[i] += e
			if ctx.Err() != nil {
				return lats, errs
			}
		}
	}
	return lats, errs
}

// openLoop sends rate requests per second for d over conns keep-alive
// connections of client, open loop: each request has an intended start
// time and its latency counts from then, so a stalled proxy cannot hide
// its queueing (no coordinated omission). It returns once every request
// sent has its answer.
func openLoop(ctx context.Context, client *http.Client, url string, rate, conns int, d time.Duration) (latencies, int64) {
	interval := time.Second / time.Duration(rate)
	total := int(d / interval)
	var (
		mu     sync.Mutex
		lats   = make(latencies, 0, total)
		errs   atomic.Int64
		wg     sync.WaitGroup
		tokens = make(chan time.Time, conns*4)
	)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for intended := range tokens {
				if err := get(client, url); err != nil {
					errs.Add(1)
					continue
				}
				took := time.Since(intended)
				mu.Lock()
				lats = append(lats, took)
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := range total {
		intended := start.Add(time.Duration(i) * interval)
		if w := time.Until(intended); w > 0 {
			time.Sleep(w)
		}
		select {
		case tokens <- intended:
		case <-ctx.Done():
		}
	}
	close(tokens)
	wg.Wait()
	return lats, errs.Load()
}

func get(client *http.Client, url string) error {
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return err
}

// saturate runs conns closed-loop clients for d and returns requests per
// second.
func saturate(ctx context.Context, url string, conns int, d time.Duration) (float64, int64) {
	tr := &http.Transport{MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var done, errs atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := get(client, url); err != nil {
					if ctx.Err() == nil {
						errs.Add(1)
					}
					continue
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(done.Load()) / time.Since(start).Seconds(), errs.Load()
}

// firstByte measures connect() to the first response byte of a fresh
// connection: what a new application connection costs across the path.
func firstByte(addr, host string) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host); err != nil {
		return 0, err
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// bulk sends n bytes over each of streams parallel connections to a sink
// that counts them, and returns MB/s.
func bulk(addr string, total int64, streams int) (float64, error) {
	per := total / int64(streams)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	start := time.Now()
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer func() { _ = c.Close() }()
			if _, err := io.CopyN(c, zeroReader{}, per); err != nil {
				errs <- err
				return
			}
			_ = c.(*net.TCPConn).CloseWrite()
			var ack [8]byte
			if _, err := io.ReadFull(c, ack[:]); err != nil { // the sink's count: every byte arrived
				errs <- fmt.Errorf("waiting for the sink: %w", err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(total) / 1e6 / time.Since(start).Seconds(), nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
