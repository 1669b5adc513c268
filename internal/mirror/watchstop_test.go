package mirror_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestRemoteWatchesStopWithTheManager: the mirror controller watches each
// linked cluster with informers of its own, outside the manager's cache.
// When the manager stops (a rolling restart, or a replica that lost its
// lease) those watches must end with it: run on in the background, they
// hold watches on the remote API server with the link reader's
// credentials, and a manager started later in the process (a leader
// again, or the next test) starts its own beside them. The Link reaches
// east through a proxy that records the requests and the watches open.
func TestRemoteWatchesStopWithTheManager(t *testing.T) {
	proxy, stop := watchingThroughProxy(t, func(o *controller.Options) { o.LeaderElection = true })

	stop()
	nothingReachesEast(t, proxy)
}

// watchingThroughProxy links west to east through a recordingProxy, runs
// west's controller (options adjusted), and waits until east's exported
// cart is mirrored and the controller watches east's Services,
// EndpointSlices and ServiceExports; it returns the proxy and the
// controller's stop.
func watchingThroughProxy(t *testing.T, adjust ...func(*controller.Options)) (*recordingProxy, context.CancelFunc) {
	t.Helper()
	east, west := linkedClusters(t, "shop")
	proxy := newRecordingProxy(t, east)
	createLink(t, west, "east", linkReaderKubeconfigCA(t, east, proxy.srv.URL, testenv.ProxyCA(proxy.srv)))
	if err := east.Client.Create(bg, service("shop", "cart", exported(), 80)); err != nil {
		t.Fatal(err)
	}
	stop := runController(t, west, adjust...)
	eventually(t, "cart-east is mirrored", func() bool { _, ok := get(west, "shop", "cart-east", &corev1.Service{}); return ok })
	eventually(t, "the controller watches east's Services, EndpointSlices and ServiceExports", func() bool {
		open := strings.Join(proxy.openWatches(), " ")
		return strings.Contains(open, "/services?") && strings.Contains(open, "/endpointslices?") && strings.Contains(open, "/serviceexports?")
	})
	return proxy, stop
}

// TestAWatchStartingAsTheManagerStopsIsStopped: a remote watch starts
// outside the Reconciler's lock, on a discovery that may take until the
// client's timeout to answer. A manager stopping meanwhile stops the
// watches it has, and the one still starting is not among them yet:
// kept once its discovery answers, it would run on in the background for
// good. East's proxy holds the discovery of the Link's first watch until
// the manager is stopping.
func TestAWatchStartingAsTheManagerStopsIsStopped(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	proxy := newRecordingProxy(t, east)
	// Starting a remote watch asks first whether the remote serves
	// ServiceExports: a GET of the MCS group version's resources, with
	// the mirror's user agent.
	held := proxy.holdFirst("/apis/"+mcsv1beta1.GroupVersion.String(), "backbone-mirror/east")
	createLink(t, west, "east", linkReaderKubeconfigCA(t, east, proxy.srv.URL, testenv.ProxyCA(proxy.srv)))
	if err := east.Client.Create(bg, service("shop", "cart", exported(), 80)); err != nil {
		t.Fatal(err)
	}
	stop := runController(t, west)
	select {
	case <-held.arrived:
	case <-time.After(45 * time.Second):
		t.Fatal("timed out waiting until the controller asks east whether it serves ServiceExports")
	}

	// The manager waits for the Link's reconcile, in the held discovery,
	// before it returns: the discovery is let on while it stops, well
	// within the client's 15 s timeout.
	go func() {
		time.Sleep(2 * time.Second)
		close(held.release)
	}()
	stop()
	select {
	case code := <-held.answered:
		if code != http.StatusOK {
			t.Fatalf("the held discovery ended with %d, not east's answer: the watch never started, so nothing is tested", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the held discovery never ended")
	}
	// The late watch's informers may have sent their first watch as it was
	// stopped: that one reaches east a moment after the manager returned,
	// and ends there. East is watched from when requests stop coming; the
	// watches of a leaked informer stay open meanwhile.
	for seen, tries := proxy.requestCount(), 0; tries < 10; tries++ {
		time.Sleep(time.Second)
		n := proxy.requestCount()
		if n == seen {
			break
		}
		seen = n
	}
	nothingReachesEast(t, proxy)
}

// nothingReachesEast fails t unless the watches on east through proxy
// end, and no request reaches east afterwards: what a manager stopped
// leaves behind.
func nothingReachesEast(t *testing.T, proxy *recordingProxy) {
	t.Helper()
	const bound = 10 * time.Second // the watches end at once; a watch leaked never does
	for deadline := time.Now().Add(bound); len(proxy.openWatches()) > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("watches on east still open %s after the manager stopped: %v", bound, proxy.openWatches())
		}
	}
	// A leaked informer between two watches shows none open for a moment;
	// it asks again within seconds. So does a leaked resync or ping.
	seen := proxy.requestCount()
	time.Sleep(5 * time.Second) // more than two resyncs, and a reflector's retry
	if after := proxy.requestsSince(seen); len(after) > 0 {
		t.Fatalf("%d requests reached east after the manager stopped: %v", len(after), after)
	}
}

// recordingProxy is an HTTPS reverse proxy in front of a cluster's API
// server that records every request and the watches open now.
type recordingProxy struct {
	srv *httptest.Server

	mu       sync.Mutex
	requests []string
	open     map[int]string // watches in flight, by request number
	hold     *heldRequest   // the next request to hold, if any
}

// heldRequest is a request the proxy holds until release is closed.
type heldRequest struct {
	path, userAgent string
	arrived         chan struct{} // closed as the request reaches the proxy
	release         chan struct{}
	// answered has the status the API server answered with once the
	// request was let on; 0 when its client gave up while it was held.
	answered chan int
}

// holdFirst makes the proxy hold the next request for path sent with
// userAgent.
func (p *recordingProxy) holdFirst(path, userAgent string) *heldRequest {
	h := &heldRequest{path: path, userAgent: userAgent,
		arrived: make(chan struct{}), release: make(chan struct{}), answered: make(chan int, 1)}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = h
	return h
}

// statusRecorder notes the status of the answer it carries.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets the reverse proxy flush through to the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// newRecordingProxy starts a recordingProxy in front of c's API server,
// closed when the test ends.
func newRecordingProxy(t *testing.T, c *testenv.Cluster) *recordingProxy {
	t.Helper()
	// testenv's proxy, failing nothing, carries the requests on to the
	// API server and streams the watches.
	upstream := testenv.DiscoveryProxy(t, c, new(atomic.Int32))
	target, err := url.Parse(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:     upstream.Client().Transport,
		FlushInterval: -1,
	}
	p := &recordingProxy{open: map[int]string{}}
	p.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		what := r.Method + " " + r.URL.RequestURI()
		p.mu.Lock()
		n := len(p.requests)
		p.requests = append(p.requests, what)
		watch := slices.Contains([]string{"true", "1"}, r.URL.Query().Get("watch"))
		if watch {
			p.open[n] = what
		}
		held := p.hold
		if held != nil && r.URL.Path == held.path && r.UserAgent() == held.userAgent {
			p.hold = nil
		} else {
			held = nil
		}
		p.mu.Unlock()
		if held != nil {
			close(held.arrived)
			select {
			case <-held.release:
			case <-r.Context().Done():
				held.answered <- 0
				return
			}
			rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
			rp.ServeHTTP(rec, r)
			held.answered <- rec.code
			return
		}
		if watch {
			defer func() {
				p.mu.Lock()
				delete(p.open, n)
				p.mu.Unlock()
			}()
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		// Watches still open (leaked ones) would hold Close for good.
		_ = p.srv.Listener.Close()
		p.srv.CloseClientConnections()
		p.srv.Close()
	})
	return p
}

// openWatches are the watch requests in flight.
func (p *recordingProxy) openWatches() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.open))
	for _, w := range p.open {
		out = append(out, w)
	}
	slices.Sort(out)
	return out
}

func (p *recordingProxy) requestCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.requests)
}

// requestsSince are the requests after the first n.
func (p *recordingProxy) requestsSince(n int) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.requests[n:])
}

// TestRemoteWatchesAreNotCutMidStream: a remote watch stays open for as
// long as the API server keeps it (minutes, ended with a bookmark), not
// cut by the client's request timeout every few seconds: a watch cut
// without a bookmark resumes from the version of its first list, which on
// a quiet remote never moves until it is compacted away and everything is
// listed again.
func TestRemoteWatchesAreNotCutMidStream(t *testing.T) {
	proxy, _ := watchingThroughProxy(t)
	seen := proxy.requestCount()
	time.Sleep(20 * time.Second)
	var rewatched []string
	for _, r := range proxy.requestsSince(seen) {
		if strings.Contains(r, "watch=true") || strings.Contains(r, "watch=1") {
			rewatched = append(rewatched, r)
		}
	}
	if len(rewatched) > 0 {
		t.Errorf("%d watches started again within 20 s: %v", len(rewatched), rewatched)
	}
}
