package mirror_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/faultproxy"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestLargeSyncSurvivesRemoteOutage: 1,000 exported services are mirrored;
// the remote API server is then black-holed (as a SIGSTOP would: the
// connections hang) and later cut off outright (connections reset and
// refused) while changes are made in the remote cluster. The mirrors stay
// exactly as they were — same UIDs and resourceVersions — the Link
// reports the outage, and the changes converge after recovery. The time to
// mirror and a single change's propagation are logged.
//
// BACKBONE_MIRROR_SERVICES sets the number of services (default 1,000).
func TestLargeSyncSurvivesRemoteOutage(t *testing.T) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("BACKBONE_MIRROR_SERVICES")); err == nil && v > 0 {
		n = v
	}
	clusters := testenv.Start(t, "east", "west")
	east, west := clusters["east"], clusters["west"]
	for _, c := range []*testenv.Cluster{east, west} {
		if err := c.CreateNamespace("bulk"); err != nil {
			t.Fatal(err)
		}
	}
	registerGateway(t, west, "192.0.2.2")
	createServices(t, east, n)

	apiURL, err := url.Parse(east.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.New("127.0.0.1:0", apiURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proxy.Close() }()
	createLink(t, west, "east", linkReaderKubeconfig(t, east, "https://"+proxy.Addr()))
	start := time.Now()
	runController(t, west)
	eventually(t, fmt.Sprintf("%d mirrors with their EndpointSlices, Link synced", n), func() bool {
		c := linkReady(west, "east")
		return countMirrors(t, west) == n && countSlices(t, west) == n && c != nil && c.Reason == mirror.ReasonSynced
	})
	t.Logf("%d services mirrored (Services, EndpointSlices, status) in %s, controller started cold", n, time.Since(start).Round(time.Millisecond))

	// Single changes' propagation, one at a time: from the write to the
	// remote API server (its round trip included) to the mirror's update
	// reaching a watch on the local API server.
	watcher, err := client.NewWithWatch(west.Config, client.Options{Scheme: west.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	var took []time.Duration
	for i := range 11 {
		cur, _ := get(east, "bulk", fmt.Sprintf("svc-%04d", 7+i), &corev1.Service{})
		mirrorName := cur.Name + "-east"
		m, _ := get(west, "bulk", mirrorName, &corev1.Service{})
		wctx, cancel := context.WithTimeout(bg, 30*time.Second)
		watch, err := watcher.Watch(wctx, &corev1.ServiceList{}, client.InNamespace("bulk"),
			client.MatchingFields{"metadata.name": mirrorName}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: m.ResourceVersion}})
		if err != nil {
			t.Fatal(err)
		}
		cur.Labels["tier"] = "gold"
		changed := time.Now()
		if err := east.Client.Update(bg, cur); err != nil {
			t.Fatal(err)
		}
		seen := false
		for ev := range watch.ResultChan() {
			if s, ok := ev.Object.(*corev1.Service); ok && s.Labels["tier"] == "gold" {
				seen = true
				break
			}
		}
		watch.Stop()
		cancel()
		if !seen {
			t.Fatal("the label change was not mirrored within 30s")
		}
		took = append(took, time.Since(changed).Round(100*time.Microsecond))
		time.Sleep(300 * time.Millisecond) // isolated changes
	}
	t.Logf("single label changes propagated in %v", took)
	slices.Sort(took)
	t.Logf("single-change propagation at %d services: median %s, max %s", n, took[len(took)/2], took[len(took)-1])

	before := snapshot(t, west)
	for _, fault := range []struct {
		name         string
		start, clear func()
	}{
		{"black-holed (hung connections)", func() { proxy.SetStalled(true) }, func() { proxy.SetStalled(false) }},
		{"cut off (resets, then refused)", func() { proxy.SetRefuse(true); proxy.ResetAll() }, func() { proxy.SetRefuse(false) }},
	} {
		fault.start()
		eventually(t, "the Link reports the outage ("+fault.name+")", func() bool {
			c := linkReady(west, "east")
			return c != nil && c.Reason == mirror.ReasonRemoteUnreachable
		})
		// Changes made meanwhile: an update, an unexport, a new service.
		s, _ := get(east, "bulk", "svc-0100", &corev1.Service{})
		s.Spec.Ports[0].Port++
		if err := east.Client.Update(bg, s); err != nil {
			t.Fatal(err)
		}
		time.Sleep(6 * time.Second) // several resyncs of the controller (2s)
		if after := snapshot(t, west); after != before {
			t.Fatalf("mirrors changed while the remote was %s", fault.name)
		}
		fault.clear()
		want := s.Spec.Ports[0].Port
		eventually(t, "the change made during the outage converges", func() bool {
			m, ok := get(west, "bulk", "svc-0100-east", &corev1.Service{})
			return ok && m.Spec.Ports[0].Port == want
		})
		eventually(t, "the Link is ready again", func() bool {
			c := linkReady(west, "east")
			return c != nil && c.Reason == mirror.ReasonSynced
		})
		before = snapshot(t, west)
	}
	if got := countMirrors(t, west); got != n {
		t.Fatalf("%d mirrors after the outages, want %d", got, n)
	}
}

func createServices(t *testing.T, c *testenv.Cluster, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				s := service("bulk", fmt.Sprintf("svc-%04d", i), map[string]string{v1alpha1.ExportedLabel: "true", "app": "bulk"}, 8080)
				if err := c.Client.Create(bg, s); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}

func countMirrors(t *testing.T, c *testenv.Cluster) int {
	t.Helper()
	var svcs corev1.ServiceList
	if err := c.Client.List(bg, &svcs, client.InNamespace("bulk"), client.MatchingLabels{v1alpha1.MirroredFromLabel: "east"}); err != nil {
		t.Fatal(err)
	}
	return len(svcs.Items)
}

func countSlices(t *testing.T, c *testenv.Cluster) int {
	t.Helper()
	var list discoveryv1.EndpointSliceList
	if err := c.Client.List(bg, &list, client.InNamespace("bulk"), client.MatchingLabels{v1alpha1.MirroredFromLabel: "east"}); err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}
