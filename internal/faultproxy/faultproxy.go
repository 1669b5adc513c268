// Package faultproxy is a user-space TCP proxy that makes a loopback or
// namespace link behave like a WAN link between clouds: one-way latency in
// both directions (including the TCP handshake a real link would cost),
// a bandwidth limit, stalls, resets and refused connections. The machines
// backbone is tested on have no netem, so the sandbox, the end-to-end
// tests and the benchmarks put this proxy on every inter-cluster link.
package faultproxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards every connection accepted on its listener to Upstream.
type Proxy struct {
	upstream string
	ln       net.Listener

	latency   atomic.Int64 // one-way, nanoseconds
	bandwidth atomic.Int64 // bytes per second per direction, 0 = unlimited
	link      atomic.Int64 // bytes per second per direction shared by all connections, 0 = unlimited
	up, down  linkQueue    // the shared limit's two directions
	queued    atomic.Int64 // bytes read and not yet delivered
	refuse    atomic.Bool
	stalled   atomic.Bool
	stallMu   sync.Mutex
	unstall   chan struct{}

	mu    sync.Mutex
	conns map[*pair]struct{}
	wg    sync.WaitGroup

	accepted atomic.Int64
}

type pair struct {
	client, server net.Conn
	lost           atomic.Bool // set by LoseOpen: bytes are dropped both ways
}

// New listens on listen (e.g. "127.0.0.1:0") and forwards to upstream.
func New(listen, upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{upstream: upstream, ln: ln, conns: map[*pair]struct{}{}, unstall: make(chan struct{})}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Upstream is where connections go.
func (p *Proxy) Upstream() string { return p.upstream }

// Accepted counts the connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// SetLatency sets the one-way delay applied to every byte in both
// directions; a new connection also waits one round trip (2×latency) before
// data flows, as a TCP handshake across the link would.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// Latency returns the one-way delay.
func (p *Proxy) Latency() time.Duration { return time.Duration(p.latency.Load()) }

// SetBandwidth limits each direction of each connection to bytesPerSecond
// (0: unlimited).
func (p *Proxy) SetBandwidth(bytesPerSecond int64) { p.bandwidth.Store(bytesPerSecond) }

// SetLinkBandwidth limits each direction of the whole link, all
// connections together, to bytesPerSecond (0: unlimited), as a saturated
// WAN link shares its capacity: connections take turns chunk by chunk,
// each with its own backlog.
func (p *Proxy) SetLinkBandwidth(bytesPerSecond int64) { p.link.Store(bytesPerSecond) }

// Queued is how many bytes the proxy has read and not yet delivered, in
// both directions of every connection: the backlog on the link.
func (p *Proxy) Queued() int64 { return p.queued.Load() }

// linkQueue serialises the chunks of all connections in one direction
// through the shared bandwidth.
type linkQueue struct {
	mu   sync.Mutex
	next time.Time // when the link is free
}

// transmit waits until n bytes have crossed the link after those already
// on it.
func (q *linkQueue) transmit(n int, bytesPerSecond int64) {
	q.mu.Lock()
	start := time.Now()
	if start.Before(q.next) {
		start = q.next
	}
	q.next = start.Add(time.Duration(int64(n) * int64(time.Second) / bytesPerSecond))
	done := q.next
	q.mu.Unlock()
	time.Sleep(time.Until(done))
}

// SetRefuse makes the proxy close new connections at once (a dead link
// whose packets are rejected).
func (p *Proxy) SetRefuse(refuse bool) { p.refuse.Store(refuse) }

// SetStalled stops (true) or resumes (false) forwarding on all
// connections without closing them: a black-holed link.
func (p *Proxy) SetStalled(stalled bool) {
	p.stallMu.Lock()
	defer p.stallMu.Unlock()
	if stalled == p.stalled.Load() {
		return
	}
	p.stalled.Store(stalled)
	if !stalled {
		close(p.unstall)
		p.unstall = make(chan struct{})
	}
}

// LoseOpen silently drops, from now on, every byte of the connections
// open now, while new connections are forwarded: a NAT or load balancer
// that lost its flows' state, or a peer host that died without a reset.
// Nothing reaches either end and nothing is closed.
func (p *Proxy) LoseOpen() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.lost.Store(true)
	}
}

// ResetAll aborts every open connection with a TCP reset.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		reset(c.client)
		reset(c.server)
	}
}

// Open returns the number of connections currently proxied.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops the listener, closes every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.client.Close()
		_ = c.server.Close()
	}
	p.mu.Unlock()
	p.SetStalled(false)
	p.wg.Wait()
	return err
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				slog.Warn("faultproxy accept", "err", err)
			}
			return
		}
		p.accepted.Add(1)
		if p.refuse.Load() {
			reset(c)
			continue
		}
		p.wg.Add(1)
		go p.handle(c)
	}
}

func (p *Proxy) handle(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.upstream, 10*time.Second)
	if err != nil {
		reset(client)
		return
	}
	pr := &pair{client: client, server: server}
	p.mu.Lock()
	p.conns[pr] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, pr)
		p.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
	}()
	// The handshake a real link costs: the client's SYN and the server's
	// SYN-ACK each cross it once before the first byte can follow.
	time.Sleep(2 * p.Latency())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client, &p.up, pr) }()
	go func() { defer wg.Done(); p.pipe(client, server, &p.down, pr) }()
	wg.Wait()
}

type chunk struct {
	data []byte
	due  time.Time
}

// pipe copies src to dst, delivering each chunk latency after it was read:
// a reader and a writer goroutine with a queue between them, so the delay
// models propagation and does not throttle throughput.
func (p *Proxy) pipe(dst, src net.Conn, link *linkQueue, pr *pair) {
	queue := make(chan chunk, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range queue {
			p.waitStall()
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d)
			}
			if pr.lost.Load() {
				p.queued.Add(-int64(len(c.data)))
				continue
			}
			if c.data == nil { // EOF from src: half-close dst
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				continue
			}
			if bw := p.bandwidth.Load(); bw > 0 {
				time.Sleep(time.Duration(int64(len(c.data)) * int64(time.Second) / bw))
			}
			if bw := p.link.Load(); bw > 0 {
				link.transmit(len(c.data), bw)
			}
			_, err := dst.Write(c.data)
			p.queued.Add(-int64(len(c.data)))
			if err != nil {
				_ = src.Close()
				p.drain(queue)
				return
			}
		}
	}()
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			p.queued.Add(int64(n))
			queue <- chunk{data: buf[:n], due: time.Now().Add(p.Latency())}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				queue <- chunk{due: time.Now().Add(p.Latency())}
			} else {
				_ = dst.Close()
			}
			break
		}
	}
	close(queue)
	<-done
}

func (p *Proxy) waitStall() {
	for p.stalled.Load() {
		p.stallMu.Lock()
		ch := p.unstall
		p.stallMu.Unlock()
		if !p.stalled.Load() {
			return
		}
		<-ch
	}
}

// drain empties a queue whose writer failed, so its reader never blocks.
func (p *Proxy) drain(queue <-chan chunk) {
	for c := range queue {
		p.queued.Add(-int64(len(c.data)))
	}
}
