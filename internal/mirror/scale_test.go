package mirror_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestLargeSyncSurvivesRemoteOutage: 1,000 exported services are mirrored,
// the remote kube-apiserver stopped for 8 s in the middle of that first
// sync (nothing written is deleted or rewritten; the sync completes); then
// the remote API server is made unreachable four ways: black-holed by
// the fault proxy (connections hang), cut off by it (connections reset and
// refused), its kube-apiserver process stopped (SIGSTOP for longer than the
// controller's request timeout, then SIGCONT), and killed outright
// (SIGKILL, then restarted on the same address, etcd and certificates).
// Each time the mirrors stay exactly as they were — same UIDs and
// resourceVersions — the Link reports the outage, and an update, a creation
// and a deletion in the remote cluster (made during the outage, or right
// after it when the API server itself was down) converge after recovery,
// rewriting no other mirror. The time to mirror, a single change's
// propagation and each recovery are logged.
//
// BACKBONE_MIRROR_SERVICES sets the number of services (default 1,000),
// BACKBONE_OUTAGE_HOLD how long the API server stays stopped (default 20s;
// a soak run sets minutes).
func TestLargeSyncSurvivesRemoteOutage(t *testing.T) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("BACKBONE_MIRROR_SERVICES")); err == nil && v > 0 {
		n = v
	}
	east, west := linkedClusters(t, "bulk")
	createServices(t, east, n)

	proxy := linkThroughProxy(t, east, west)
	start := time.Now()
	runController(t, west)

	// An outage in the middle of the first sync: east's kube-apiserver
	// stopped once a tenth of the mirrors exist. What is already written is
	// neither deleted nor rewritten (the controller may go on writing what
	// it had planned from its cache), and the sync completes after SIGCONT.
	eventually(t, "the first sync under way", func() bool { return countMirrors(t, west) >= n/10 })
	if err := east.SignalAPIServer(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = east.SignalAPIServer(syscall.SIGCONT) })
	stopped := time.Now()
	midSync := snapshot(t, west)
	eventually(t, "the Link reports the outage during the first sync", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonRemoteUnreachable
	})
	time.Sleep(time.Until(stopped.Add(8 * time.Second)))
	written := 0
	for _, obj := range changedObjects(midSync, snapshot(t, west)) {
		if strings.Contains(midSync, obj+" ") {
			t.Errorf("%s changed while east was stopped in the middle of the first sync", obj)
			continue
		}
		written++
	}
	if err := east.SignalAPIServer(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("east's API server stopped %s into the first sync for 8 s, with %d mirror objects written: none of them changed; %d more were written from what had been planned",
		stopped.Sub(start).Round(100*time.Millisecond), strings.Count(midSync, "; "), written)

	eventually(t, fmt.Sprintf("%d mirrors with their EndpointSlices, Link synced", n), func() bool {
		c := linkReady(west, "east")
		return countMirrors(t, west) == n && countSlices(t, west) == n && c != nil && c.Reason == mirror.ReasonSynced
	})
	t.Logf("%d services mirrored (Services, EndpointSlices, status) in %s, controller started cold, an 8 s outage included", n, time.Since(start).Round(time.Millisecond))

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

	// The outages: the link to east's API server black-holed and cut off
	// by the fault proxy, then east's kube-apiserver process itself
	// stopped and killed. While east's API server is up, the changes are
	// made during the outage; while it is down they can only be made right
	// after it is back.
	hold := 20 * time.Second // longer than the remote client's 15 s request timeout
	if d, err := time.ParseDuration(os.Getenv("BACKBONE_OUTAGE_HOLD")); err == nil && d > 0 {
		hold = d
	}
	signal := func(sig syscall.Signal) func() {
		return func() {
			if err := east.SignalAPIServer(sig); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A failure while east is stopped must not leave it stopped for the
	// cleanup, which would wait its whole stop timeout.
	t.Cleanup(func() { _ = east.SignalAPIServer(syscall.SIGCONT) })
	before := snapshot(t, west)
	for round, fault := range []struct {
		name         string
		start, clear func()
		hold         time.Duration // how long the outage lasts at least
		remoteDown   bool          // east's API server itself is down
	}{
		{"black-holed (hung connections)", func() { proxy.SetStalled(true) }, func() { proxy.SetStalled(false) }, 6 * time.Second, false},
		{"cut off (resets, then refused)", func() { proxy.SetRefuse(true); proxy.ResetAll() }, func() { proxy.SetRefuse(false) }, 6 * time.Second, false},
		{"stopped (SIGSTOP, then SIGCONT)", signal(syscall.SIGSTOP), signal(syscall.SIGCONT), hold, true},
		{"killed (SIGKILL, then restarted on the same address)", signal(syscall.SIGKILL), func() {
			if err := east.RestartAPIServer(); err != nil {
				t.Fatal(err)
			}
		}, 6 * time.Second, true},
	} {
		began := time.Now()
		fault.start()
		eventually(t, "the Link reports the outage ("+fault.name+")", func() bool {
			c := linkReady(west, "east")
			return c != nil && c.Reason == mirror.ReasonRemoteUnreachable
		})
		detected := time.Since(began)
		var change remoteChange
		if !fault.remoteDown {
			change = changeRemote(t, east, round)
		}
		time.Sleep(time.Until(began.Add(fault.hold))) // several resyncs of the controller (2s)
		if changed := changedObjects(before, snapshot(t, west)); len(changed) > 0 {
			t.Fatalf("mirrors changed while the remote was %s: %v", fault.name, changed)
		}
		if c := linkReady(west, "east"); c == nil || c.Reason != mirror.ReasonRemoteUnreachable {
			t.Fatalf("at the end of the outage (%s) the Link says %+v", fault.name, c)
		}
		fault.clear()
		back := time.Now()
		if fault.remoteDown {
			change = changeRemote(t, east, round)
		}
		eventually(t, "the changes converge after the remote was "+fault.name, func() bool { return change.converged(west) })
		// Timed from when they were made, or from the recovery when they
		// were made during the outage.
		converged := time.Since(change.made)
		if !fault.remoteDown {
			converged = time.Since(back)
		}
		eventually(t, "the Link is ready again", func() bool {
			c := linkReady(west, "east")
			return c != nil && c.Reason == mirror.ReasonSynced
		})
		ready := time.Since(back)
		after := snapshot(t, west)
		changed := changedObjects(before, after)
		for _, obj := range changed {
			if !change.concerns(obj) {
				t.Errorf("after the remote was %s, %s changed, which no change concerns", fault.name, obj)
			}
		}
		t.Logf("remote %s for %s: outage reported after %s, no mirror object changed meanwhile; an update, a creation and a deletion converged in %s, the Link was ready %s after the recovery; %d mirror objects written in all",
			fault.name, back.Sub(began).Round(100*time.Millisecond), detected.Round(100*time.Millisecond),
			converged.Round(10*time.Millisecond), ready.Round(10*time.Millisecond), len(changed))
		before = after
	}
	if got := countMirrors(t, west); got != n {
		t.Fatalf("%d mirrors after the outages, want %d", got, n)
	}
}

// remoteChange is one round of changes in east: an update, a creation and
// a deletion of exported services.
type remoteChange struct {
	made                      time.Time
	updated, created, deleted string
	port                      int32
}

func changeRemote(t *testing.T, east *testenv.Cluster, round int) remoteChange {
	t.Helper()
	c := remoteChange{made: time.Now(), updated: "svc-0100", created: fmt.Sprintf("late-%d", round), deleted: fmt.Sprintf("svc-%04d", 200+round)}
	s, ok := get(east, "bulk", c.updated, &corev1.Service{})
	if !ok {
		t.Fatalf("reading %s in east failed", c.updated)
	}
	s.Spec.Ports[0].Port++
	c.port = s.Spec.Ports[0].Port
	if err := east.Client.Update(bg, s); err != nil {
		t.Fatal(err)
	}
	if err := east.Client.Create(bg, service("bulk", c.created, map[string]string{v1alpha1.ExportedLabel: "true", "app": "bulk"}, 8080)); err != nil {
		t.Fatal(err)
	}
	if err := east.Client.Delete(bg, service("bulk", c.deleted, nil)); err != nil {
		t.Fatal(err)
	}
	return c
}

// converged: west's mirrors show the three changes.
func (c remoteChange) converged(west *testenv.Cluster) bool {
	m, updated := get(west, "bulk", c.updated+"-east", &corev1.Service{})
	_, created := get(west, "bulk", c.created+"-east", &discoveryv1.EndpointSlice{})
	_, stale := get(west, "bulk", c.deleted+"-east", &corev1.Service{})
	_, staleSlice := get(west, "bulk", c.deleted+"-east", &discoveryv1.EndpointSlice{})
	return updated && m.Spec.Ports[0].Port == c.port && created && !stale && !staleSlice
}

// concerns reports whether a mirror object (as changedObjects names it)
// is one of the changed services'.
func (c remoteChange) concerns(obj string) bool {
	for _, name := range []string{c.updated, c.created, c.deleted} {
		if strings.HasSuffix(obj, "/"+name+"-east") {
			return true
		}
	}
	return false
}

// changedObjects names the mirror objects created, deleted or rewritten
// between two snapshots ("svc bulk/svc-0100-east").
func changedObjects(before, after string) []string {
	identities := func(snap string) map[string]string {
		m := map[string]string{}
		for _, entry := range strings.Split(strings.TrimSuffix(snap, "; "), "; ") {
			if f := strings.Fields(entry); len(f) == 4 {
				m[f[0]+" "+f[1]] = f[2] + " " + f[3] // UID and resourceVersion
			}
		}
		return m
	}
	b, a := identities(before), identities(after)
	var changed []string
	for obj, id := range b {
		if a[obj] != id {
			changed = append(changed, obj)
		}
	}
	for obj := range a {
		if _, ok := b[obj]; !ok {
			changed = append(changed, obj)
		}
	}
	slices.Sort(changed)
	return changed
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
