package monitoring

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"text/template"
	"time"

	"sigs.k8s.io/yaml"
)

// The PromQL parser (github.com/prometheus/prometheus/promql/parser) is not a
// dependency of this module and is too big to become one, so expressions are
// checked against the Go source instead: the metric names they use must be
// registered there, the label names they group or match on must be in the
// files registering metrics, and literal label values in the package
// exporting the metric; brackets must balance.

// prometheusRule is the part of monitoring.coreos.com/v1 PrometheusRule the
// file uses; unknown fields fail the strict parse.
type prometheusRule struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Spec struct {
		Groups []ruleGroup `json:"groups"`
	} `json:"spec"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

var (
	registeredName = regexp.MustCompile(`Name:\s*"(backbone_[a-z0-9_]+)"`)
	histogramName  = regexp.MustCompile(`HistogramOpts\{[^}]*?Name:\s*"(backbone_[a-z0-9_]+)"`)
	usedName       = regexp.MustCompile(`backbone_[a-z0-9_]+`)
	stringLiteral  = regexp.MustCompile(`"([a-z_][a-z0-9_]*)"`)
	anyLiteral     = regexp.MustCompile(`"((?:[^"\\\n]|\\.)*)"`)
	labelRef       = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)
	runbookCommand = regexp.MustCompile("backbone links|backbone check|`backbone (--context [^`]* )?check")
)

// Labels Prometheus adds when scraping.
var scrapeLabels = []string{"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

// exported is what backbone's Go source says it exports.
type exported struct {
	// metrics are the series names: every name registered in the non-test
	// Go source under internal/, plus the _bucket, _count and _sum series
	// of its histograms.
	metrics map[string]bool
	// labels are the label names the series may carry: the string literals
	// of the files registering metrics (label names are among them), and
	// the labels added by scraping.
	labels map[string]bool
	// values are, per metric, the string literals of the Go package
	// registering it: a label value matched literally must be one of them.
	values map[string]map[string]bool
}

// readExported reads the metric and label names from the Go source.
func readExported(t *testing.T) exported {
	t.Helper()
	known, labels := map[string]bool{}, map[string]bool{}
	literals := map[string]map[string]bool{} // by package directory
	registeredIn := map[string]string{}      // metric → package directory
	labels["le"] = true                      // of histogram buckets
	for _, l := range scrapeLabels {
		labels[l] = true
	}
	root := filepath.Join("..", "..", "internal")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		if literals[dir] == nil {
			literals[dir] = map[string]bool{}
		}
		for _, m := range anyLiteral.FindAllSubmatch(src, -1) {
			literals[dir][string(m[1])] = true
		}
		registered := registeredName.FindAllSubmatch(src, -1)
		for _, m := range registered {
			known[string(m[1])] = true
			registeredIn[string(m[1])] = dir
		}
		if len(registered) > 0 {
			for _, m := range stringLiteral.FindAllSubmatch(src, -1) {
				labels[string(m[1])] = true
			}
		}
		for _, m := range histogramName.FindAllSubmatch(src, -1) {
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				known[string(m[1])+suffix] = true
				registeredIn[string(m[1])+suffix] = dir
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the Go source under %s: %v", root, err)
	}
	// Guard against the regexps silently finding nothing.
	for _, name := range []string{"backbone_link_up", "backbone_link_probe_duration_seconds_bucket", "backbone_gateway_streams_active"} {
		if !known[name] {
			t.Fatalf("%s not found in the Go source; found %v", name, slices.Sorted(maps.Keys(known)))
		}
	}
	for _, name := range []string{"source_cluster", "target_cluster", "target", "result"} {
		if !labels[name] {
			t.Fatalf("label %s not found in the Go source", name)
		}
	}
	values := map[string]map[string]bool{}
	for name, dir := range registeredIn {
		values[name] = literals[dir]
	}
	return exported{metrics: known, labels: labels, values: values}
}

// checkExpr reports metric and label names in expr that backbone does not
// export, and unbalanced brackets.
func checkExpr(t *testing.T, where, expr string, src exported) {
	t.Helper()
	if strings.TrimSpace(expr) == "" {
		t.Errorf("%s: empty expression", where)
		return
	}
	names := usedName.FindAllString(expr, -1)
	if len(names) == 0 {
		t.Errorf("%s: %q uses no backbone metric", where, expr)
	}
	for _, name := range names {
		if !src.metrics[name] {
			t.Errorf("%s: %q uses %s, which backbone does not export", where, expr, name)
		}
	}
	for _, label := range labelsUsed(expr) {
		if !src.labels[label] {
			t.Errorf("%s: %q uses label %s, which no backbone series has", where, expr, label)
		}
	}
	for _, m := range metricSelector.FindAllStringSubmatch(expr, -1) {
		for _, mm := range literalMatcher.FindAllStringSubmatch(m[2], -1) {
			if values := src.values[m[1]]; values != nil && !values[mm[2]] {
				t.Errorf("%s: %q matches %s %s=%q, a value the code exporting it never uses", where, expr, m[1], mm[1], mm[2])
			}
		}
	}
	if err := balanced(expr); err != "" {
		t.Errorf("%s: %q: %s", where, expr, err)
	}
}

var (
	grouping   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	selector   = regexp.MustCompile(`\{([^}]*)\}`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	labelValue = regexp.MustCompile(`\blabel_values\([^,()]*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
	// A selector of a backbone metric, and its matchers of literal values.
	metricSelector = regexp.MustCompile(`(backbone_[a-z0-9_]+)\s*\{([^}]*)\}`)
	literalMatcher = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*!?=\s*"([^"$\\]*)"`)
	quoted         = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
)

// labelsUsed returns the label names expr groups by, matches on or asks
// the values of.
func labelsUsed(expr string) []string {
	expr = quoted.ReplaceAllString(expr, `""`)
	var out []string
	for _, m := range grouping.FindAllStringSubmatch(expr, -1) {
		for l := range strings.SplitSeq(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
	}
	for _, m := range selector.FindAllStringSubmatch(expr, -1) {
		for _, mm := range matcher.FindAllStringSubmatch(m[1], -1) {
			out = append(out, mm[1])
		}
	}
	for _, m := range labelValue.FindAllStringSubmatch(expr, -1) {
		out = append(out, m[1])
	}
	return out
}

// balanced checks (), [] and {} nest, outside of quoted strings.
func balanced(expr string) string {
	var stack []rune
	closing := map[rune]rune{')': '(', ']': '[', '}': '{'}
	var quote rune
	escaped := false
	for _, r := range expr {
		switch {
		case quote != 0:
			switch {
			case escaped:
				escaped = false
			case r == '\\':
				escaped = true
			case r == quote:
				quote = 0
			}
		case r == '"' || r == '\'' || r == '`':
			quote = r
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
		case closing[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != closing[r] {
				return "unbalanced " + string(r)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if quote != 0 {
		return "unterminated string"
	}
	if len(stack) > 0 {
		return "unclosed " + string(stack[len(stack)-1])
	}
	return ""
}

// alertTemplate parses and runs an annotation the way Prometheus does: a
// text/template with $labels and $value defined, and stand-ins for the
// functions used here. Every label referenced must be one backbone's series
// may carry.
func alertTemplate(text string, src exported) (string, error) {
	funcs := template.FuncMap{
		"humanize":           func(v float64) string { return "1" },
		"humanizeDuration":   func(v float64) string { return "1s" },
		"humanizePercentage": func(v float64) string { return "10%" },
		"reReplaceAll": func(pattern, repl, text string) string {
			return regexp.MustCompile(pattern).ReplaceAllString(text, repl)
		},
		"toUpper": strings.ToUpper,
		"toLower": strings.ToLower,
	}
	tmpl, err := template.New("annotation").Funcs(funcs).Option("missingkey=error").
		Parse("{{$labels := .Labels}}{{$value := .Value}}" + text)
	if err != nil {
		return "", err
	}
	labels := map[string]string{}
	for _, m := range labelRef.FindAllStringSubmatch(text, -1) {
		if !src.labels[m[1]] {
			return "", fmt.Errorf("$labels.%s: no backbone series has label %s", m[1], m[1])
		}
		labels[m[1]] = "shop/" + m[1] // the shape of a target: namespace/name
	}
	var out strings.Builder
	err = tmpl.Execute(&out, struct {
		Labels map[string]string
		Value  float64
	}{labels, 0.5})
	return out.String(), err
}

func TestRules(t *testing.T) {
	var pr prometheusRule
	if err := yaml.UnmarshalStrict(Rules, &pr); err != nil {
		t.Fatalf("prometheus-rules.yaml: %v", err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		t.Errorf("apiVersion/kind = %s/%s, want monitoring.coreos.com/v1/PrometheusRule", pr.APIVersion, pr.Kind)
	}
	if pr.Metadata.Name != "backbone" || pr.Metadata.Namespace != "backbone-system" {
		t.Errorf("metadata = %s/%s, want backbone-system/backbone", pr.Metadata.Namespace, pr.Metadata.Name)
	}
	src := readExported(t)

	alerts := map[string]rule{}
	groups := map[string]bool{}
	for _, g := range pr.Spec.Groups {
		if g.Name == "" || groups[g.Name] {
			t.Errorf("group name %q empty or repeated", g.Name)
		}
		groups[g.Name] = true
		for i, r := range g.Rules {
			where := g.Name + "/" + r.Alert + r.Record
			if (r.Alert == "") == (r.Record == "") {
				t.Errorf("%s rule %d: needs exactly one of alert and record", g.Name, i)
			}
			checkExpr(t, where, r.Expr, src)
			if r.Record != "" {
				continue
			}
			if _, dup := alerts[r.Alert]; dup {
				t.Errorf("%s: alert defined twice", where)
			}
			alerts[r.Alert] = r
			if r.For == "" {
				t.Errorf("%s: no for", where)
			} else if d, err := time.ParseDuration(r.For); err != nil || d <= 0 {
				t.Errorf("%s: for %q is not a positive duration", where, r.For)
			}
			switch sev := r.Labels["severity"]; sev {
			case "critical", "warning", "info":
			default:
				t.Errorf("%s: labels.severity = %q, want critical, warning or info", where, sev)
			}
			for _, key := range []string{"summary", "description", "runbook"} {
				if r.Annotations[key] == "" {
					t.Errorf("%s: no annotations.%s", where, key)
				}
			}
			for _, key := range []string{"summary", "description"} {
				if !strings.Contains(r.Annotations[key], "$labels.") {
					t.Errorf("%s: annotations.%s does not name the series with $labels", where, key)
				}
			}
			if rb := r.Annotations["runbook"]; !runbookCommand.MatchString(rb) {
				t.Errorf("%s: runbook %q mentions neither `backbone links` nor `backbone check`", where, rb)
			}
			for key, text := range r.Annotations {
				out, err := alertTemplate(text, src)
				if err != nil {
					t.Errorf("%s: annotations.%s: %v", where, key, err)
				} else if strings.Contains(out, "<no value>") {
					t.Errorf("%s: annotations.%s renders %q", where, key, out)
				}
			}
		}
	}
	if !groups["backbone.links"] {
		t.Errorf("no group backbone.links; groups: %v", groups)
	}

	want := map[string]struct {
		severity, forAtLeast string
		metric               string
	}{
		"BackboneLinkDown":         {"critical", "1m", "backbone_link_up"},
		"BackboneLinkHighLatency":  {"warning", "10m", "backbone_link_probe_duration_seconds_bucket"},
		"BackboneLinkProbeErrors":  {"", "1m", "backbone_link_probes_total"},
		"BackboneEgressTargetDown": {"", "2m", "backbone_egress_up"},
		"BackboneTunnelsRefused":   {"warning", "1m", "backbone_gateway_denied_total"},
	}
	for name, w := range want {
		r, ok := alerts[name]
		if !ok {
			t.Errorf("alert %s missing", name)
			continue
		}
		if w.severity != "" && r.Labels["severity"] != w.severity {
			t.Errorf("%s: severity %q, want %q", name, r.Labels["severity"], w.severity)
		}
		if d, _ := time.ParseDuration(r.For); d < mustDuration(w.forAtLeast) {
			t.Errorf("%s: for %s, want at least %s", name, r.For, w.forAtLeast)
		}
		if !slices.Contains(usedName.FindAllString(r.Expr, -1), w.metric) {
			t.Errorf("%s: expression %q does not use %s", name, r.Expr, w.metric)
		}
	}
}

func mustDuration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return d
}

func TestDashboard(t *testing.T) {
	var dash map[string]any
	if err := json.Unmarshal(Dashboard, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if v, _ := dash["schemaVersion"].(float64); v != 39 {
		t.Errorf("schemaVersion = %v, want 39", dash["schemaVersion"])
	}
	for _, key := range []string{"title", "uid"} {
		if s, _ := dash[key].(string); s == "" {
			t.Errorf("dashboard has no %s", key)
		}
	}

	// The data source is a variable of type prometheus.
	var vars []any
	if tm, ok := dash["templating"].(map[string]any); ok {
		vars, _ = tm["list"].([]any)
	}
	hasDatasource := false
	for _, v := range vars {
		v, _ := v.(map[string]any)
		if v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus" {
			hasDatasource = true
		}
	}
	if !hasDatasource {
		t.Error("no templating variable datasource of type datasource, query prometheus")
	}

	src := readExported(t)
	ids := map[float64]bool{}
	var exprs int
	var walkPanels func(panels []any)
	walkPanels = func(panels []any) {
		for i, p := range panels {
			p, ok := p.(map[string]any)
			if !ok {
				t.Errorf("panel %d is not an object", i)
				continue
			}
			title, _ := p["title"].(string)
			if strings.TrimSpace(title) == "" {
				t.Errorf("panel %d (id %v, type %v) has no title", i, p["id"], p["type"])
			}
			id, _ := p["id"].(float64)
			if id == 0 || ids[id] {
				t.Errorf("panel %q: id %v missing or repeated", title, p["id"])
			}
			ids[id] = true
			if _, ok := p["gridPos"].(map[string]any); !ok {
				t.Errorf("panel %q has no gridPos", title)
			}
			if p["type"] == "row" {
				sub, _ := p["panels"].([]any)
				walkPanels(sub)
				continue
			}
			targets, _ := p["targets"].([]any)
			if len(targets) == 0 {
				t.Errorf("panel %q has no targets", title)
			}
			for _, ds := range append([]any{p["datasource"]}, targetsDatasources(targets)...) {
				ds, _ := ds.(map[string]any)
				if ds["type"] != "prometheus" || ds["uid"] != "${datasource}" {
					t.Errorf("panel %q: datasource %v, want prometheus ${datasource}", title, ds)
				}
			}
			for _, tg := range targets {
				tg, _ := tg.(map[string]any)
				expr, _ := tg["expr"].(string)
				checkExpr(t, "panel "+title, expr, src)
				exprs++
			}
		}
	}
	panels, _ := dash["panels"].([]any)
	if len(panels) == 0 {
		t.Fatal("dashboard has no panels")
	}
	walkPanels(panels)
	if exprs == 0 {
		t.Error("dashboard has no expressions")
	}

	// Variable queries use real metrics too.
	for _, v := range vars {
		v, _ := v.(map[string]any)
		if v["type"] != "query" {
			continue
		}
		if def, _ := v["definition"].(string); def != "" {
			checkExpr(t, "variable "+v["name"].(string), def, src)
		}
		if q, _ := v["query"].(map[string]any); q != nil {
			if s, _ := q["query"].(string); s != "" {
				checkExpr(t, "variable "+v["name"].(string), s, src)
			}
		}
	}
}

func targetsDatasources(targets []any) []any {
	var out []any
	for _, tg := range targets {
		if tg, ok := tg.(map[string]any); ok {
			out = append(out, tg["datasource"])
		}
	}
	return out
}
