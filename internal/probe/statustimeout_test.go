package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// heldWrites is what statusHoldingProxy does with status writes: while
// hold is set it takes them and never answers; taken counts those,
// holding is how many it holds now and most the most it held at once.
type heldWrites struct {
	hold                 atomic.Bool
	taken, holding, most atomic.Int64
}

// statusHoldingProxy is an HTTPS reverse proxy in front of c's API server
// that, while held.hold is set, takes every write of a Link's status and
// never answers it, as an API server stuck on its storage does: the
// request ends only when the client gives up. Everything else passes.
func statusHoldingProxy(t *testing.T, c *testenv.Cluster, held *heldWrites) *httptest.Server {
	t.Helper()
	target, err := url.Parse(c.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.Config.CAData) {
		t.Fatal("the cluster's CA does not parse")
	}
	// The proxy ends the client's TLS, and with it the admin's client
	// certificate: it presents that certificate to the API server itself.
	admin, err := tls.X509KeyPair(c.Config.CertData, c.Config.KeyData)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{admin}}},
		FlushInterval: -1,
	}
	linkStatus := "/apis/" + v1alpha1.GroupVersion.String() + "/namespaces/*/links/*/status"
	stop := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		isStatus, _ := path.Match(linkStatus, r.URL.Path)
		if isStatus && (r.Method == http.MethodPut || r.Method == http.MethodPatch) && held.hold.Load() {
			held.taken.Add(1)
			n := held.holding.Add(1)
			defer held.holding.Add(-1)
			for m := held.most.Load(); n > m; m = held.most.Load() {
				if held.most.CompareAndSwap(m, n) {
					break
				}
			}
			// Read the body whole, as a server that accepted the write
			// has: only then does net/http see the client hang up.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-stop:
			}
			panic(http.ErrAbortHandler) // no answer, ever
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(stop) }) // runs first: Close waits for held requests
	return srv
}

// TestAHeldStatusWriteDoesNotStopProbing: the probe writes a Link's status
// beside its probe loop, so an API server that takes the write and never
// answers delays the status only: the link is probed every period
// meanwhile (backbone_link_probes_total and backbone_link_up stay
// current), one write at most is in flight, and once the API server
// answers again the latest status goes through.
func TestAHeldStatusWriteDoesNotStopProbing(t *testing.T) {
	const (
		period       = 100 * time.Millisecond
		writeTimeout = 5 * time.Second
		// Probes the link gets while one write is held, of the 50
		// periods the write's timeout spans (a tenth, so a loaded
		// machine's late timers do not matter); a loop that waited for
		// the write would probe once.
		probesWhileHeld = 5
	)
	west := testenv.Start(t, "west")["west"]
	var held heldWrites
	srv := statusHoldingProxy(t, west, &held)
	// The probe reaches the cluster where Links live through the proxy;
	// the test reads the Link directly.
	through, err := client.New(west.ThroughProxy(srv), client.Options{Scheme: testenv.Scheme})
	if err != nil {
		t.Fatal(err)
	}

	link := fastLink(1)
	link.Spec.Probe.Period.Duration = period
	link.Spec.CredentialsSecret = v1alpha1.SecretReference{Name: "link-east"}
	link.Spec.GatewayAddresses = []v1alpha1.GatewayAddress{{Host: "10.0.0.1", Port: 4143}}
	ctx, cancel := context.WithCancel(context.Background())
	if err := west.Client.Create(ctx, link); err != nil {
		t.Fatal(err)
	}
	var failing atomic.Bool
	r := &Runner{Client: through, Namespace: v1alpha1.SystemNamespace, Cluster: "west", Metrics: NewMetrics(prometheus.NewRegistry()),
		Log: slog.New(slog.DiscardHandler), StatusWriteTimeout: writeTimeout,
		Probe: func(context.Context, *v1alpha1.Link) (time.Duration, error) {
			if failing.Load() {
				return 0, errors.New("connection refused")
			}
			return time.Millisecond, nil
		}}
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Start(ctx) }()
	defer func() { cancel(); <-done }()

	probeStatus := func() *v1alpha1.LinkProbeStatus {
		t.Helper()
		got := &v1alpha1.Link{}
		if err := west.Client.Get(ctx, client.ObjectKeyFromObject(link), got); err != nil {
			t.Fatal(err)
		}
		return got.Status.Probe
	}
	waitFor := func(what string, within time.Duration, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(within); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %v waiting until %s", within, what)
			}
		}
	}
	waitFor("the probe writes the link alive", 30*time.Second, func() bool {
		p := probeStatus()
		return p != nil && p.Alive
	})

	// The link dies while the API server holds status writes: the death
	// is written at once, and that write is held.
	held.hold.Store(true)
	failing.Store(true)
	waitFor("the probe's status write reaches the API server", 10*time.Second, func() bool { return held.taken.Load() > 0 })
	heldAt := time.Now()
	failures := func() float64 { return testutil.ToFloat64(r.Metrics.Probes.WithLabelValues("west", "east", "failure")) }
	before := failures()
	for deadline := heldAt.Add(writeTimeout); failures() < before+probesWhileHeld; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the link was probed %v times in the %v a status write was held, want at least %d (one a period)",
				failures()-before, writeTimeout, probesWhileHeld)
		}
	}
	t.Logf("probed %v times in the %v after the status write was held", failures()-before, time.Since(heldAt).Round(10*time.Millisecond))
	if up := testutil.ToFloat64(r.Metrics.Up.WithLabelValues("west", "east")); up != 0 {
		t.Errorf("backbone_link_up = %v for a link whose probes fail, want 0", up)
	}
	if p := probeStatus(); p == nil || !p.Alive {
		t.Fatalf("status.probe = %+v while every status write was held, want the alive one written before", p)
	}
	probed := failures()

	// The API server answers again, while it still holds the write it
	// took: that write times out, and the one tried after it goes
	// through with the latest status, not the one held.
	held.hold.Store(false)
	waitFor("the link's death is written once the API server answers", 30*time.Second, func() bool {
		p := probeStatus()
		return p != nil && !p.Alive
	})
	if p := probeStatus(); float64(p.ConsecutiveFailures) < probed {
		t.Errorf("status.probe.consecutiveFailures = %d once written, want the probes' latest (at least %v)", p.ConsecutiveFailures, probed)
	}
	if most := held.most.Load(); most != 1 {
		t.Errorf("%d status writes of the Link held at once, want 1", most)
	}
	t.Logf("%d status writes held", held.taken.Load())
}
