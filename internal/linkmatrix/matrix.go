// Package linkmatrix builds the latency matrix between clusters from the
// Link statuses each cluster's controller writes: source clusters as rows,
// targets as columns, as on the probe slide of the talk backbone grew
// from ("AWS -> GCP: 30 ms").
package linkmatrix

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/probe"
)

// Cell is one source → target link.
type Cell struct {
	Source string `json:"source"`
	Target string `json:"target"`
	// State is "up", "dead", "stale" (the source's controller has not
	// refreshed the status for probe.StaleAfter: nobody measures the link
	// and its figures are old) or "unknown" (not probed yet).
	State string `json:"state"`
	// LossPercent is the share of the latest probes (up to 100) that
	// failed; the percentiles count only those that succeeded.
	LossPercent *float64 `json:"lossPercent,omitempty"`
	// P50, P90, P99 in milliseconds; absent when nothing was measured.
	P50Millis *float64 `json:"p50Ms,omitempty"`
	P90Millis *float64 `json:"p90Ms,omitempty"`
	P99Millis *float64 `json:"p99Ms,omitempty"`
	// ConsecutiveFailures of the probe.
	ConsecutiveFailures int32      `json:"consecutiveFailures,omitempty"`
	LastProbeTime       *time.Time `json:"lastProbeTime,omitempty"`
	// Certificates is the reason of the Link's CertificatesValid condition
	// (Valid, Expiring, Expired, UnknownAuthority, ...), and
	// CertificatesExpire the earlier expiry of the two identities.
	Certificates       string     `json:"certificates,omitempty"`
	CertificatesExpire *time.Time `json:"certificatesExpire,omitempty"`
}

// Matrix is every link between the clusters read.
type Matrix struct {
	Clusters []string `json:"clusters"`
	Links    []Cell   `json:"links"`
	// Errors are clusters that could not be read, by name.
	Errors map[string]string `json:"errors,omitempty"`
}

func millis(d *time.Duration) *float64 {
	if d == nil {
		return nil
	}
	v := float64(d.Microseconds()) / 1000
	return &v
}

// probedLinks keeps one Link per target cluster: the one its controller
// probes (of two, the one that precedes; one being deleted only when it
// is the last), so a pair has one cell.
func probedLinks(links []v1alpha1.Link) []v1alpha1.Link {
	best := map[string]int{}
	for i := range links {
		l := &links[i]
		j, ok := best[l.Spec.TargetClusterName]
		if !ok {
			best[l.Spec.TargetClusterName] = i
			continue
		}
		cur := &links[j]
		curGoing, going := !cur.DeletionTimestamp.IsZero(), !l.DeletionTimestamp.IsZero()
		if curGoing && !going || curGoing == going && l.Precedes(cur) {
			best[l.Spec.TargetClusterName] = i
		}
	}
	out := make([]v1alpha1.Link, 0, len(best))
	for i := range links {
		if best[links[i].Spec.TargetClusterName] == i {
			out = append(out, links[i])
		}
	}
	return out
}

// Build assembles the matrix from each source cluster's Links.
func Build(linksBySource map[string][]v1alpha1.Link, errs map[string]error) Matrix {
	return BuildAt(time.Now(), linksBySource, errs)
}

// BuildAt is Build with the time against which a status's age is judged.
func BuildAt(now time.Time, linksBySource map[string][]v1alpha1.Link, errs map[string]error) Matrix {
	m := Matrix{Errors: map[string]string{}}
	names := map[string]bool{}
	for source, links := range linksBySource {
		names[source] = true
		for _, l := range probedLinks(links) {
			target := l.Spec.TargetClusterName
			names[target] = true
			c := Cell{Source: source, Target: target, State: "unknown"}
			if p := l.Status.Probe; p != nil {
				c.State = "dead"
				if p.Alive {
					c.State = "up"
				}
				c.ConsecutiveFailures = p.ConsecutiveFailures
				if p.LastProbeTime != nil {
					t := p.LastProbeTime.UTC()
					c.LastProbeTime = &t
				}
				if p.LastProbeTime != nil && now.Sub(p.LastProbeTime.Time) > probe.StaleAfter {
					c.State = "stale"
				}
				if p.RecentProbes > 0 {
					v := 100 * float64(p.RecentFailures) / float64(p.RecentProbes)
					c.LossPercent = &v
				}
				if p.LatencyP50 != nil {
					c.P50Millis = millis(&p.LatencyP50.Duration)
				}
				if p.LatencyP90 != nil {
					c.P90Millis = millis(&p.LatencyP90.Duration)
				}
				if p.LatencyP99 != nil {
					c.P99Millis = millis(&p.LatencyP99.Duration)
				}
			}
			if cond := meta.FindStatusCondition(l.Status.Conditions, v1alpha1.ConditionCertificatesValid); cond != nil {
				c.Certificates = cond.Reason
			}
			if cs := l.Status.Certificates; cs != nil {
				for _, info := range []*v1alpha1.CertificateInfo{cs.Local, cs.Peer} {
					if info != nil && (c.CertificatesExpire == nil || info.NotAfter.Time.Before(*c.CertificatesExpire)) {
						t := info.NotAfter.UTC()
						c.CertificatesExpire = &t
					}
				}
			}
			m.Links = append(m.Links, c)
		}
	}
	for source, err := range errs {
		names[source] = true
		m.Errors[source] = err.Error()
	}
	for n := range names {
		m.Clusters = append(m.Clusters, n)
	}
	slices.Sort(m.Clusters)
	slices.SortFunc(m.Links, func(a, b Cell) int {
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		return strings.Compare(a.Target, b.Target)
	})
	if len(m.Errors) == 0 {
		m.Errors = nil
	}
	return m
}

// cellText is what the table shows for one link.
func cellText(c *Cell) string {
	switch {
	case c == nil:
		return "·" // not linked
	case c.State == "dead":
		return "DEAD"
	case c.State == "stale":
		return "STALE"
	case c.P50Millis == nil:
		return "?"
	default:
		return fmt.Sprintf("%.0f ms", *c.P50Millis)
	}
}

// WriteTable prints the matrix: p50 latency in milliseconds, DEAD for a
// link whose gateway stopped answering, ? for one not measured yet, · where
// no link exists.
func WriteTable(w io.Writer, m Matrix) error {
	index := map[[2]string]*Cell{}
	for i := range m.Links {
		index[[2]string{m.Links[i].Source, m.Links[i].Target}] = &m.Links[i]
	}
	rows := [][]string{append([]string{"FROM \\ TO"}, m.Clusters...)}
	for _, src := range m.Clusters {
		row := []string{src}
		for _, dst := range m.Clusters {
			if src == dst {
				row = append(row, "-")
				continue
			}
			row = append(row, cellText(index[[2]string{src, dst}]))
		}
		rows = append(rows, row)
	}
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	for _, row := range rows {
		var b strings.Builder
		for i, cell := range row {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell))
			if i == 0 {
				b.WriteString(cell + pad) // source names left-aligned
			} else {
				b.WriteString("   " + pad + cell)
			}
		}
		if _, err := fmt.Fprintln(w, b.String()); err != nil {
			return err
		}
	}
	for _, src := range m.Clusters {
		if e, ok := m.Errors[src]; ok {
			if _, err := fmt.Fprintf(w, "%s: could not read links: %s\n", src, e); err != nil {
				return err
			}
		}
	}
	return nil
}
