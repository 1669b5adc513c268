// Package dashboard serves a live page of the links between clusters: the
// latency matrix as a heatmap, each link's latency and health over time,
// mirrored services per link, and egress targets with their status. It
// reads Link and EgressTarget statuses from every cluster it is given and
// serves everything from the binary (no CDN).
package dashboard

import (
	"context"
	_ "embed"
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/linkmatrix"
)

//go:embed index.html
var indexHTML []byte

// HistoryLength is how many samples of each link the page can plot.
const HistoryLength = 200

// Sample is one reading of a link: its probe status as the source's
// controller wrote it, stamped with the probe's time. A poll that finds the
// status unchanged adds nothing, so the history is the link's own and not
// the page's polling.
type Sample struct {
	Time      time.Time `json:"t"`
	Up        bool      `json:"up"`
	P50Millis *float64  `json:"p50Ms,omitempty"`
}

// LinkInfo is what the page shows of one link besides the matrix.
type LinkInfo struct {
	Source string `json:"source"`
	Target string `json:"target"`
	// State is the matrix's: up, dead, stale or unknown.
	State    string   `json:"state"`
	Mirrors  int32    `json:"mirrors"`
	Ready    string   `json:"ready"`
	Reason   string   `json:"reason,omitempty"`
	History  []Sample `json:"history"`
	Problems []string `json:"problems,omitempty"`
}

// Egress is one egress target as its environment's cluster reports it.
type Egress struct {
	Cluster     string `json:"cluster"`
	Name        string `json:"name"`
	DNSName     string `json:"dnsName"`
	Squad       string `json:"squad"`
	Ready       string `json:"ready"`
	Reason      string `json:"reason,omitempty"`
	Alive       *bool  `json:"alive,omitempty"`
	LastProbe   string `json:"lastProbe,omitempty"`
	Description string `json:"message,omitempty"`
}

// State is what /api/state returns.
type State struct {
	Updated time.Time         `json:"updated"`
	Matrix  linkmatrix.Matrix `json:"matrix"`
	Links   []LinkInfo        `json:"links"`
	Egress  []Egress          `json:"egress"`
}

// Server polls the clusters and serves the page.
type Server struct {
	// Clusters maps a cluster (context) name to a client for it.
	Clusters map[string]client.Client
	// Period between polls (default 3s).
	Period time.Duration
	Log    *slog.Logger

	mu      sync.Mutex
	state   State
	history map[string][]Sample
}

// Run polls until ctx ends.
func (s *Server) Run(ctx context.Context) {
	if s.Period == 0 {
		s.Period = 3 * time.Second
	}
	if s.Log == nil {
		s.Log = slog.Default()
	}
	t := time.NewTicker(s.Period)
	defer t.Stop()
	for {
		s.Poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Poll reads every cluster once.
func (s *Server) Poll(ctx context.Context) {
	type read struct {
		links  []v1alpha1.Link
		egress []v1alpha1.EgressTarget
		err    error
	}
	results := map[string]read{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, c := range s.Clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			var r read
			var links v1alpha1.LinkList
			var ets v1alpha1.EgressTargetList
			if r.err = c.List(rctx, &links, client.InNamespace(v1alpha1.SystemNamespace)); r.err == nil {
				r.links = links.Items
				if err := c.List(rctx, &ets); err == nil {
					r.egress = ets.Items
				}
			}
			mu.Lock()
			results[name] = r
			mu.Unlock()
		}()
	}
	wg.Wait()

	now := time.Now().UTC()
	linksBySource := map[string][]v1alpha1.Link{}
	errs := map[string]error{}
	var infos []LinkInfo
	var egress []Egress
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.history == nil {
		s.history = map[string][]Sample{}
	}
	for name, r := range results {
		if r.err != nil {
			errs[name] = r.err
			continue
		}
		linksBySource[name] = r.links
		// A deleted Link's history goes with it.
		current := map[string]bool{}
		for _, l := range r.links {
			current[name+"->"+l.Spec.TargetClusterName] = true
		}
		for key := range s.history {
			if strings.HasPrefix(key, name+"->") && !current[key] {
				delete(s.history, key)
			}
		}
		for _, l := range r.links {
			key := name + "->" + l.Spec.TargetClusterName
			s.history[key] = addSample(s.history[key], l.Status.Probe)
			h := s.history[key]
			if h == nil {
				h = []Sample{} // the page reads a list
			}
			info := LinkInfo{Source: name, Target: l.Spec.TargetClusterName, Mirrors: l.Status.MirroredServices,
				History: h, Problems: l.Status.Problems}
			if c := meta.FindStatusCondition(l.Status.Conditions, v1alpha1.ConditionReady); c != nil {
				info.Ready, info.Reason = string(c.Status), c.Reason
			}
			infos = append(infos, info)
		}
		for _, et := range r.egress {
			if et.Spec.Environment != name {
				continue // reported by the cluster that serves it
			}
			e := Egress{Cluster: name, Name: et.Spec.HostName, DNSName: et.Spec.DNSName, Squad: et.Spec.Squad, Alive: et.Status.Alive}
			if c := meta.FindStatusCondition(et.Status.Conditions, v1alpha1.ConditionReady); c != nil {
				e.Ready, e.Reason, e.Description = string(c.Status), c.Reason, c.Message
			}
			if et.Status.LastProbeTime != nil {
				e.LastProbe = et.Status.LastProbeTime.UTC().Format(time.RFC3339)
			}
			egress = append(egress, e)
		}
	}
	sort.Slice(infos, func(i, j int) bool {
		return infos[i].Source+"->"+infos[i].Target < infos[j].Source+"->"+infos[j].Target
	})
	sort.Slice(egress, func(i, j int) bool {
		return egress[i].Cluster+"/"+egress[i].Name < egress[j].Cluster+"/"+egress[j].Name
	})
	m := linkmatrix.BuildAt(now, linksBySource, errs)
	for i := range infos {
		for _, c := range m.Links {
			if c.Source == infos[i].Source && c.Target == infos[i].Target {
				infos[i].State = c.State
			}
		}
	}
	// Clusters that could not be read still get their row.
	for name := range errs {
		found := false
		for _, c := range m.Clusters {
			found = found || c == name
		}
		if !found {
			m.Clusters = append(m.Clusters, name)
		}
	}
	sort.Strings(m.Clusters)
	s.state = State{Updated: now, Matrix: m, Links: infos, Egress: egress}
}

// addSample appends the link's probe status to its history when it is a
// newer reading than the last one kept. A status written within the same
// second as the last (the API keeps seconds) replaces it.
func addSample(h []Sample, p *v1alpha1.LinkProbeStatus) []Sample {
	if p == nil || p.LastProbeTime == nil {
		return h
	}
	sample := Sample{Time: p.LastProbeTime.UTC(), Up: p.Alive}
	if p.LatencyP50 != nil {
		v := float64(p.LatencyP50.Microseconds()) / 1000
		sample.P50Millis = &v
	}
	if n := len(h); n > 0 {
		switch last := h[n-1]; {
		case sample.Time.Before(last.Time):
			return h
		case sample.Time.Equal(last.Time):
			h[n-1] = sample
			return h
		}
	}
	h = append(h, sample)
	if len(h) > HistoryLength {
		h = h[len(h)-HistoryLength:]
	}
	return h
}

// Handler serves the page and its data.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(indexHTML)
	})
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		b, err := json.Marshal(s.state)
		s.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	return mux
}
