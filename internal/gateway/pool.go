package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/identity"
)

// Pool holds long-lived mTLS HTTP/2 connections to the gateways of linked
// clusters. Every tunnel is one stream on one of them, so a new
// application connection costs one round trip to the peer (the CONNECT),
// not a TCP and TLS handshake across the WAN.
type Pool struct {
	identity    *identity.Files
	dialTimeout time.Duration
	log         *slog.Logger
	metrics     *metrics
	h2          *h2Server // the settings of the connections we open

	mu    sync.Mutex
	peers map[string]*peer // by cluster
}

// peer is one linked cluster: its gateway addresses and their connections.
type peer struct {
	cluster  string
	expected identity.ID
	addrs    []string

	mu      sync.Mutex
	conns   map[string][]*poolConn
	backoff map[string]backoffState
	next    int
	dialing map[string]*sync.Mutex
	// closed: the peer left the pool (its Link changed or went); a dial
	// that was under way when it did closes what it opened.
	closed bool
}

type backoffState struct {
	until time.Time
	delay time.Duration
}

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// NewPool returns an empty pool dialing with the identity.
func NewPool(id *identity.Files, dialTimeout time.Duration, log *slog.Logger, m *metrics) *Pool {
	if m == nil {
		m = newMetrics(nopRegisterer{})
	}
	cfg := h2Config()
	return &Pool{
		identity:    id,
		dialTimeout: dialTimeout,
		log:         log,
		metrics:     m,
		peers:       map[string]*peer{},
		h2: &h2Server{
			log:            log,
			pingInterval:   cfg.SendPingTimeout,
			pingTimeout:    cfg.PingTimeout,
			writeTimeout:   cfg.SendPingTimeout,
			streamWindow:   streamWindow,
			connWindow:     connectionWindow,
			maxFrameSize:   uint32(cfg.MaxReadFrameSize),
			maxHeaderBytes: maxResponseHeaderBytes,
		},
	}
}

// maxResponseHeaderBytes bounds a peer gateway's answer's header list.
const maxResponseHeaderBytes = 64 << 10

// Ensure adds or refreshes the peer of one Link, leaving the others.
func (p *Pool) Ensure(link v1alpha1.Link) {
	p.mu.Lock()
	var links []v1alpha1.Link
	for cluster := range p.peers {
		if cluster != link.Spec.TargetClusterName {
			links = append(links, p.linkOf(cluster))
		}
	}
	p.mu.Unlock()
	p.Update(append(links, link))
}

// Forget drops the peer of a cluster no Link points at any more: its
// connections close once idle.
func (p *Pool) Forget(cluster string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr, ok := p.peers[cluster]; ok {
		pr.closeAll()
		delete(p.peers, cluster)
	}
}

// linkOf rebuilds the Link-shaped description of a known peer.
func (p *Pool) linkOf(cluster string) v1alpha1.Link {
	pr := p.peers[cluster]
	l := v1alpha1.Link{Spec: v1alpha1.LinkSpec{TargetClusterName: cluster, GatewayIdentity: pr.expected.String()}}
	for _, a := range pr.addrs {
		host, port, _ := net.SplitHostPort(a)
		n, _ := strconv.Atoi(port)
		l.Spec.GatewayAddresses = append(l.Spec.GatewayAddresses, v1alpha1.GatewayAddress{Host: host, Port: int32(n)})
	}
	return l
}

// Update sets the peers from the Links: new clusters are added, changed
// addresses or identities replace the old ones, gone clusters are closed.
func (p *Pool) Update(links []v1alpha1.Link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[string]bool{}
	for _, l := range links {
		cluster := l.Spec.TargetClusterName
		expected, err := identity.Parse(l.Spec.GatewayIdentity)
		if err != nil {
			p.log.Warn("link has a bad gateway identity", "link", l.Name, "err", err)
			continue
		}
		var addrs []string
		for _, a := range l.Spec.GatewayAddresses {
			addrs = append(addrs, net.JoinHostPort(a.Host, strconv.Itoa(int(a.Port))))
		}
		seen[cluster] = true
		if old, ok := p.peers[cluster]; ok && old.expected == expected && equal(old.addrs, addrs) {
			continue
		} else if ok {
			old.closeAll()
		}
		pr := &peer{
			cluster: cluster, expected: expected, addrs: addrs,
			conns: map[string][]*poolConn{}, backoff: map[string]backoffState{}, dialing: map[string]*sync.Mutex{},
			next: rand.IntN(max(len(addrs), 1)),
		}
		p.peers[cluster] = pr
	}
	for cluster, pr := range p.peers {
		if !seen[cluster] {
			pr.closeAll()
			delete(p.peers, cluster)
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (pr *peer) closeAll() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.closed = true
	for _, cs := range pr.conns {
		for _, pc := range cs {
			go closeWhenIdle(pc.cc)
		}
	}
	pr.conns = map[string][]*poolConn{}
}

func (pr *peer) isClosed() bool {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.closed
}

func (p *Pool) peer(cluster string) (*peer, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr, ok := p.peers[cluster]
	if !ok {
		return nil, fmt.Errorf("no link to cluster %q", cluster)
	}
	return pr, nil
}

// conn returns a connection to the peer able to take one more stream:
// addresses are tried round-robin from a random start, skipping those in
// backoff after a failed dial.
func (p *Pool) conn(ctx context.Context, pr *peer) (*poolConn, error) {
	pr.mu.Lock()
	n := len(pr.addrs)
	start := pr.next
	pr.next = (pr.next + 1) % max(n, 1)
	pr.mu.Unlock()
	var errs []error
	for i := range n {
		addr := pr.addrs[(start+i)%n]
		pc, err := p.connTo(ctx, pr, addr)
		if err == nil {
			return pc, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("cluster %s: no gateway addresses", pr.cluster)
	}
	return nil, errors.Join(errs...)
}

// connTo reserves a stream on a connection to addr. Connections whose
// answers queue behind a backlog (congested) are passed over while a
// spare may still be dialled: a new stream's CONNECT then travels on a
// connection of its own instead of waiting behind other streams' bytes.
func (p *Pool) connTo(ctx context.Context, pr *peer, addr string) (*poolConn, error) {
	pr.mu.Lock()
	if pc := pr.reserve(addr, pr.congestedLocked(addr) >= maxCongestedConns); pc != nil {
		pr.mu.Unlock()
		return pc, nil
	}
	if b := pr.backoff[addr]; time.Now().Before(b.until) {
		defer pr.mu.Unlock()
		if pc := pr.reserve(addr, true); pc != nil {
			return pc, nil
		}
		return nil, fmt.Errorf("%s: backing off after a failed dial", addr)
	}
	lock, ok := pr.dialing[addr]
	if !ok {
		lock = &sync.Mutex{}
		pr.dialing[addr] = lock
	}
	pr.mu.Unlock()

	// One dial per address at a time; others wait and reuse its result.
	lock.Lock()
	defer lock.Unlock()
	pr.mu.Lock()
	live := pr.conns[addr][:0]
	for _, pc := range pr.conns[addr] {
		if pc.cc.Err() == nil {
			live = append(live, pc)
		}
	}
	clear(pr.conns[addr][len(live):])
	pr.conns[addr] = live
	if pc := pr.reserve(addr, pr.congestedLocked(addr) >= maxCongestedConns); pc != nil {
		pr.mu.Unlock()
		return pc, nil
	}
	pr.mu.Unlock()

	pc, err := p.dial(ctx, pr, addr)
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if err != nil {
		b := pr.backoff[addr]
		b.delay = min(max(b.delay*2, minBackoff), maxBackoff)
		b.until = time.Now().Add(b.delay/2 + rand.N(b.delay/2+1))
		pr.backoff[addr] = b
		if pc := pr.reserve(addr, true); pc != nil {
			return pc, nil // slow beats failed
		}
		return nil, err
	}
	if pr.closed {
		// Dialled for a Link that changed meanwhile, perhaps against
		// the identity it expected before: not to be used.
		_ = pc.cc.Close()
		return nil, fmt.Errorf("cluster %s: its link changed while %s was dialled", pr.cluster, addr)
	}
	delete(pr.backoff, addr)
	pr.conns[addr] = append(pr.conns[addr], pc)
	if err := pc.cc.Reserve(); err != nil {
		return nil, err
	}
	return pc, nil
}

// reserve takes a stream slot on a live connection to addr, passing over
// congested ones unless congestedToo. pr.mu is held.
func (pr *peer) reserve(addr string, congestedToo bool) *poolConn {
	now := monotime()
	for _, pc := range pr.conns[addr] {
		if !congestedToo && pc.congested(now) {
			continue
		}
		if pc.cc.Reserve() == nil {
			return pc
		}
	}
	return nil
}

// congestedLocked counts the congested connections to addr. pr.mu is held.
func (pr *peer) congestedLocked(addr string) int {
	now, n := monotime(), 0
	for _, pc := range pr.conns[addr] {
		if pc.congested(now) {
			n++
		}
	}
	return n
}

// dialTLS connects to a peer gateway at addr: our identity, the peer's
// expected identity checked in the handshake, HTTP/2 negotiated. The
// bytes arriving on the connection are noted in pc.
func (p *Pool) dialTLS(ctx context.Context, pr *peer, addr string, pc *poolConn) (*tls.Conn, error) {
	raw, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		p.metrics.dialErrors.WithLabelValues(pr.cluster, "connect").Inc()
		return nil, fmt.Errorf("dialing gateway of %s at %s: %w", pr.cluster, addr, err)
	}
	tc := tls.Client(&readTracker{Conn: raw, last: &pc.lastRead}, p.identity.ClientTLS(pr.expected, "h2"))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		p.metrics.dialErrors.WithLabelValues(pr.cluster, "tls").Inc()
		return nil, fmt.Errorf("TLS with gateway of %s at %s: %w", pr.cluster, addr, err)
	}
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		_ = tc.Close()
		p.metrics.dialErrors.WithLabelValues(pr.cluster, "tls").Inc()
		return nil, fmt.Errorf("gateway of %s at %s did not negotiate h2", pr.cluster, addr)
	}
	return tc, nil
}

func (p *Pool) dial(ctx context.Context, pr *peer, addr string) (*poolConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.dialTimeout)
	defer cancel()
	pc := &poolConn{addr: addr}
	pc.lastRead.Store(int64(monotime()))
	tc, err := p.dialTLS(ctx, pr, addr, pc)
	if err != nil {
		return nil, err
	}
	cc, err := newClientConn(tc, p.h2, p.dialTimeout)
	if err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("gateway of %s at %s: %w", pr.cluster, addr, err)
	}
	pc.cc = cc
	p.metrics.connections.WithLabelValues(outbound, pr.cluster).Inc()
	p.log.Info("connected to peer gateway", "peer_cluster", pr.cluster, "address", addr)
	return pc, nil
}

// markBroken drops a connection that is dead: its transport failed, or
// the peer has sent nothing for the dial timeout while a stream waited.
func (pr *peer) markBroken(pc *poolConn) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	list := pr.conns[pc.addr]
	for i, c := range list {
		if c == pc {
			pr.conns[pc.addr] = append(list[:i:i], list[i+1:]...)
			_ = pc.cc.Close()
			return
		}
	}
}

// RefusedError is the peer gateway's answer when it refuses a tunnel.
type RefusedError struct {
	Status  int
	Message string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("peer refused the tunnel: %d %s", e.Status, e.Message)
}

// Probe sends GET /ready over a pooled connection to the cluster's gateway
// and returns the round trip: the link probe measures the path traffic
// takes.
func (p *Pool) Probe(ctx context.Context, cluster string) (time.Duration, error) {
	pr, err := p.peer(cluster)
	if err != nil {
		return 0, err
	}
	pc, err := p.conn(ctx, pr)
	if err != nil {
		return 0, err
	}
	addr := pc.addr
	if pc.quiet(monotime()) >= p.dialTimeout/4 {
		// A live peer answers the PING even when its /ready is slow, so
		// a slow answer does not pass for a dead connection below.
		pc.probe()
	}
	start := time.Now()
	status, body, err := pc.cc.get(ctx, addr, "/ready", 256)
	if err != nil {
		switch {
		case ctx.Err() == nil && errors.Is(pc.cc.Err(), errConnClosed):
			pr.markBroken(pc)
		case pc.quiet(monotime()) >= p.dialTimeout:
			// Nothing from the peer for a dial timeout, with a request
			// and a PING outstanding: the connection is dead (the rule
			// answerWatch applies to streams). The next probe dials anew
			// and measures whether the link is, instead of waiting on
			// this connection until the PING bound closes it.
			pr.markBroken(pc)
		}
		return 0, err
	}
	took := time.Since(start)
	if status != http.StatusOK {
		return took, fmt.Errorf("gateway of %s answered %d %s", cluster, status, http.StatusText(status))
	}
	if got := string(trimNewline(body)); got != cluster {
		return took, fmt.Errorf("gateway at %s says it is %q, want %q", addr, got, cluster)
	}
	return took, nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// Close closes every connection.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pr := range p.peers {
		pr.closeAll()
	}
}

// closeWhenIdle closes a connection taken out of the pool once its streams
// in flight have finished (or after an hour, whatever they do).
func closeWhenIdle(cc *h2Conn) {
	deadline := time.Now().Add(time.Hour)
	// Not while Err is nil: a connection whose peer is going away
	// (GOAWAY) has streams the peer agreed to finish.
	for cc.InFlight() > 0 && !errors.Is(cc.Err(), errConnClosed) && time.Now().Before(deadline) {
		time.Sleep(time.Second)
	}
	_ = cc.Close()
}
