package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/linkmatrix"
)

// MirrorEndpoint returns where a connection to mirror svc in namespace ns of
// cluster goes: the first ready address and port of its EndpointSlice,
// which is what kube-proxy would pick.
func MirrorEndpoint(ctx context.Context, c client.Client, ns, svc string) (string, error) {
	var slices discoveryv1.EndpointSliceList
	if err := c.List(ctx, &slices, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: svc}); err != nil {
		return "", err
	}
	for _, sl := range slices.Items {
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if len(ep.Addresses) > 0 && len(sl.Ports) > 0 && sl.Ports[0].Port != nil {
				return net.JoinHostPort(ep.Addresses[0], fmt.Sprint(*sl.Ports[0].Port)), nil
			}
		}
	}
	return "", fmt.Errorf("service %s/%s has no ready endpoint yet", ns, svc)
}

// clientFor is a client of a sandbox cluster, which is reached directly
// whatever proxy the user set.
func clientFor(kubeconfig, context string) (client.Client, error) {
	f := kube.Flags{Kubeconfig: kubeconfig, Context: context}
	cfg, err := f.RESTConfig()
	if err != nil {
		return nil, err
	}
	cfg.Proxy = direct
	return client.New(cfg, client.Options{Scheme: kube.Scheme})
}

// WaitForMirror waits until the mirror exists with a ready endpoint.
func WaitForMirror(ctx context.Context, st *State, cluster, ns, mirror string, timeout time.Duration) (string, error) {
	c, err := clientFor(st.Kubeconfig, cluster)
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(timeout)
	for {
		ep, err := MirrorEndpoint(ctx, c, ns, mirror)
		if err == nil {
			return ep, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("mirror %s/%s in %s: %w", ns, mirror, cluster, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Call makes a GET as a pod in cluster would: to the endpoint kube-proxy
// would pick for Service ns/svc. It returns the response's status and
// body.
func Call(ctx context.Context, st *State, cluster, ns, svc, path string, wait time.Duration) (status string, body []byte, took time.Duration, err error) {
	ep, err := WaitForMirror(ctx, st, cluster, ns, svc, wait)
	if err != nil {
		return "", nil, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ep+path, nil)
	if err != nil {
		return "", nil, 0, err
	}
	start := time.Now()
	resp, err := directClient.Do(req)
	if err != nil {
		return "", nil, 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	took = time.Since(start)
	if err == nil && resp.StatusCode >= 400 {
		err = errors.New(resp.Status)
	}
	return resp.Status, body, took, err
}

// tourCalls are the calls the summary makes: a cross-cluster call, an
// egress call and a call to the platform cluster's shared service.
func tourCalls(st *State) [][3]string {
	if len(st.Clusters) < 2 {
		return nil
	}
	first, second, last := st.Clusters[0].Name, st.Clusters[1].Name, st.Clusters[len(st.Clusters)-1].Name
	return [][3]string{
		{second, demoNamespace, "hello-" + first},
		{second, v1alpha1.SystemNamespace, "credit-score-" + first},
		{first, "logging", platformLogsName + "-" + last},
	}
}

// WriteSummary prints what runs where, the mirrors, the latency matrix,
// the tour's calls as they answer now, and commands to try.
func WriteSummary(ctx context.Context, w io.Writer, dir string, st *State) error {
	fmt.Fprintf(w, "\nbackbone sandbox in %s\nnetwork: %s\n\n", dir, st.Network)
	fmt.Fprintln(w, "CLUSTER     CLOUD               API SERVER                   GATEWAY (inbound)")
	for _, c := range st.Clusters {
		fmt.Fprintf(w, "%-11s %-19s %-28s %s\n", c.Name, c.Cloud, c.APIServer, c.GatewayInbound)
	}
	fmt.Fprintln(w, "\nLINK                  PROXY                 ROUND TRIP")
	for _, l := range st.Links {
		fmt.Fprintf(w, "%-21s %-21s %d ms\n", l.From+" -> "+l.To, l.Proxy, l.RoundTripM)
	}
	fmt.Fprintln(w, "\nDEMO              CLUSTER     ADDRESS                     WHAT")
	for _, d := range st.Demos {
		fmt.Fprintf(w, "%-17s %-11s %-27s %s\n", d.Name, d.Cluster, d.Address, d.What)
	}

	links := map[string][]v1alpha1.Link{}
	errs := map[string]error{}
	fmt.Fprintln(w, "\nMIRRORS")
	for _, c := range st.Clusters {
		cl, err := clientFor(st.Kubeconfig, c.Name)
		if err != nil {
			return err
		}
		var svcs corev1.ServiceList
		if err := cl.List(ctx, &svcs, client.HasLabels{v1alpha1.MirroredFromLabel}); err != nil {
			errs[c.Name] = err
			continue
		}
		var names []string
		for _, s := range svcs.Items {
			names = append(names, s.Namespace+"/"+s.Name)
		}
		sort.Strings(names)
		fmt.Fprintf(w, "  %-10s %s\n", c.Name, strings.Join(names, " "))
		var list v1alpha1.LinkList
		if err := cl.List(ctx, &list, client.InNamespace(v1alpha1.SystemNamespace)); err != nil {
			errs[c.Name] = err
			continue
		}
		links[c.Name] = list.Items
	}
	fmt.Fprintln(w, "\nLINK LATENCY (p50 of the probes; rows: from, columns: to)")
	if err := linkmatrix.WriteTable(w, linkmatrix.Build(links, errs)); err != nil {
		return err
	}

	if calls := tourCalls(st); len(calls) > 0 {
		fmt.Fprintln(w, "\nCALLS (made now, as a pod in the first column would: through the mirror's endpoint)")
		for _, c := range calls {
			status, body, took, err := Call(ctx, st, c[0], c[1], c[2], "/", 5*time.Second)
			line := fmt.Sprintf("%s in %s: %s", status, took.Round(time.Millisecond), strings.TrimSpace(firstLine(body)))
			if err != nil {
				line = "FAILED: " + err.Error()
			}
			fmt.Fprintf(w, "  %-9s -> %-40s %s\n", c[0], c[1]+"/"+c[2], line)
		}
	}

	if len(st.Clusters) >= 2 {
		first, second := st.Clusters[0].Name, st.Clusters[1].Name
		fmt.Fprintf(w, `
TRY
  export KUBECONFIG=%[1]s
  kubectl --context %[3]s get svc -A -l %[4]s          # mirrors of the other clusters' services
  %[6]s sandbox curl %[3]s demo/hello-%[2]s               # %[3]s -> %[2]s through the gateways (mTLS tunnel)
  %[6]s sandbox curl %[3]s %[5]s/credit-score-%[2]s  # egress: %[3]s -> %[2]s's gateway -> external HTTPS
  %[6]s links --all-contexts                                # the latency matrix
  %[6]s sandbox down
`, st.Kubeconfig, first, second, v1alpha1.MirroredFromLabel, v1alpha1.SystemNamespace, invokedAs())
	}
	return nil
}

// invokedAs is the backbone command as it was run (bin/backbone from a
// checkout, where backbone is not on the PATH), for commands to copy.
func invokedAs() string {
	if len(os.Args) == 0 || os.Args[0] == "" {
		return "backbone"
	}
	return os.Args[0]
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(string(b), "\n")
	return line
}
