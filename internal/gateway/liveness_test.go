package gateway

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/internal/faultproxy"
)

const (
	lateAuthority    = "late.demo.svc.cluster.local:80"
	echoAuthority    = "echo.demo.svc.cluster.local:80"
	trickleAuthority = "trickle.demo.svc.cluster.local:80"
)

// livenessPeer answers GET /ready (the pool's probe), answers CONNECTs to
// lateAuthority only after late, sends a byte every 20 ms on
// trickleAuthority streams, and echoes the others.
func livenessPeer(late time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/ready":
			_, _ = io.WriteString(w, "east\n")
		case r.Host == lateAuthority:
			select {
			case <-time.After(late):
			case <-r.Context().Done():
				return
			}
			echoTunnel(w, r)
		case r.Host == trickleAuthority:
			rc := http.NewResponseController(w)
			w.WriteHeader(http.StatusOK)
			for {
				if _, err := w.Write([]byte(".")); err != nil || rc.Flush() != nil {
					return
				}
				select {
				case <-time.After(20 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
		default:
			echoTunnel(w, r)
		}
	})
}

// alive reports whether a trickle stream still delivers bytes: once what
// it had buffered is read, bytes keep coming.
func alive(st *Stream) bool {
	got := make(chan bool, 1)
	go func() {
		start := time.Now()
		var b [64]byte
		for {
			if _, err := st.Down.Read(b[:]); err != nil {
				got <- false
				return
			}
			if time.Since(start) > 300*time.Millisecond {
				got <- true
				return
			}
		}
	}()
	select {
	case ok := <-got:
		return ok
	case <-time.After(5 * time.Second):
		return false
	}
}

// echoes opens a stream to authority and checks that it echoes.
func echoes(ctx context.Context, pool *Pool, authority string) error {
	app, gw := net.Pipe()
	defer func() { _ = app.Close(); _ = gw.Close() }()
	st, err := pool.OpenStream(ctx, "east", authority, app)
	if err != nil {
		return err
	}
	defer func() { _ = st.Close() }()
	go func() { _, _ = gw.Write([]byte("ping")) }()
	var b [4]byte
	_, err = io.ReadFull(st.Down, b[:])
	return err
}

// TestAnswerWaitTellsSlowFromDead: a CONNECT whose answer is late waits
// on while the connection shows signs of life, and the connection — with
// the healthy streams on it — is dropped only when the peer has gone
// silent.
func TestAnswerWaitTellsSlowFromDead(t *testing.T) {
	// Generous enough that a loaded CI machine running the race detector
	// does not miss a probe answer by itself.
	const dialTimeout = 600 * time.Millisecond
	tests := map[string]struct {
		late         time.Duration // how long the peer takes to answer lateAuthority
		busy         bool          // a trickle stream delivers bytes on the connection meanwhile
		stall        bool          // the link is black-holed before the stream opens
		alsoNew      bool          // a new stream opens while the late one waits
		wantErr      bool
		wantLongLive bool  // the trickle stream survives
		wantConns    int64 // connections the peer accepted
	}{
		"waits past the dial timeout while the connection delivers bytes, and keeps it": {
			late: 3 * dialTimeout, busy: true, wantLongLive: true, wantConns: 1,
		},
		"waits past the dial timeout on an idle connection whose peer answers the probe": {
			late: 3 * dialTimeout, wantConns: 1,
		},
		"gives up on an answer later than the bound, failing only that stream": {
			late: 2 * maxAnswerWait * dialTimeout, busy: true, wantErr: true, wantLongLive: true, wantConns: 1,
		},
		"fails fast and drops the connection when the link goes silent": {
			late: 0, busy: true, stall: true, wantErr: true, wantLongLive: false, wantConns: 1,
		},
		"sends a new stream over a second connection while the first is congested": {
			late: 4 * dialTimeout, busy: true, alsoNew: true, wantLongLive: true, wantConns: 2,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var proxy *faultproxy.Proxy
			pp := startPeer(t, livenessPeer(tc.late), dialTimeout, func(addr string) string {
				var err error
				if proxy, err = faultproxy.New("127.0.0.1:0", addr); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = proxy.Close() })
				return proxy.Addr()
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := echoes(ctx, pp.pool, echoAuthority); err != nil {
				t.Fatal(err)
			}
			var long *Stream
			if tc.busy {
				app, other := net.Pipe()
				defer func() { _ = app.Close(); _ = other.Close() }()
				var err error
				if long, err = pp.pool.OpenStream(ctx, "east", trickleAuthority, app); err != nil {
					t.Fatal(err)
				}
				defer func() { _ = long.Close() }()
			}
			if tc.stall {
				proxy.SetStalled(true)
			}
			newErr := make(chan error, 1)
			if tc.alsoNew {
				go func() {
					time.Sleep(2 * dialTimeout) // the late stream has made its connection congested
					newErr <- echoes(ctx, pp.pool, echoAuthority)
				}()
			}
			start := time.Now()
			err := echoes(ctx, pp.pool, lateAuthority)
			took := time.Since(start)
			t.Logf("late stream: %v after %s", err, took.Round(time.Millisecond))
			if (err != nil) != tc.wantErr {
				t.Fatalf("late stream: %v, want error %v", err, tc.wantErr)
			}
			if tc.stall && took > 10*dialTimeout {
				t.Errorf("a stream on a silent link took %s to fail (dial timeout %s)", took, dialTimeout)
			}
			if tc.alsoNew {
				if err := <-newErr; err != nil {
					t.Errorf("new stream while the connection was congested: %v", err)
				}
			}
			if long != nil {
				if got := alive(long); got != tc.wantLongLive {
					t.Errorf("the healthy stream alive: %v, want %v", got, tc.wantLongLive)
				}
			}
			if tc.stall {
				proxy.SetStalled(false)
				// Backoff from the failed redial during the stall.
				deadline := time.Now().Add(20 * time.Second)
				for echoes(ctx, pp.pool, echoAuthority) != nil {
					if time.Now().After(deadline) {
						t.Fatal("no stream succeeded after the stall")
					}
					time.Sleep(50 * time.Millisecond)
				}
				tc.wantConns++ // the pool reconnected
			}
			if got := pp.accepted.Load(); got < tc.wantConns || (!tc.stall && got != tc.wantConns) {
				t.Errorf("the peer accepted %d connections, want %d", got, tc.wantConns)
			}
		})
	}
}

// TestProbeDropsASilentlyDeadConnection: a link probe on a pooled
// connection that went silent — its peer host died without a reset, or a
// NAT lost the flow — while new connections would work, gives that
// connection up as the data path does, once it has been silent for the
// dial timeout with the probe's request and PING unanswered; the next
// probe dials anew and succeeds. Without it every probe would reuse the
// dead connection until the HTTP/2 ping bound closed it (45 s), and the
// link would be reported dead and its mirrors taken out of service
// meanwhile.
func TestProbeDropsASilentlyDeadConnection(t *testing.T) {
	const dialTimeout = 600 * time.Millisecond
	const probeTimeout = 250 * time.Millisecond // shorter than the dial timeout, as by default
	var proxy *faultproxy.Proxy
	pp := startPeer(t, livenessPeer(0), dialTimeout, func(addr string) string {
		var err error
		if proxy, err = faultproxy.New("127.0.0.1:0", addr); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = proxy.Close() })
		return proxy.Addr()
	})
	probe := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		defer cancel()
		_, err := pp.pool.Probe(ctx, "east")
		return err
	}
	if err := probe(); err != nil {
		t.Fatal(err)
	}
	proxy.LoseOpen()
	// Probes every probe timeout and a bit: within the dial timeout plus
	// two probes the connection is given up and a new one answers.
	failed := 0
	for i := 0; ; i++ {
		err := probe()
		if err == nil {
			break
		}
		failed++
		if i >= 20 {
			t.Fatalf("%d probes in a row failed over the silent connection (last: %v); want a new connection after the dial timeout", failed, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d probes failed before one went over a new connection", failed)
	if proxy.Accepted() < 2 {
		t.Errorf("the proxy accepted %d connections, want a second one", proxy.Accepted())
	}
}
